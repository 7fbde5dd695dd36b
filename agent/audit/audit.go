// Package audit writes and checks Interlock's tamper-evident audit trail.
//
// Every record belongs to one host's chain and carries seq (1, 2, ...), time,
// host, kind, a JSON payload, the previous record's hash and its own hash:
//
//	hash = SHA-256("interlock-audit-v1\x00" || be64(seq) || be64(time_ns) ||
//	               lp(host) || lp(kind) || lp(payload) || lp(prev_hash))
//
// where lp(x) is be32(len(x)) || x, time_ns is Unix nanoseconds, and hashes
// are lowercase hex; the first record's prev_hash is 64 zeros. Changing,
// inserting or deleting any record but the newest breaks the chain at that
// record, and Verify names it. The chain lives in the store (SQLite or the
// shared PostgreSQL, one chain per host); the optional zerolog hook copies
// every record, with its hash, to the daemon's log, which is an independent
// witness of the head (truncating the newest records is only detectable
// against such a copy).
//
// Events are typed (see Event): none can carry a secret or a masked value.
package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit/chain"
	"github.com/interlock-dev/interlock/agent/store"
)

// Log appends events to one host's chain. It is safe for concurrent use;
// appends from one Log are serialized in process, and the store's chain lock
// serializes them against other processes writing the same host's chain.
type Log struct {
	st     *store.Store
	host   string
	logger *zerolog.Logger // witness: committed records with their hashes
	events *zerolog.Logger // event log: every event as it is recorded
	now    func() time.Time

	mu sync.Mutex // serializes appends: one writer per chain in this process
	// buf and enc encode a batch's payloads (under mu).
	buf bytes.Buffer
	enc *json.Encoder

	// queued holds the events Record posted that the writer has not
	// taken, in order; room is signalled when it takes them, kick wakes
	// it for a new batch (see post).
	qmu     sync.Mutex
	queued  []pending
	room    sync.Cond
	kick    chan struct{}
	stop    chan struct{}
	stopped sync.WaitGroup
	closed  sync.Once

	errMu    sync.Mutex
	asyncErr error
}

type pending struct {
	ev   Event
	at   time.Time
	done chan error // nil for Record
}

// Option configures a Log.
type Option func(*Log)

// WithEventLog writes every event Record and RecordNow are given to l, as
// one line at the event's level (message and fields per kind, "event"
// naming it), before it enters the chain: the log an operator watches.
func WithEventLog(l zerolog.Logger) Option {
	return func(a *Log) { a.events = &l }
}

// WithLogger copies every appended record to l as one JSON log line (message
// "audit", fields host, seq, kind, hash, event), after it is committed.
func WithLogger(l zerolog.Logger) Option {
	return func(a *Log) { a.logger = &l }
}

// New returns a Log writing host's chain in st and starts the background
// writer used by Record. Close it to drain Record's queue.
func New(st *store.Store, host string, opts ...Option) *Log {
	l := &Log{st: st, host: host, now: time.Now, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	l.room.L = &l.qmu
	for _, o := range opts {
		o(l)
	}
	l.stopped.Add(1)
	go l.writeLoop()
	return l
}

// Host returns the chain this Log writes.
func (l *Log) Host() string { return l.host }

// RecordNow writes ev to every sink, as Record does, and returns the chain
// record once it is committed. Use it where the caller must not go on
// before the record is durable (approval decisions); use Record on the
// proxy's hot path.
func (l *Log) RecordNow(ctx context.Context, ev Event) (store.AuditRecord, error) {
	l.logEvent(ev)
	rs, err := l.append(ctx, []pending{{ev: ev, at: l.now()}})
	if err != nil {
		return store.AuditRecord{}, err
	}
	return rs[0], nil
}

// Record writes ev to every sink: the event log (WithEventLog) at once, as
// one line, and the chain through the background writer, which appends
// queued events in batches (one transaction each) and so keeps the proxy
// from waiting on a database commit per statement. It is the one way an
// event is written, so the log and the chain cannot disagree.
//
// The one exception is an enforced decision that let a request through,
// untouched (allow) or with its answer's values masked (mask): it goes to
// the log only, at debug level, because the recording it is written into,
// verdict and rule beside the statement, is sealed into the chain
// (RecordingSealed), and one hashed append per statement would cost a busy
// session more than the statement. Under a masking rule every read is a
// mask: a record of its own cost a pgbench -S transaction 15 µs of CPU, a
// quarter of what it cost in all.
//
// Record blocks only when the queue (4096 events) is full; a failed write is
// retried, not dropped (see writeBatch), and the first error is returned by
// Flush or Close. Record must not be called after Close.
func (l *Log) Record(ev Event) {
	if d, ok := ev.(Decision); ok {
		l.Decided(d)
		return
	}
	l.record(ev)
}

// Decided records a decision as Record does. A statement's decision comes
// here without being made an Event first: the enforced allow, the one
// event of nearly every statement, then costs no allocation.
func (l *Log) Decided(d Decision) {
	if d.InRecording() {
		if l.events != nil {
			d.logTo(l.events)
		}
		return
	}
	l.record(d)
}

func (l *Log) record(ev Event) {
	l.logEvent(ev)
	l.post(pending{ev: ev, at: l.now()}, true)
}

// maxQueued bounds the events waiting for the writer: Record blocks beyond
// it, so that a store that keeps refusing slows the proxy down instead of
// letting it act unrecorded.
const maxQueued = 4096

// post queues p for the writer, waiting for room first when bounded. Only
// the event that starts a batch, and the one that fills it, wake the
// writer: with a channel, each of a session's records made the lingering
// writer run to take it.
func (l *Log) post(p pending, bounded bool) {
	l.qmu.Lock()
	for bounded && len(l.queued) >= maxQueued {
		l.room.Wait()
	}
	l.queued = append(l.queued, p)
	n := len(l.queued)
	l.qmu.Unlock()
	if n == 1 || n == fullBatch {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// take returns the queued events, leaving room for more; prev is the
// array the last batch used, reused for the next.
func (l *Log) take(prev []pending) []pending {
	clear(prev) // it keeps no event alive
	l.qmu.Lock()
	batch := l.queued
	l.queued = prev[:0]
	l.room.Broadcast()
	l.qmu.Unlock()
	return batch
}

// Flush waits until every event recorded before it is committed. While the
// store is failing it keeps waiting (the writer retries), so give it a
// deadline; it returns ctx's error then.
func (l *Log) Flush(ctx context.Context) error {
	done := make(chan error, 1)
	l.post(pending{done: done}, false)
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	l.errMu.Lock()
	defer l.errMu.Unlock()
	err := l.asyncErr
	l.asyncErr = nil
	return err
}

// Close drains the queue and stops the background writer. While closing, a
// batch the store keeps refusing is tried once more and then given up, and
// Close reports how many events were lost. It does not close the store.
func (l *Log) Close() error {
	l.closed.Do(func() {
		close(l.stop)
		l.stopped.Wait()
	})
	l.errMu.Lock()
	defer l.errMu.Unlock()
	err := l.asyncErr
	l.asyncErr = nil
	return err
}

// batchLinger is how long the writer waits to fill a batch of posted events.
// A batch is appended with a waited write, which commits the store's queued
// writes with it: as long as the store's own linger (store.writeLinger), so
// that neither cuts the other's batches short.
const batchLinger = 20 * time.Millisecond

// fullBatch is as many events as make a batch worth writing without
// waiting out batchLinger: the post that brings the queue to it wakes the
// writer at once. A batch may hold more (those posted since).
const fullBatch = 256

func (l *Log) writeLoop() {
	defer l.stopped.Done()
	var batch []pending
	for {
		select {
		case <-l.kick:
		case <-l.stop:
			// Everything posted before Close, batch after batch.
			for batch = l.take(batch); len(batch) > 0; batch = l.take(batch) {
				l.writeBatch(batch)
			}
			return
		}
		// Linger: at proxy rates one transaction then carries many
		// records, which is most of what an append costs. Events posted
		// meanwhile wait in the queue without waking this goroutine.
		linger := time.NewTimer(batchLinger)
		select {
		case <-linger.C:
		case <-l.kick: // the batch is full
		case <-l.stop:
		}
		linger.Stop()
		if batch = l.take(batch); len(batch) > 0 {
			l.writeBatch(batch)
		}
	}
}

// writeBatch appends the batch's events in one transaction. A failure (the
// fleet store unreachable, say) is retried with backoff rather than dropping
// events; meanwhile Record blocks once the queue is full, so the proxy slows
// down instead of acting unrecorded. Once Close has been called, a failing
// batch is given up after one more try.
func (l *Log) writeBatch(batch []pending) {
	evs := make([]pending, 0, len(batch))
	for _, p := range batch {
		if p.ev != nil {
			evs = append(evs, p)
		}
	}
	backoff := 50 * time.Millisecond
	for len(evs) > 0 {
		_, err := l.append(context.Background(), evs)
		if err == nil {
			break
		}
		if l.logger != nil {
			l.logger.Error().Err(err).Int("events", len(evs)).Int64("retry_in_ms", backoff.Milliseconds()).Msg("audit append failed")
		}
		select {
		case <-l.stop:
			if _, err := l.append(context.Background(), evs); err != nil {
				l.errMu.Lock()
				l.asyncErr = errors.Join(l.asyncErr, fmt.Errorf("%d audit events lost at shutdown: %w", len(evs), err))
				l.errMu.Unlock()
			}
			evs = nil
		case <-time.After(backoff):
			backoff = min(2*backoff, 5*time.Second)
		}
	}
	for _, p := range batch {
		if p.done != nil {
			p.done <- nil
		}
	}
}

// maxKeptPayloads bounds the buffer the log keeps between batches: one a
// backlog's batch grew is let go.
const maxKeptPayloads = 1 << 20

func (l *Log) append(ctx context.Context, ps []pending) ([]store.AuditRecord, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// The batch's payloads are encoded one after another into the log's
	// buffer and cut from one string: the bytes json.Marshal gives each,
	// for one allocation a batch instead of two an event.
	if l.enc == nil {
		l.enc = json.NewEncoder(&l.buf)
	}
	l.buf.Reset()
	ends := make([]int, len(ps))
	for i, p := range ps {
		if err := l.enc.Encode(p.ev); err != nil {
			return nil, fmt.Errorf("encode %s event: %w", p.ev.Kind(), err)
		}
		l.buf.Truncate(l.buf.Len() - 1) // the newline Encode ends each with
		ends[i] = l.buf.Len()
	}
	all := l.buf.String()
	if l.buf.Cap() > maxKeptPayloads {
		l.buf = bytes.Buffer{}
		l.enc = nil
	}
	payloads := make([]string, len(ps))
	for i, start := 0, 0; i < len(ps); i++ {
		payloads[i], start = all[start:ends[i]], ends[i]
	}
	rs, err := l.st.AppendAudit(ctx, l.host, len(ps), func(head store.AuditHead) ([]store.AuditRecord, error) {
		prev, seq := head.Hash, head.Seq
		if seq == 0 {
			prev = chain.GenesisHash
		}
		out := make([]store.AuditRecord, len(ps))
		var h chain.Hasher // one buffer for the batch
		for i, p := range ps {
			seq++
			r := store.AuditRecord{Host: l.host, Seq: seq, Time: p.at.UTC(), Kind: string(p.ev.Kind()),
				Payload: payloads[i], PrevHash: prev}
			r.Hash = h.Hash(chain.Record(r))
			out[i], prev = r, r.Hash
		}
		return out, nil
	})
	if err != nil {
		return nil, fmt.Errorf("append audit record: %w", err)
	}
	if l.logger != nil {
		for _, r := range rs {
			l.logger.Info().Str("host", r.Host).Uint64("seq", r.Seq).Str("kind", r.Kind).
				Str("hash", r.Hash).RawJSON("event", []byte(r.Payload)).Msg("audit")
		}
	}
	return rs, nil
}

// Verify walks host's chain from seq 1 and stops at the first record that
// does not check out: a missing seq ("gap", naming the first missing seq), a
// prev_hash that is not the previous record's hash ("prev-hash mismatch"),
// or a hash that does not match the record's content ("hash mismatch", which
// is what editing any field of a stored record gives). The error return is
// for failures to read the store, not for a broken chain.
func Verify(ctx context.Context, st *store.Store, host string) (chain.Result, error) {
	c := chain.NewCheck(host)
	errStop := errors.New("stop")
	err := st.AuditRecords(ctx, host, 0, func(r store.AuditRecord) error {
		if !c.Next(chain.Record(r)) {
			return errStop
		}
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return c.Result(), fmt.Errorf("verify audit chain %s: %w", host, err)
	}
	return c.Result(), nil
}

// VerifyAll verifies every host's chain in the store.
func VerifyAll(ctx context.Context, st *store.Store) ([]chain.Result, error) {
	hosts, err := st.AuditHosts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]chain.Result, 0, len(hosts))
	for _, h := range hosts {
		r, err := Verify(ctx, st, h)
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Export writes host's chain (every host's when host is "") to w as JSON
// lines, one ExportedRecord each, in seq order. The payload is the stored
// bytes, so a reader can recompute every hash from the export alone.
func Export(ctx context.Context, st *store.Store, host string, w io.Writer) error {
	hosts := []string{host}
	if host == "" {
		var err error
		if hosts, err = st.AuditHosts(ctx); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // the payload must stay byte-identical to what was hashed
	for _, h := range hosts {
		err := st.AuditRecords(ctx, h, 0, func(r store.AuditRecord) error {
			return enc.Encode(chain.ExportedRecord{Host: r.Host, Seq: r.Seq, Time: r.Time, Kind: r.Kind,
				Payload: json.RawMessage(r.Payload), PrevHash: r.PrevHash, Hash: r.Hash})
		})
		if err != nil {
			return fmt.Errorf("export audit chain %s: %w", h, err)
		}
	}
	return nil
}
