package daemon

import (
	"testing"
	"time"
)

// A load that needs a core, with goroutines queued for the processor,
// gets every processor at its first busy sample; a busy core whose
// goroutines run as they become runnable does not; one processor comes
// back only after procsQuietFor quiet samples in a row, and a load between
// the thresholds changes nothing.
func TestParallelismFollowsTheLoad(t *testing.T) {
	p := &parallelism{max: 4, procs: 4}
	queued := 400 * time.Microsecond
	step := func(used float64, want int) {
		t.Helper()
		got := p.next(used, queued)
		if got != want {
			t.Fatalf("at %d processors, %.2f cores used, goroutines waiting %v: next %d, want %d", p.procs, used, queued, got, want)
		}
		p.procs = got
	}
	for i := 1; i < procsQuietFor; i++ {
		step(0.1, 4)
	}
	step(0.75, 4) // between the thresholds: the quiet run starts over
	for i := 1; i < procsQuietFor; i++ {
		step(0.1, 4)
	}
	step(0.1, 1)
	step(0.75, 1)
	step(0.79, 1)
	queued = 20 * time.Microsecond // one connection's hand-offs: a core, no queue
	step(1.0, 1)
	step(1.0, 1)
	queued = 400 * time.Microsecond
	step(0.95, 4)
	step(1.5, 4)
	queued = 0 // every processor: nothing waits, the load still needs them
	step(1.2, 4)
	step(0.72, 4)
}

// The runtime's scheduling latencies are read as a mean over the
// goroutines scheduled since the last reading (the runtime samples one
// in eight).
func TestSchedWaitsMeasuresQueueing(t *testing.T) {
	w := newSchedWaits()
	done := make(chan struct{})
	for range 100 {
		go func() { done <- struct{}{} }()
	}
	for range 100 {
		<-done
	}
	if got := w.since(); got <= 0 || got > time.Second {
		t.Fatalf("mean wait of 200 scheduled goroutines: %v", got)
	}
}

// cpuTime counts the CPU this process spends.
func TestCPUTimeCountsWork(t *testing.T) {
	before := cpuTime()
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	if spent := cpuTime() - before; spent < 20*time.Millisecond {
		t.Fatalf("50 ms of spinning counted as %v of CPU", spent)
	}
}
