package daemon

import (
	"testing"
	"time"
)

// A load that needs a core gets every processor at its first busy sample;
// one processor comes back only after procsQuietFor quiet samples in a
// row, and a load between the thresholds changes nothing.
func TestParallelismFollowsTheLoad(t *testing.T) {
	p := &parallelism{max: 4, procs: 4}
	step := func(used float64, want int) {
		t.Helper()
		got := p.next(used)
		if got != want {
			t.Fatalf("at %d processors, %.2f cores used: next %d, want %d", p.procs, used, got, want)
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
	step(0.95, 4)
	step(1.5, 4)
	step(0.72, 4)
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
