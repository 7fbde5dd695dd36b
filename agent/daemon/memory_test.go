package daemon

import (
	"runtime/metrics"
	"testing"
)

// The runtime names the returner reads exist in this Go (an unknown name
// reads as KindBad, whose Uint64 panics).
func TestMemoryReturnerReadsTheRuntime(t *testing.T) {
	m := newMemoryReturner()
	m.sample()
	for _, s := range m.samples {
		if s.Value.Kind() != metrics.KindUint64 {
			t.Fatalf("%s: kind %v, not a uint64", s.Name, s.Value.Kind())
		}
	}
	if m.allocs == 0 {
		t.Fatal("no heap allocated, in all, reads as zero")
	}
}

func TestMemoryReturnerWaitsForQuietAfterABurst(t *testing.T) {
	const MiB = 1 << 20
	m := &memoryReturner{}
	allocs := uint64(0)
	// step allocates n bytes in a sample period and reports whether a
	// return is then due.
	step := func(n uint64) bool { allocs += n; return m.due(allocs, 40) }
	for i := 0; i < 2*quietFor; i++ {
		if step(10 << 10) {
			t.Fatalf("period %d: due while quiet with no burst since the start", i)
		}
	}
	if step(30 * MiB) {
		t.Fatal("due in the burst itself")
	}
	for i := 1; i < quietFor; i++ {
		if step(10 << 10) {
			t.Fatalf("due after %d quiet periods of %d", i, quietFor)
		}
	}
	if step(quietAlloc) {
		t.Fatal("a period with quietAlloc allocated counted as quiet")
	}
	for i := 1; i < quietFor; i++ {
		step(10 << 10)
	}
	if !step(10 << 10) {
		t.Fatalf("not due after %d quiet periods following a burst", quietFor)
	}
	m.returned = allocs
	for i := 0; i < 2*quietFor; i++ {
		if step(10 << 10) {
			t.Fatal("due again with no burst since the return")
		}
	}
	step(burstAlloc) // the next burst, as small as one may be
	for i := 1; i < quietFor; i++ {
		step(0)
	}
	if !step(0) {
		t.Fatal("not due once quiet after the next burst")
	}
}

// Sessions that go idle end their goroutines without allocating much: the
// stacks they leave are reason enough to give memory back once quiet,
// once per as many more ended.
func TestMemoryReturnerGivesBackTheStacksOfEndedGoroutines(t *testing.T) {
	m := &memoryReturner{}
	allocs := uint64(0)
	step := func(goroutines uint64) bool { allocs += 10 << 10; return m.due(allocs, goroutines) }
	for i := 0; i < 2*quietFor; i++ {
		if step(40) {
			t.Fatalf("period %d: due while quiet with nothing ended", i)
		}
	}
	step(40 + 2*goroutinesEnded) // sessions open: their goroutines
	for i := 0; i < 2*quietFor; i++ {
		if step(40 + 2*goroutinesEnded) {
			t.Fatal("due while the goroutines are still there")
		}
	}
	if step(40+goroutinesEnded+1) || step(40+goroutinesEnded+1) || step(40+goroutinesEnded+1) {
		t.Fatalf("due with %d goroutines ended, under %d", goroutinesEnded-1, goroutinesEnded)
	}
	if !step(40 + goroutinesEnded) {
		t.Fatalf("not due, quiet, with %d goroutines ended", goroutinesEnded)
	}
	// Given back: the count starts again from the goroutines left.
	m.returned, m.peak = allocs, 40+goroutinesEnded
	for i := 0; i < 2*quietFor; i++ {
		if step(41) {
			t.Fatalf("period %d: due again with %d ended since the return", i, goroutinesEnded-1)
		}
	}
	if !step(40) {
		t.Fatalf("not due once %d more had ended", goroutinesEnded)
	}
}
