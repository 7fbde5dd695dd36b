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
// Quiet is a stretch of short periods, not one period of a second:
// sessions hand their idle wait over a second after their last statement
// (a few hundred bytes each), and with periods of a second the return came
// 2.5-3 s after 300 sessions opened, or in a gap before they did, leaving
// what they allocated to the next burst. Now it comes 1.5-2.5 s after. And
// burstAlloc is below what 300 sessions opening allocate (7-8 MB), so that
// a return in a gap before them does not keep theirs.
const (
	memorySample = 250 * time.Millisecond
	quietAlloc   = 64 << 10
	quietFor     = 3
	burstAlloc   = 4 << 20
)

func newMemoryReturner() *memoryReturner {
	return &memoryReturner{samples: []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}}
}

// due reports whether memory should be given back now, given the heap
// allocated in all.
func (m *memoryReturner) due(allocs uint64) bool {
	if allocs-m.allocs < quietAlloc {
		m.quiet++
	} else {
		m.quiet = 0
	}
	m.allocs = allocs
	return m.quiet >= quietFor && allocs-m.returned >= burstAlloc
}

// sample reads the runtime's figures and reports whether to give back.
func (m *memoryReturner) sample() bool {
	metrics.Read(m.samples)
	return m.due(m.samples[0].Value.Uint64())
}

// released is the heap memory returned to the system, as of the last read.
func (m *memoryReturner) released() uint64 { return m.samples[1].Value.Uint64() }

// returnMemoryWhenQuiet gives the heap a burst left back to the system
// once the daemon is quiet (see memoryReturner), until ctx ends or the
// daemon stops.
func (d *Daemon) returnMemoryWhenQuiet(ctx context.Context) {
	m := newMemoryReturner()
	m.sample()
	m.returned = m.allocs
	d.every(ctx, memorySample, func() {
		if !m.sample() {
			return
		}
		start, before := time.Now(), m.released()
		debug.FreeOSMemory()
		took := time.Since(start)
		metrics.Read(m.samples)
		m.returned = m.samples[0].Value.Uint64()
		// Released pages can be taken again before the read: what
		// went back, at least.
		d.log.Debug().Int64("returned_bytes", int64(m.released())-int64(before)).Dur("took", took).
			Msg("quiet after a burst: heap memory returned to the system")
	})
}
