package ssh

import (
	"io"
	"sync"
)

// batchWriter writes a stream of small writes as few large ones: Write
// queues the bytes and returns, and one goroutine writes all that has
// queued since its last write. An SSH channel sends every Write as packets
// of its own, the last one short, each a system call and a wake-up of the
// peer: the sftp client writes a request's header and its data separately,
// so each 32 KiB an agent uploads cost two packets upstream. Batched, the
// requests that queue while one is written go out together, cut into
// packets only at the channel's packet size, as OpenSSH's own client does.
//
// Ordering is kept; a failed write fails every later one and Close. Write
// blocks while max bytes are queued, so memory stays bounded. Close writes
// what is queued and stops; the underlying writer stays open.
type batchWriter struct {
	w    io.Writer
	max  int
	mu   sync.Mutex
	cond sync.Cond
	// queued is what Write added since the writer took the last batch;
	// spare is the batch before, reused.
	queued, spare []byte
	err           error
	closing       bool
	done          chan struct{}
}

func newBatchWriter(w io.Writer, max int) *batchWriter {
	b := &batchWriter{w: w, max: max, done: make(chan struct{})}
	b.cond.L = &b.mu
	go b.run()
	return b
}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.err == nil && !b.closing && len(b.queued) > 0 && len(b.queued)+len(p) > b.max {
		b.cond.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.closing {
		return 0, io.ErrClosedPipe
	}
	b.queued = append(b.queued, p...)
	b.cond.Broadcast()
	return len(p), nil
}

// run writes what is queued until Close, or until a write fails.
func (b *batchWriter) run() {
	defer close(b.done)
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		for len(b.queued) == 0 && !b.closing {
			b.cond.Wait()
		}
		if len(b.queued) == 0 {
			return
		}
		batch := b.queued
		b.queued = b.spare[:0]
		b.mu.Unlock()
		_, err := b.w.Write(batch)
		b.mu.Lock()
		b.spare = batch
		if err != nil {
			b.err = err
			b.cond.Broadcast()
			return
		}
		// Writers waiting for room go on.
		b.cond.Broadcast()
	}
}

// Close writes what is queued and returns the first write error.
func (b *batchWriter) Close() error {
	b.mu.Lock()
	b.closing = true
	b.cond.Broadcast()
	b.mu.Unlock()
	<-b.done
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}
