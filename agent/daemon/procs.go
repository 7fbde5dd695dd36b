package daemon

import (
	"context"
	"os"
	"runtime"
	"syscall"
	"time"
)

// interlockd's work is hand-offs: a connection's goroutines wake one
// another at every message, and a new connection is an accept, a goroutine
// started for it, a dial and a relay started in both directions. With a
// processor idle, the runtime hands each such goroutine to a thread it
// wakes for it on the other core, and wakes its monitor thread at the
// first system call; on this class of machine (two virtual cores) a wake-up
// of a thread costs more than the work it is woken for. With one processor,
// the goroutines run one after the other on the thread already running:
// `connect()` to first byte through interlockd fell from 307-341 to 262-270
// µs, its CPU from 165-195 to 115-125 µs per connection and the thread
// switches from 9 to 6 (HAProxy: 3.9), in alternating runs. But one
// processor caps the daemon at one core, which a busy host needs more than
// it needs the hand-offs to be cheap. parallelism gives the daemon one
// processor while it uses less than a core and every processor the
// runtime would give it once it needs more.
type parallelism struct {
	max   int // the runtime's own GOMAXPROCS for this process
	procs int // in use now
	quiet int // samples in a row below procsQuiet
}

// What the controller watches is the daemon's CPU time over each sample:
// at procsBusy of a core, one processor no longer keeps up (its goroutines
// queue for it), and every processor is given at once; below procsQuiet
// for procsQuietFor samples in a row, one processor does again. A load of
// new connections costs up to a third more CPU on every processor than on
// one (the wake-ups above), so procsQuiet there is about half a core on
// one: the gap keeps a load near either threshold from flipping it at
// every sample. The daemon starts on one processor: it starts idle.
const (
	procsSample   = 100 * time.Millisecond
	procsBusy     = 0.8
	procsQuiet    = 0.7
	procsQuietFor = 20
)

// next returns the processors for the next sample period, given the
// cores' worth of CPU the daemon used in the last.
func (p *parallelism) next(used float64) int {
	switch {
	case p.procs < p.max && used >= procsBusy:
		p.quiet = 0
		return p.max
	case p.procs > 1 && used < procsQuiet:
		if p.quiet++; p.quiet >= procsQuietFor {
			p.quiet = 0
			return 1
		}
	default:
		p.quiet = 0
	}
	return p.procs
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// adaptParallelism runs the controller (see parallelism) until ctx ends
// or the daemon stops. A GOMAXPROCS the operator set is left as it is, as
// is a process the runtime gives a single processor anyway.
func (d *Daemon) adaptParallelism(ctx context.Context) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	p := &parallelism{max: runtime.GOMAXPROCS(0)}
	if p.max < 2 {
		return
	}
	p.procs = 1
	runtime.GOMAXPROCS(1)
	// Setting GOMAXPROCS stops the runtime from following the cgroup's CPU
	// limit; SetDefaultGOMAXPROCS gives every processor back and makes it
	// follow the limit again, when the load needs more than one processor
	// and when the controller stops.
	defer runtime.SetDefaultGOMAXPROCS()
	last, lastAt := cpuTime(), time.Now()
	d.every(ctx, procsSample, func() {
		now, at := cpuTime(), time.Now()
		used := float64(now-last) / float64(at.Sub(lastAt))
		last, lastAt = now, at
		n := p.next(used)
		if n == p.procs {
			return
		}
		if n == 1 {
			runtime.GOMAXPROCS(1)
		} else {
			runtime.SetDefaultGOMAXPROCS()
			n = runtime.GOMAXPROCS(0)
			p.max = n
		}
		d.log.Debug().Int("from", p.procs).Int("to", n).Float64("cores_used", used).Msg("processors for the daemon's goroutines changed")
		p.procs = n
	})
}

// every calls f every period until ctx ends or the daemon stops: the
// daemon's samplers of itself.
func (d *Daemon) every(ctx context.Context, period time.Duration, f func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.stopping:
			return
		case <-t.C:
		}
		f()
	}
}
