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
	samples          []metrics.Sample
}

// What the returner waits for: a sample period with less than quietAlloc
// allocated (nothing is under way: a single busy session allocates more),
// after at least burstAlloc allocated since the last return (there was a
// burst to give back), with at least minReturnable that could be given
// back. A return is one forced collection, at most once per burst: 11-17 ms
// for the 20 MB heap of 300 idle PostgreSQL sessions on two cores.
const (
	memorySample  = time.Second
	quietAlloc    = 256 << 10
	burstAlloc    = 16 << 20
	minReturnable = 4 << 20
)

func newMemoryReturner() *memoryReturner {
	return &memoryReturner{samples: []metrics.Sample{
		{Name: "/gc/heap/allocs:bytes"},
		// Free pages not yet returned, and the unused part of pages in
		// use: garbage awaiting a collection and what the burst's
		// objects left in their spans.
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}}
}

// due reports whether memory should be given back now, given the heap
// allocated in all and what is free or unused in it.
func (m *memoryReturner) due(allocs, returnable uint64) bool {
	quiet := allocs-m.allocs < quietAlloc
	m.allocs = allocs
	return quiet && allocs-m.returned >= burstAlloc && returnable >= minReturnable
}

// sample reads the runtime's figures and reports whether to give back,
// and how much could be.
func (m *memoryReturner) sample() (due bool, returnable uint64) {
	metrics.Read(m.samples)
	returnable = m.samples[1].Value.Uint64() + m.samples[2].Value.Uint64()
	return m.due(m.samples[0].Value.Uint64(), returnable), returnable
}

// returnMemoryWhenQuiet gives the heap a burst left back to the system
// once the daemon is quiet (see memoryReturner), until ctx ends or the
// daemon stops.
func (d *Daemon) returnMemoryWhenQuiet(ctx context.Context) {
	m := newMemoryReturner()
	m.sample()
	m.returned = m.allocs
	t := time.NewTicker(memorySample)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.stopping:
			return
		case <-t.C:
		}
		if due, returnable := m.sample(); due {
			start := time.Now()
			debug.FreeOSMemory()
			m.returned = m.allocs
			d.log.Debug().Uint64("returnable_bytes", returnable).Dur("took", time.Since(start)).
				Msg("quiet after a burst: heap memory returned to the system")
		}
	}
}
