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
	steps := []struct {
		allocs, returnable uint64
		due                bool
		why                string
	}{
		{allocs: 1 * MiB, returnable: 8 * MiB, why: "busy: a MiB in the period"},
		{allocs: 1*MiB + 100<<10, returnable: 8 * MiB, why: "quiet, but no burst since the start"},
		{allocs: 30 * MiB, returnable: 8 * MiB, why: "the burst itself: not quiet"},
		{allocs: 30*MiB + 10<<10, returnable: 2 * MiB, why: "quiet after a burst, too little to give back"},
		{allocs: 30*MiB + 20<<10, returnable: 8 * MiB, due: true, why: "quiet after a burst, with plenty to give back"},
	}
	for i, s := range steps {
		if got := m.due(s.allocs, s.returnable); got != s.due {
			t.Fatalf("step %d (%s): due %v, want %v", i, s.why, got, s.due)
		}
	}
	m.returned = m.allocs
	if m.due(30*MiB+30<<10, 8*MiB) {
		t.Fatal("given back again without a burst since")
	}
	m.due(60*MiB, 8*MiB) // the next burst
	if !m.due(60*MiB+1<<10, 8*MiB) {
		t.Fatal("not given back once quiet after the next burst")
	}
}
