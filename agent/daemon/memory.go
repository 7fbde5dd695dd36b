package daemon

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// A burst of sessions (a CI fleet's jobs starting at once) leaves the heap
// sized for the burst: every session had its goroutines, buffers and
// decoder state while it started, and most of that is garbage once the
// sessions go idle or end. The runtime keeps it: the next collection is
// due only at twice the heap the burst left, which a quiet proxy may not
// allocate for minutes, and its scavenger returns pages to the system only
// above that goal. So interlockd's resident memory stayed at the burst's
// peak while hundreds of sessions sat idle: 29-35 KiB per session 3 s
// after 300 opened together, where they hold 5-10 KiB of live heap each.
// memoryReturner gives it back once the daemon is quiet.
type memoryReturner struct {
	// allocs is the heap allocated, in all, at the last sample, and
	// returned what it was when memory was last given back.
	allocs, returned uint64
	// peak is the most goroutines at a sample since memory was last
	// given back.
	peak uint64
	// quiet is how many samples in a row were quiet.
	quiet   int
	samples []metrics.Sample
}

// What the returner waits for: quietFor sample periods in a row with less
// than quietAlloc allocated in each (nothing is under way: a single busy
// session allocates more; a daemon with nothing to do allocates 45-70 KiB
// a second, its own timers and samplers), after at least burstAlloc
// allocated since the last return (there may be that much garbage to give
// back). A return is one forced collection: 11-17 ms for the 20 MB heap of
// 300 idle PostgreSQL sessions on two cores, so at most one per burstAlloc
// allocated and per quiet stretch.
//
// Or after at least goroutinesEnded goroutines ended since the most there
// were: sessions that go idle hand their waits over and end theirs (see
// protocol.Watcher), and their stacks (8 to 32 KiB each) are memory to give
// back that allocating did not announce. Sessions open in a burst, but go
// idle a second after their own last statement, so the quiet the burst's
// allocations asked for could come while many were still handing over,
// or, for fewer sessions, never come: the stacks and garbage of those
// after it stayed until the next burst (150 sessions gone idle left
// interlockd 15.4 to 17.4 MB of its own memory, two runs of three without
// a return; 15.5 to 15.8 since). A return is due again once as many more
// have ended.
//
// Quiet is a stretch of short periods, not one period of a second:
// sessions hand their idle wait over a second after their last statement
// (a few hundred bytes each), and with periods of a second the return came
// 2.5-3 s after 300 sessions opened, or in a gap before they did, leaving
// what they allocated to the next burst. Now it comes 1.5-2.5 s after. And
// burstAlloc is below what 300 sessions opening allocate (7-8 MB), so that
// a return in a gap before them does not keep theirs.
const (
	memorySample    = 250 * time.Millisecond
	quietAlloc      = 64 << 10
	quietFor        = 3
	burstAlloc      = 4 << 20
	goroutinesEnded = 128
)

func newMemoryReturner() *memoryReturner {
	return &memoryReturner{samples: []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}}
}

// due reports whether memory should be given back now, given the heap
// allocated in all and the goroutines there are.
func (m *memoryReturner) due(allocs, goroutines uint64) bool {
	if allocs-m.allocs < quietAlloc {
		m.quiet++
	} else {
		m.quiet = 0
	}
	m.allocs = allocs
	m.peak = max(m.peak, goroutines)
	return m.quiet >= quietFor && (allocs-m.returned >= burstAlloc || m.peak-goroutines >= goroutinesEnded)
}

// sample reads the runtime's figures and reports whether to give back.
func (m *memoryReturner) sample() bool {
	metrics.Read(m.samples)
	return m.due(m.samples[0].Value.Uint64(), m.goroutines())
}

// gaveBack notes that memory was given back: what counts toward the next
// return starts here.
func (m *memoryReturner) gaveBack() {
	metrics.Read(m.samples)
	m.returned, m.peak = m.samples[0].Value.Uint64(), m.goroutines()
}

// goroutines is the goroutines there were, as of the last read.
func (m *memoryReturner) goroutines() uint64 { return m.samples[2].Value.Uint64() }

// released is the heap memory returned to the system, as of the last read.
func (m *memoryReturner) released() uint64 { return m.samples[1].Value.Uint64() }

// returnMemoryWhenQuiet gives the heap a burst left back to the system
// once the daemon is quiet (see memoryReturner), until ctx ends or the
// daemon stops.
func (d *Daemon) returnMemoryWhenQuiet(ctx context.Context) {
	m := newMemoryReturner()
	m.sample()
	m.gaveBack()
	d.every(ctx, memorySample, func() {
		if !m.sample() {
			return
		}
		start, before := time.Now(), m.released()
		debug.FreeOSMemory()
		took := time.Since(start)
		m.gaveBack()
		// Released pages can be taken again before the read: what
		// went back, at least.
		d.log.Debug().Int64("returned_bytes", int64(m.released())-int64(before)).Dur("took", took).
			Msg("quiet after a burst: heap memory returned to the system")
	})
}
