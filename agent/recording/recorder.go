// Package recording keeps a per-session recording of every protocol message
// in both directions, with timestamps and the policy verdict beside each
// request, and turns recordings back into a readable transcript (`interlock
// replay`) or a pcap that Wireshark and tshark decode as the real protocol
// (`interlock export --pcap`).
//
// A recording is a file in the state directory (one per session, written
// through a buffer, flushed periodically and at session end) plus an index
// row in the store (store.Session). At session end the recording is sealed:
// its SHA-256 goes into the session row and, when the recorder has an audit
// log, into the audit chain, so editing a recording afterwards is detectable
// (Verify).
//
// A session that ends before its first flush, with its recording still
// whole in its buffer (up to 64 KiB), gets no file: its recording goes into
// the store in the transaction that seals its row (store.SessionEnd), where
// fleet mode puts every recording anyway. Short connections are most
// connections, and creating, syncing and closing a file cost them more than
// the rest of their recording; readers take either (Open).
//
// What is recorded is what crossed the proxy's client side, after masking:
// the transcript shows values as the agent saw them. For PostgreSQL the
// client's password messages ('p') are recorded without their body, so the
// agent's own password or SCRAM proof never lands on disk.
package recording

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/store"
)

// Recorder starts and seals session recordings under one directory. It is
// safe for concurrent use; one background goroutine flushes open recordings
// and their verdicts every FlushInterval.
type Recorder struct {
	st     *store.Store
	dir    string
	host   string
	audit  *audit.Log
	logger zerolog.Logger
	every  time.Duration
	upload bool

	mu     sync.Mutex
	active map[string]*Session
	// ending holds the sessions whose Finish has taken their verdicts
	// from the flushes' reach; each channel closes once the session's end
	// is stored (see Flush).
	ending map[string]chan struct{}
	// refusing says the store refused a session row Start did not wait
	// for: Starts wait for theirs until one is stored again.
	refusing atomic.Bool

	stop    chan struct{}
	stopped sync.WaitGroup
	once    sync.Once

	// flushMu serializes flushes (the ticker's, Flush's, Close's); held
	// are the verdicts a flush could not store, which the next ones try
	// again (see flushAll).
	flushMu sync.Mutex
	held    []heldVerdicts

	// The writer goroutine does all file I/O, so Message never waits on a
	// write(2). Full buffers travel to it over writes and come back
	// through free, or freeSmall (see freeList).
	writes     chan writeReq
	free       chan []byte
	freeSmall  chan []byte
	writerDone chan struct{}
	closeMu    sync.RWMutex
	closed     bool

	// reserve gives the free space to keep on the directory's file system
	// of that size (nil: none); short holds the SpaceError while there is
	// less. written counts what the writer wrote since it last looked.
	reserve func(total int64) int64
	short   atomic.Pointer[SpaceError]
	written int64
	// unasked says the last look at the free space failed, so that a
	// failing file system is logged once, not every second.
	unasked atomic.Bool
}

// SpaceError is a recording refused or cut short because its file system
// has less free space than the recorder keeps.
type SpaceError struct {
	Dir           string
	Free, Reserve int64
}

func (e *SpaceError) Error() string {
	return fmt.Sprintf("the recordings' file system (%s) has %s free, under the %s kept free (recordings.reserve): sessions are refused until space is freed",
		e.Dir, humanize.IBytes(uint64(e.Free)), humanize.IBytes(uint64(e.Reserve)))
}

// spaceCheckBytes is how much the writer writes between two looks at the
// free space, besides the flush loop's every interval: how far past the
// reserve the fastest sessions can write before they are stopped.
const spaceCheckBytes = 16 << 20

// bufSize is the largest of a session's write buffers; a full buffer is
// handed to the writer goroutine and replaced, at this size from the free
// list.
const bufSize = 64 << 10

// minBufSize is a session's first buffer, and the first after each flush
// while the session stays this quiet: room for a header, a login and a few
// statements. Each buffer a session fills doubles its next, up to bufSize.
// Why: every session used to take a full buffer at its start and a fresh one
// for each second it said anything, so 300 sessions with a statement each
// made 19 MiB of buffers the heap kept room for long after.
const minBufSize = 4 << 10

// freeBufs is how many full-size buffers the free list keeps for the next
// busy sessions; freeSmallBufs how many first buffers (minBufSize) the
// other keeps for the next sessions: every session takes one, and most
// short ones hand it back at their end, having never filled it.
const (
	freeBufs      = 16
	freeSmallBufs = 64
)

// writeReq is a buffer to write for s, or, with done set, a barrier that is
// closed once everything queued before it is written.
type writeReq struct {
	s    *Session
	buf  []byte
	shut bool // close s's file: it was idle for a whole flush interval
	done chan struct{}
}

// Option configures a Recorder.
type Option func(*Recorder)

// WithAudit makes the recorder record RecordingSealed in l when it seals a
// recording, binding the file's hash into the chain. The session's other
// events (its opening, decisions, end) are the session pipeline's.
func WithAudit(l *audit.Log) Option { return func(r *Recorder) { r.audit = l } }

// WithLogger sets where background flush errors are logged.
func WithLogger(l zerolog.Logger) Option { return func(r *Recorder) { r.logger = l } }

// WithUpload sets whether Finish copies each sealed recording into the store
// (store.PutRecording), so that any host sharing the store can replay and
// export it. The default is on for a PostgreSQL (fleet) store and off for
// SQLite, where the file in the state directory is all there is.
func WithUpload(on bool) Option { return func(r *Recorder) { r.upload = on } }

// WithFlushInterval sets how often open recordings are flushed to disk and
// their verdicts to the store (default 1s). A crash loses at most this much.
func WithFlushInterval(d time.Duration) Option { return func(r *Recorder) { r.every = d } }

// WithReserve keeps free space on the file system of the recorder's
// directory: reserve gives the bytes to keep on one of total bytes. While
// there is less, Start refuses sessions and open recordings that write are
// ended (their lost is told a *SpaceError), until space is freed; the
// logger says when that begins and ends.
func WithReserve(reserve func(total int64) int64) Option {
	return func(r *Recorder) { r.reserve = reserve }
}

// NewRecorder returns a recorder writing files under dir (created 0700) and
// index rows for host into st.
func NewRecorder(st *store.Store, dir, host string, opts ...Option) (*Recorder, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create recording directory: %w", err)
	}
	r := &Recorder{st: st, dir: dir, host: host, logger: zerolog.Nop(), every: time.Second,
		active: map[string]*Session{}, ending: map[string]chan struct{}{}, stop: make(chan struct{}),
		writes: make(chan writeReq, 256), free: make(chan []byte, freeBufs), freeSmall: make(chan []byte, freeSmallBufs), writerDone: make(chan struct{}),
		upload: st.Backend() == store.PostgreSQL}
	for _, o := range opts {
		o(r)
	}
	r.checkSpace()
	r.stopped.Add(1)
	go r.flushLoop()
	go r.writeLoop()
	return r, nil
}

// Stopped returns why recordings are stopped (their file system under its
// reserve, see WithReserve), or nil while they are not.
func (r *Recorder) Stopped() error {
	if e := r.short.Load(); e != nil {
		return e
	}
	return nil
}

// checkSpace looks at the free space of the recordings' file system and
// keeps whether it is under the reserve, logging each change. A file
// system that cannot be asked keeps the last answer.
func (r *Recorder) checkSpace() {
	if r.reserve == nil {
		return
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(r.dir, &fs); err != nil {
		if !r.unasked.Swap(true) {
			r.logger.Error().Err(err).Str("dir", r.dir).Msg("read the recordings' free space")
		}
		return
	}
	r.unasked.Store(false)
	free, total := int64(fs.Bavail)*fs.Bsize, int64(fs.Blocks)*fs.Bsize
	if keep := r.reserve(total); free < keep {
		if r.short.Swap(&SpaceError{Dir: r.dir, Free: free, Reserve: keep}) == nil {
			r.logger.Error().Int64("free", free).Int64("reserve", keep).Str("dir", r.dir).
				Msg("recordings stopped: their file system is under its reserve; decoded sessions are refused and recording ones ended until space is freed")
		}
		return
	}
	if r.short.Swap(nil) != nil {
		r.logger.Warn().Int64("free", free).Str("dir", r.dir).Msg("recordings resumed: their file system is above its reserve again")
	}
}

// Close flushes every open recording to disk and stops the background
// goroutines. Open sessions are not sealed (SealAbandoned seals them on the
// next start); if they go on recording, their writes become synchronous.
func (r *Recorder) Close() error {
	var err error
	r.once.Do(func() {
		close(r.stop)
		r.stopped.Wait()
		err = r.flushAll(context.Background())
		r.closeMu.Lock()
		r.closed = true
		close(r.writes)
		r.closeMu.Unlock()
		<-r.writerDone
	})
	return err
}

func (r *Recorder) writeLoop() {
	defer close(r.writerDone)
	for req := range r.writes {
		if req.buf != nil {
			req.s.writeOut(req.buf)
			r.putBuf(req.buf)
			if r.written += int64(len(req.buf)); r.written >= spaceCheckBytes {
				r.written = 0
				r.checkSpace()
			}
		}
		if req.shut {
			req.s.shutFile()
		}
		if req.done != nil {
			close(req.done)
		}
	}
}

// send queues req for the writer goroutine; after Close it does the work
// itself, once the writer has drained what was queued before.
func (r *Recorder) send(req writeReq) {
	r.closeMu.RLock()
	if !r.closed {
		r.writes <- req
		r.closeMu.RUnlock()
		return
	}
	r.closeMu.RUnlock()
	<-r.writerDone
	if req.buf != nil {
		req.s.writeOut(req.buf)
	}
	if req.shut {
		req.s.shutFile()
	}
	if req.done != nil {
		close(req.done)
	}
}

// getBuf returns an empty buffer of capacity size.
func (r *Recorder) getBuf(size int) []byte {
	if free := r.freeList(size); free != nil {
		select {
		case b := <-free:
			return b
		default:
		}
	}
	return make([]byte, 0, size)
}

// putBuf keeps a buffer nothing reads any more (written, or stored) for
// the next getBuf, while its free list has room; the garbage collector
// takes the others.
func (r *Recorder) putBuf(b []byte) {
	if free := r.freeList(cap(b)); free != nil {
		select {
		case free <- b[:0]:
		default:
		}
	}
}

// freeList is the free list of buffers of capacity size, nil for sizes
// between the first and the largest, which no list keeps.
func (r *Recorder) freeList(size int) chan []byte {
	switch size {
	case bufSize:
		return r.free
	case minBufSize:
		return r.freeSmall
	}
	return nil
}

func (r *Recorder) flushLoop() {
	defer r.stopped.Done()
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.checkSpace()
			if err := r.flushAll(context.Background()); err != nil {
				r.logger.Error().Err(err).Msg("flush recordings")
			}
		}
	}
}

// heldVerdicts is one session's verdicts that a flush could not store,
// and how many flushes have failed to.
type heldVerdicts struct {
	ds    []store.Decision
	tries int
}

// heldTries is how many flushes try a session's verdicts before they are
// given up: about a minute at the default interval, for a fleet store that
// is restarting or out of reach. They stay in the session's recording.
const heldTries = 60

// heldMax bounds the verdicts held for the next flushes: a busy proxy's
// minute of them would be far more. Beyond it, a failed flush's verdicts
// are given up at once (the oldest held are kept: their flushes come
// first).
const heldMax = 1 << 16

// flushAll hands every open recording's buffer to the writer and stores
// the verdicts since the last flush, with those earlier flushes could not
// store: a store that fails for a while must not leave holes in the
// decisions index (interlock sessions, the approvals' history).
func (r *Recorder) flushAll(ctx context.Context) error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	sessions := make([]*Session, 0, len(r.active))
	for _, s := range r.active {
		sessions = append(sessions, s)
	}
	r.mu.Unlock()
	batches := make([][]store.Decision, 0, len(sessions))
	flushed := make([]*Session, 0, len(sessions))
	for _, s := range sessions {
		if ds := s.flush(); len(ds) > 0 {
			batches = append(batches, ds)
			flushed = append(flushed, s)
		}
	}
	held := r.held
	r.held = nil
	all := batches
	if len(held) > 0 {
		all = make([][]store.Decision, 0, len(held)+len(batches))
		for _, h := range held {
			all = append(all, h.ds)
		}
		all = append(all, batches...)
	}
	err := r.st.AddDecisions(ctx, all...)
	var failed *store.DecisionsError
	if errors.As(err, &failed) {
		var dropped, kept int
		for _, i := range failed.Unstored {
			h := heldVerdicts{ds: all[i], tries: 1}
			if i < len(held) {
				h.tries = held[i].tries + 1
			}
			if h.tries >= heldTries || kept+len(h.ds) > heldMax {
				dropped += len(h.ds)
				continue
			}
			if i >= len(held) {
				// The session takes its array back below.
				h.ds = slices.Clone(h.ds)
			}
			kept += len(h.ds)
			r.held = append(r.held, h)
		}
		if dropped > 0 {
			err = fmt.Errorf("%w; %d verdicts given up, held for %d flushes or beyond %d held (they stay in their recordings)",
				err, dropped, heldTries, heldMax)
		}
	}
	for i, s := range flushed {
		s.reuse(batches[i])
	}
	return err
}

// Session is one open recording. Message and Decide are safe to call from
// the proxy's two copy loops at once.
type Session struct {
	r *Recorder
	// id and start are all a session keeps of its description (the
	// row Start stores): it lasts as long as its connection, idle or
	// not.
	id    string
	start time.Time

	mu sync.Mutex
	// buf holds frames not yet handed to the writer. It is taken from the
	// free list when a frame arrives and handed over whole at each flush,
	// so an idle session holds no buffer: at 64 KiB each, they were most
	// of an idle session's memory.
	buf      []byte
	bufCap   int // the capacity of the next buffer buf takes
	scratch  [32]byte
	vbuf     []byte // verdict encoding, reused
	seq      int64
	decided  int64 // verdicts so far: the next store.Decision.Index
	bytesIn  int64
	bytesOut int64
	pending  []store.Decision
	// spare is the array of verdicts the last flush stored, for pending
	// to fill next: a busy session's pending grew by doubling from nothing
	// every flush interval, copying its verdicts a dozen times over.
	spare []store.Decision
	// flushed is how many verdicts the last flush handed out: while their
	// array is being stored, pending starts at that size.
	flushed  int
	finished bool

	// filed says frames were handed to the writer, which creates the file
	// with the first of them; until then the recording is all in buf.
	filed bool
	// spoke says frames were handed to the writer since the last flush;
	// shut that the writer was told to close the file, which it opens
	// again for the next frames.
	spoke, shut bool

	// Owned by the writer goroutine (and by Finish after a barrier).
	// created says the file exists; f is nil while it is shut.
	f       *os.File
	created bool
	sum     hash.Hash
	size    int64
	werr    error
	// lost is Start's: told the first write error.
	lost func(error)
}

// Start creates the open session row for meta (whose ID is assigned when
// empty; Host defaults to the recorder's host and Started to now) and
// returns the open recording. Its file is created with its first flush.
//
// With lost nil, Start returns once the row is stored. Otherwise it returns
// once the row is queued (see store.BeginSession), so the session goes on
// meanwhile, and lost is called if the store refuses the row, or once if
// the recording's file cannot be created or written (a full disk, no
// descriptor left): the caller must end the session then, which would
// otherwise go on unrecorded. After a refused row Starts wait for their
// rows, and so refuse sessions, until the store takes one again.
func (r *Recorder) Start(ctx context.Context, meta store.Session, lost func(error)) (*Session, error) {
	if e := r.short.Load(); e != nil {
		return nil, e
	}
	if meta.ID == "" {
		meta.ID = store.NewID()
	}
	if meta.Host == "" {
		meta.Host = r.host
	}
	if meta.Started.IsZero() {
		meta.Started = time.Now().UTC()
	}
	meta.Recording = r.path(meta.ID)
	var err error
	if lost == nil || r.refusing.Load() {
		if err = r.st.CreateSession(ctx, &meta); err == nil {
			r.refusing.Store(false)
		}
	} else {
		err = r.st.BeginSession(ctx, &meta, func(err error) {
			r.refusing.Store(true)
			lost(err)
		})
	}
	if err != nil {
		return nil, err
	}
	s := &Session{r: r, id: meta.ID, start: meta.Started, sum: sha256.New(), bufCap: minBufSize, lost: lost}
	hdr, _ := json.Marshal(Header{Version: 1, Session: meta.ID, Host: meta.Host, Protocol: meta.Protocol,
		Client: meta.ClientAddr, Upstream: meta.UpstreamAddr, Started: meta.Started.UnixNano()})
	s.put(append([]byte(magic), binary.AppendUvarint(nil, uint64(len(hdr)))...))
	s.put(hdr)
	r.mu.Lock()
	r.active[meta.ID] = s
	r.mu.Unlock()
	return s, nil
}

// ID returns the session's ID.
func (s *Session) ID() string { return s.id }

// path is where the recording of session id is written.
func (r *Recorder) path(id string) string { return filepath.Join(r.dir, id+".ilrec") }

// Message records one protocol message and returns its seq (the number to
// pass to Decide), or -1 after Finish. fromClient tells the direction; typ
// is the protocol's message type byte (PostgreSQL: the tag; 0 for the
// untyped startup-phase messages, whose body then starts at the protocol
// code, and, from the server, for raw bytes such as the one-byte SSL answer);
// body is the message without type and length, and is copied before
// Message returns. t is when the message crossed the proxy (zero: now).
//
// Message does no I/O: it copies into the session's buffer (4 to 64 KiB,
// growing with its traffic), and a full buffer goes to the recorder's
// writer goroutine (Message waits only if 256 buffers are already
// queued). A write error is kept and returned by Finish.
func (s *Session) Message(fromClient bool, typ byte, body []byte, t time.Time) int64 {
	if t.IsZero() {
		t = time.Now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return -1
	}
	kind := byte(kindServer)
	if fromClient {
		kind = kindClient
		s.bytesIn += int64(len(body)) + 5
	} else {
		s.bytesOut += int64(len(body)) + 5
	}
	h := append(s.scratch[:0], kind, typ)
	h = binary.AppendVarint(h, int64(t.Sub(s.start)))
	h = binary.AppendUvarint(h, uint64(len(body)))
	s.put(h)
	s.put(body)
	seq := s.seq
	s.seq++
	return seq
}

// Decide records the verdict on request seq (a value Message returned). The
// verdict goes into the file now and into the store's decisions table with
// the next flush. (The audit trail's Decision events are the session
// pipeline's: it records them as it decides.)
func (s *Session) Decide(seq int64, v Verdict, t time.Time) {
	if t.IsZero() {
		t = time.Now()
	}
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return
	}
	s.vbuf = appendVerdict(s.vbuf[:0], seq, int64(t.Sub(s.start)), v)
	s.put(s.vbuf)
	if s.pending == nil {
		s.pending, s.spare = s.spare, nil
		if s.pending == nil && s.flushed > 0 {
			s.pending = make([]store.Decision, 0, s.flushed)
		}
	}
	s.pending = append(s.pending, store.Decision{SessionID: s.id, Index: s.decided, Seq: seq, Time: t.UTC(), Action: v.Action,
		Rule: v.Rule, Reason: v.Reason, Enforced: v.Enforced, Statement: v.Statement, Op: v.Op, ApprovalID: v.ApprovalID})
	s.decided++
	s.mu.Unlock()
}

// put copies p into the session buffer, handing full buffers to the writer
// and taking a buffer when it has none, twice the size of one it filled.
// The caller holds s.mu.
func (s *Session) put(p []byte) {
	for len(p) > 0 {
		if len(s.buf) == cap(s.buf) {
			if cap(s.buf) > 0 {
				s.bufCap = min(2*cap(s.buf), bufSize)
			}
			s.handoff()
			s.buf = s.r.getBuf(s.bufCap)
		}
		n := copy(s.buf[len(s.buf):cap(s.buf)], p)
		s.buf = s.buf[:len(s.buf)+n]
		p = p[n:]
	}
}

// handoff queues the buffered frames for writing. The caller holds s.mu,
// which keeps this session's buffers in order on the queue.
func (s *Session) handoff() {
	if len(s.buf) == 0 {
		return
	}
	s.r.send(writeReq{s: s, buf: s.buf})
	s.buf = nil
	s.filed, s.spoke, s.shut = true, true, false
}

// writeOut writes b to the file, which its first call creates, and to the
// running hash, so sealing never rereads the file. Only the writer
// goroutine calls it (and the recorder after Close).
func (s *Session) writeOut(b []byte) {
	if s.werr != nil {
		return
	}
	if e := s.r.short.Load(); e != nil {
		s.writeFailed(e)
		return
	}
	if s.f == nil {
		// Created by the first frames; opened again, to append, after an
		// idle interval shut it. One gone meanwhile is not created anew:
		// its first frames would be lost from it.
		flags, what := os.O_CREATE|os.O_EXCL|os.O_WRONLY, "create"
		if s.created {
			flags, what = os.O_WRONLY|os.O_APPEND, "open"
		}
		f, err := os.OpenFile(s.r.path(s.id), flags, 0o600)
		if err != nil {
			s.writeFailed(fmt.Errorf("%s recording: %w", what, err))
			return
		}
		s.f, s.created = f, true
	}
	n, err := s.f.Write(b)
	s.sum.Write(b[:n])
	s.size += int64(n)
	if err != nil {
		s.writeFailed(err)
	}
}

// shutFile closes the file of a session that was idle for a flush
// interval, so that an idle session holds no descriptor besides its
// sockets (each held its recording's too: a third); writeOut opens it
// again. Only the writer goroutine calls it.
func (s *Session) shutFile() {
	if s.f == nil {
		return
	}
	err := s.f.Close()
	s.f = nil
	if err != nil && s.werr == nil {
		s.writeFailed(fmt.Errorf("close recording: %w", err))
	}
}

// seal syncs and closes the file at the session's end. A file shut while
// its session idled is opened for the sync, which reaches what the earlier
// descriptor wrote. Finish calls it after a barrier with the writer.
func (s *Session) seal() error {
	f := s.f
	s.f = nil
	if f == nil {
		if !s.created {
			return nil // never created: writeOut's error says why
		}
		var err error
		if f, err = os.OpenFile(s.r.path(s.id), os.O_WRONLY, 0); err != nil {
			return fmt.Errorf("open recording to sync it: %w", err)
		}
	}
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFailed keeps err, the session's first write error, for Finish and
// tells the session's owner, which ends it.
func (s *Session) writeFailed(err error) {
	s.werr = err
	if s.lost != nil {
		s.lost(err)
	}
}

// flush queues buffered frames for writing and hands back the verdicts
// waiting for the store.
func (s *Session) flush() []store.Decision {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.finished {
		return nil
	}
	s.handoff()
	if !s.spoke && s.filed && !s.shut {
		s.r.send(writeReq{s: s, shut: true})
		s.shut = true
	}
	s.spoke = false
	ds := s.pending
	s.pending = nil
	s.flushed = len(ds)
	if len(ds) == 0 {
		s.spare = nil // idle for a whole interval: it holds no array
	}
	return ds
}

// reuse takes back ds, the verdicts flush handed out, once they are
// stored, as the array the next ones fill.
func (s *Session) reuse(ds []store.Decision) {
	clear(ds) // drop the statements it holds
	s.mu.Lock()
	if !s.finished && s.spare == nil {
		s.spare = ds[:0]
	}
	s.mu.Unlock()
}

// End is what the proxy knows when a session closes.
type End struct {
	Outcome string // "closed", "client error", "protocol violation", ...
	// BytesIn and BytesOut, when non-zero, replace the recorder's own count
	// (message bodies plus 5 bytes of framing each).
	BytesIn, BytesOut int64
	Time              time.Time // zero: now
}

// Finish seals the recording: it flushes and fsyncs the file (a recording
// never flushed goes into the store with the session row), writes the verdicts,
// ends the session row with the recording's SHA-256 and size, and posts
// RecordingSealed to the audit log. It returns what it stored in the row:
// the session's ID, recording, times, counts, outcome, hash and size (the
// rest of the row is Start's meta, which the session does not keep).
// Message and Decide after Finish are ignored.
func (s *Session) Finish(ctx context.Context, e End) (store.Session, error) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	s.mu.Lock()
	if s.finished {
		s.mu.Unlock()
		return store.Session{ID: s.id}, fmt.Errorf("finish session %s: already finished", s.id)
	}
	s.finished = true
	// From active to ending under s.mu, before the verdicts leave
	// s.pending: a Flush that finds none here waits for this session's end
	// instead.
	ended := make(chan struct{})
	s.r.mu.Lock()
	delete(s.r.active, s.id)
	s.r.ending[s.id] = ended
	s.r.mu.Unlock()
	defer func() {
		s.r.mu.Lock()
		delete(s.r.ending, s.id)
		s.r.mu.Unlock()
		close(ended)
	}()
	var (
		inline []byte // the whole recording, when it has no file
		err    error
	)
	if s.filed {
		s.handoff()
		done := make(chan struct{})
		s.r.send(writeReq{done: done})
		s.mu.Unlock()
		<-done // everything this session queued is written
		s.mu.Lock()
		err = s.werr
		if serr := s.seal(); err == nil {
			err = serr
		}
	} else {
		inline, s.buf = s.buf, nil
		s.sum.Write(inline)
		s.size = int64(len(inline))
	}
	sum := hex.EncodeToString(s.sum.Sum(nil))
	ds := s.pending
	s.pending, s.spare = nil, nil
	in, out, msgs, size := s.bytesIn, s.bytesOut, s.seq, s.size
	s.mu.Unlock()

	if e.BytesIn != 0 || e.BytesOut != 0 {
		in, out = e.BytesIn, e.BytesOut
	}
	if err != nil {
		err = fmt.Errorf("write recording %s: %w", s.id, err)
	}
	end := store.SessionEnd{Ended: e.Time.UTC(), BytesIn: in, BytesOut: out, Messages: msgs, Outcome: e.Outcome,
		RecordingSHA256: sum, RecordingSize: size}
	// A recording never flushed, and the verdicts not yet stored, are
	// stored with the row that seals them.
	end.Recording, end.Decisions = inline, ds
	if eerr := s.r.st.EndSessionShared(ctx, s.id, end); eerr != nil {
		if len(ds) > 0 {
			// The verdicts may be what the store refused; they are in the
			// recording too, which must still be sealed.
			end.Decisions = nil
			if s.r.st.EndSessionShared(ctx, s.id, end) == nil {
				eerr = fmt.Errorf("store the verdicts of %s: %w", s.id, eerr)
			}
		}
		err = errors.Join(err, eerr)
	}
	// A store write abandoned on ctx may still read the recording.
	if inline != nil && ctx.Err() == nil {
		s.r.putBuf(inline)
	}
	if s.r.upload && inline == nil && err == nil {
		if f, oerr := os.Open(s.r.path(s.id)); oerr != nil {
			err = fmt.Errorf("upload recording %s: %w", s.id, oerr)
		} else {
			err = s.r.st.PutRecording(ctx, s.id, f)
			f.Close()
		}
	}
	m := store.Session{ID: s.id, Recording: s.r.path(s.id), Started: s.start, Ended: end.Ended,
		BytesIn: in, BytesOut: out, Messages: msgs, Outcome: e.Outcome, RecordingSHA256: sum, RecordingSize: size}
	if a := s.r.audit; a != nil {
		a.Record(audit.RecordingSealed{Session: m.ID, SHA256: sum, Size: size, Messages: msgs})
	}
	return m, err
}

// SealAbandoned seals recordings of this host's sessions that a crashed or
// killed daemon left open: it hashes each file as it is, ends the session
// with outcome "abandoned", uploads the file when uploading is on, and posts
// RecordingSealed. Call it once at start,
// before accepting connections. It returns how many it sealed.
func (r *Recorder) SealAbandoned(ctx context.Context) (int, error) {
	open, err := r.st.ListSessions(ctx, store.SessionFilter{Host: r.host, OpenOnly: true, Limit: 100000})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ss := range open {
		r.mu.Lock()
		_, live := r.active[ss.ID]
		if _, ending := r.ending[ss.ID]; ending {
			live = true
		}
		r.mu.Unlock()
		if live {
			continue
		}
		sum, size, msgs, err := hashFile(ss.Recording)
		switch {
		case errors.Is(err, os.ErrNotExist):
			// It ended with the daemon before its first flush.
			r.logger.Warn().Str("session", ss.ID).Msg("abandoned session has no recording: the daemon stopped before its first flush")
		case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
			r.logger.Warn().Err(err).Str("session", ss.ID).Msg("abandoned recording unreadable")
		}
		if err := r.st.EndSession(ctx, ss.ID, store.SessionEnd{Ended: time.Now().UTC(), Outcome: "abandoned",
			Messages: msgs, RecordingSHA256: sum, RecordingSize: size}); err != nil {
			return n, err
		}
		if r.upload && sum != "" {
			if f, err := os.Open(ss.Recording); err == nil {
				err = r.st.PutRecording(ctx, ss.ID, f)
				f.Close()
				if err != nil {
					return n, err
				}
			}
		}
		if r.audit != nil {
			r.audit.Record(audit.RecordingSealed{Session: ss.ID, SHA256: sum, Size: size, Messages: msgs})
		}
		n++
	}
	return n, nil
}

// hashFile returns the SHA-256 and size of a recording and how many whole
// messages it holds.
func hashFile(path string) (string, int64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, 0, fmt.Errorf("open recording: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return "", 0, 0, fmt.Errorf("hash recording: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return sum, size, 0, err
	}
	rd, err := NewReader(f)
	if err != nil {
		return sum, size, 0, err
	}
	var msgs int64
	for {
		fr, err := rd.Next()
		if err == io.EOF {
			return sum, size, msgs, nil
		}
		if err != nil {
			return sum, size, msgs, err
		}
		if !fr.IsVerdict {
			msgs++
		}
	}
}

// Open opens session ss's recording: the file in the state directory when
// this host has it, otherwise the copy in the store (fleet mode, see
// WithUpload).
func Open(ctx context.Context, st *store.Store, ss store.Session) (*Reader, error) {
	src, _, err := openSource(ctx, st, ss)
	if err != nil {
		return nil, err
	}
	rd, err := NewReader(src)
	if err != nil {
		src.Close()
		return nil, err
	}
	rd.c = src
	return rd, nil
}

// OpenSession returns session id's row and its recording, opened as Open
// does.
func OpenSession(ctx context.Context, st *store.Store, id string) (store.Session, *Reader, error) {
	ss, err := st.Session(ctx, id)
	if err != nil {
		return store.Session{}, nil, err
	}
	rd, err := Open(ctx, st, ss)
	return ss, rd, err
}

// openSource returns the raw bytes of ss's recording and says where they
// come from.
func openSource(ctx context.Context, st *store.Store, ss store.Session) (io.ReadCloser, string, error) {
	f, err := os.Open(ss.Recording)
	if err == nil {
		return f, "file " + ss.Recording, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("open recording: %w", err)
	}
	r, serr := st.OpenRecording(ctx, ss.ID)
	switch {
	case serr != nil && ss.Ended.IsZero() && errors.Is(serr, store.ErrNotFound):
		return nil, "", fmt.Errorf("open recording: session %s is open and has not been flushed yet (open recordings are flushed every second)", ss.ID)
	case serr != nil:
		return nil, "", fmt.Errorf("open recording: %w (and no copy in the store: %w)", err, serr)
	}
	return io.NopCloser(r), "the store's copy", nil
}

// Verify recomputes the SHA-256 of session id's recording and compares it
// with the hash sealed in the store and, when the audit trail holds a
// RecordingSealed record for the session, with that record too, so editing
// both the file and the session row is still caught (the audit record itself
// is protected by the chain: run audit.Verify). It fails for an open session.
func Verify(ctx context.Context, st *store.Store, id string) error {
	ss, err := st.Session(ctx, id)
	if err != nil {
		return err
	}
	if ss.RecordingSHA256 == "" {
		return fmt.Errorf("verify recording %s: not sealed", id)
	}
	src, where, err := openSource(ctx, st, ss)
	if err != nil {
		return fmt.Errorf("verify recording %s: %w", id, err)
	}
	h := sha256.New()
	size, err := io.Copy(h, src)
	src.Close()
	if err != nil {
		return fmt.Errorf("verify recording %s: %w", id, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if sum != ss.RecordingSHA256 || size != ss.RecordingSize {
		return fmt.Errorf("verify recording %s: %s has sha256 %s (%d bytes), sealed %s (%d bytes)",
			id, where, sum, size, ss.RecordingSHA256, ss.RecordingSize)
	}
	return st.FindAudit(ctx, ss.Host, string(audit.KindRecordingSealed), `"session":"`+id+`"`, func(r store.AuditRecord) error {
		var seal audit.RecordingSealed
		if err := json.Unmarshal([]byte(r.Payload), &seal); err != nil {
			return fmt.Errorf("verify recording %s: decode audit record %d: %w", id, r.Seq, err)
		}
		if seal.Session == id && (seal.SHA256 != sum || seal.Size != size) {
			return fmt.Errorf("verify recording %s: file has sha256 %s (%d bytes), audit record %d sealed %s (%d bytes)",
				id, sum, size, r.Seq, seal.SHA256, seal.Size)
		}
		return nil
	})
}
