package daemon

import (
	"context"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
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
// processor until it uses about a core and its goroutines queue for it,
// and every processor the runtime would give it while it stays busy.
//
// A busy processor alone does not call for more: one HTTP/2 connection
// with ten streams kept a core busy while its goroutines waited 20 µs on
// average to run (they hand off to one another, one at a time), and every
// processor cut its rate by a sixth; sixteen such connections kept 130
// goroutines waiting 400 µs, and every processor raised it by two fifths.
type parallelism struct {
	max   int // the runtime's own GOMAXPROCS for this process
	procs int // in use now
	quiet int // samples in a row below procsQuiet
}

// What the controller watches is the daemon's CPU time over each sample
// and how long its goroutines waited to run (the runtime's scheduling
// latency): at procsBusy of a core with goroutines waiting procsQueued on
// average, one processor no longer keeps up, and every processor is given
// at once; below procsQuiet for procsQuietFor samples in a row, one
// processor does again. A load of new connections costs up to a third more
// CPU on every processor than on one (the wake-ups above), so procsQuiet
// there is about half a core on one: the gap keeps a load near either
// threshold from flipping it at every sample. procsQueued is twice the
// wait of a goroutine woken on an idle processor here (80-90 µs, the
// thread's wake-up), and half that of the load every processor helped.
// The return to one processor takes half a second: at two seconds, a light
// load that followed a busy one ran on every processor all the while, 15
// to 20 % slower. The daemon starts on one processor: it starts idle.
const (
	procsSample   = 100 * time.Millisecond
	procsBusy     = 0.8
	procsQueued   = 200 * time.Microsecond
	procsQuiet    = 0.7
	procsQuietFor = 5
)

// next returns the processors for the next sample period, given the
// cores' worth of CPU the daemon used in the last and how long on average
// its goroutines waited to run.
func (p *parallelism) next(used float64, queued time.Duration) int {
	switch {
	case p.procs < p.max && used >= procsBusy && queued >= procsQueued:
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
	waits := newSchedWaits()
	d.every(ctx, procsSample, func() {
		now, at := cpuTime(), time.Now()
		used := float64(now-last) / float64(at.Sub(lastAt))
		last, lastAt = now, at
		n := p.next(used, waits.since())
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

// schedWaits reads the runtime's scheduling latencies: how long
// goroutines that became runnable waited for a processor.
type schedWaits struct {
	sample [1]metrics.Sample
	count  uint64
	sum    float64 // seconds
}

// newSchedWaits starts counting from now.
func newSchedWaits() *schedWaits {
	w := &schedWaits{sample: [1]metrics.Sample{{Name: "/sched/latencies:seconds"}}}
	w.since()
	return w
}

// since returns the mean wait of the goroutines scheduled since the last
// call, 0 when none was.
func (w *schedWaits) since() time.Duration {
	metrics.Read(w.sample[:])
	if w.sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := w.sample[0].Value.Float64Histogram()
	var count uint64
	var sum float64
	for i, c := range h.Counts {
		count += c
		sum += float64(c) * bucketMid(h.Buckets[i], h.Buckets[i+1])
	}
	n, s := count-w.count, sum-w.sum
	w.count, w.sum = count, sum
	if n == 0 {
		return 0
	}
	return time.Duration(s / float64(n) * float64(time.Second))
}

// bucketMid is a histogram bucket's representative value: its middle, or
// its finite bound when the other is infinite.
func bucketMid(lo, hi float64) float64 {
	switch {
	case math.IsInf(lo, -1):
		return hi
	case math.IsInf(hi, 1):
		return lo
	}
	return (lo + hi) / 2
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
