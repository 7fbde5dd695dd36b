package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// Action is what the relay does with a statement.
type Action uint8

const (
	// Forward sends the statement to the server.
	Forward Action = iota
	// Deny answers the agent with an ErrorResponse instead (SQLSTATE 42501
	// unless the Verdict gives another); the session goes on.
	Deny
	// Hold tells the agent the statement awaits approval (a NoticeResponse),
	// calls Verdict.Wait, then forwards or denies it.
	Hold
)

// Verdict is an Enforcer's answer for one statement.
type Verdict struct {
	Action Action
	// Rule names the policy rule that decided; a denial names it to the agent.
	Rule string
	// Message, when set, is added to the denial the agent sees.
	Message string
	// Code, when set, makes a denial the error the server itself would
	// have answered, e.g. 42601 for a statement that does not parse: the
	// agent sees Code, Message as the whole text and Position, as if the
	// statement had reached the server, and no mention of a rule.
	Code string
	// Position is the 1-based character offset of the error in the
	// statement (the ErrorResponse's P field), 0 for none; only with Code.
	Position int32
	// Mask, when set, rewrites the rows the statement returns.
	Mask ColumnMasker
	// ApprovalID names the pending approval of a Hold.
	ApprovalID string
	// Wait blocks until the approval is decided or ctx (Relay's) ends and
	// reports the outcome; a reason accompanies a refusal. It blocks only
	// this session's agent-to-server direction; results still flow back.
	// The relay does not read the agent meanwhile, so an agent that goes
	// away is noticed when Wait returns: give approvals a timeout. A nil
	// Wait refuses.
	Wait func(ctx context.Context) (approved bool, reason string)
}

// Enforcer decides about statements. The relay calls it from the goroutine
// that reads the agent, in order, before the statement goes upstream; it
// blocks that direction of this session only.
type Enforcer interface {
	// Query is called with the SQL text of a Query message (possibly several
	// statements; one verdict covers the whole message), of a Parse, and of
	// the prepared statement each later Bind executes again (the first Bind
	// after a Parse reuses the Parse's verdict).
	Query(ctx context.Context, sql string) Verdict
}

// EnforcerFunc adapts a function to Enforcer.
type EnforcerFunc func(ctx context.Context, sql string) Verdict

// Query calls f.
func (f EnforcerFunc) Query(ctx context.Context, sql string) Verdict { return f(ctx, sql) }

// Column describes one column of a result set, from its RowDescription.
type Column struct {
	Name         string
	TableOID     uint32
	TableAttr    uint16
	TypeOID      uint32
	TypeSize     int16
	TypeModifier int32
	// Format is 0 for text, 1 for binary.
	Format int16
}

// ColumnMasker decides how to rewrite the rows of one statement's results.
// It is called from the goroutine that reads the server.
type ColumnMasker interface {
	// Plan is called once per result set with its columns; it returns nil
	// when nothing in this result set is to be masked. cols is only valid
	// during the call.
	Plan(cols []Column) RowMasker
}

// RowMasker rewrites field values of one result set.
type RowMasker interface {
	// MaskValue returns the value the agent sees instead of v for column col
	// (v is nil for SQL NULL; returning nil sends NULL). It may return v
	// itself. The result must be valid in the column's format (text or
	// binary, see Column.Format); the relay fixes up lengths. v is only valid
	// during the call, and so is a returned slice the masker reuses.
	MaskValue(col int, v []byte) []byte
}

// Message is one protocol message as it passed through the relay.
type Message struct {
	// FromClient is true for agent to server.
	FromClient bool
	// Type is the message type byte.
	Type byte
	// Body is the message body without type and length. For client
	// messages it is what the agent sent; for server messages it is what the
	// agent received (masked rows, the relay's own errors). A message too
	// large for the relay's buffer is streamed, and Body holds only its
	// first part.
	Body []byte
	// Size is the full body length.
	Size int
	// Time is when the relay handled the message.
	Time time.Time
}

// Recorder sees every message. It is called from both relay goroutines
// concurrently and must not retain m or m.Body after returning.
type Recorder interface {
	Record(m *Message)
}

// RelayConfig configures Relay.
type RelayConfig struct {
	// Enforcer decides about every statement; required.
	Enforcer Enforcer
	// Recorder, when set, sees every message both ways.
	Recorder Recorder
	// MaxMessageSize caps a message body, in bytes, both ways; a larger
	// message ends the session (from the agent, as a protocol violation).
	// Messages the relay inspects whole (Query, Parse, RowDescription,
	// ErrorResponse, masked DataRows) are buffered up to this size; others,
	// and large Binds after their names, are streamed. Default 64 MiB.
	MaxMessageSize int
	// AllowFunctionCall lets FunctionCall messages through. They bypass SQL
	// policy (they call a function by OID), so by default they are denied.
	AllowFunctionCall bool
	// MaxBuffered caps, in bytes, a message the relay has to read whole
	// (see MaxMessageSize), both ways: a larger one ends the session with
	// SQLSTATE 54000 before anything is allocated for it. Streamed messages
	// are not affected. Default MaxMessageSize; at least 16 KiB, the
	// relay's standard buffer.
	MaxBuffered int
	// Budget, when set, is reserved from before a buffer grows beyond the
	// relay's standard 16 KiB and released when it shrinks back or the
	// session ends; shared by sessions, it bounds their memory together. A
	// refused reservation ends the session with SQLSTATE 53200.
	Budget Budget
	// MessageTimeout bounds how long the agent may take to send the rest of
	// a message once its first bytes arrived; past it the session ends with
	// SQLSTATE 08P01. Waiting between messages is not bounded. 0: no limit.
	MessageTimeout time.Duration
	// IdleAfter is how long the agent may stay silent between messages
	// before, when its connection is a protocol.Watcher, the wait for its
	// next one is handed over and the client side's goroutine ends (an
	// idle session then holds one goroutine, not two; none with
	// Detached). 0: never.
	IdleAfter time.Duration
	// Keep, when set, is given the upstream connection, instead of its
	// being closed, when the agent ended the session (Terminate, or its
	// connection closed between messages) while the server owed no answer
	// and had no transaction open. The server was not sent the Terminate;
	// it is called before Relay returns, and owns the connection.
	Keep func(upstream net.Conn)
	// Parking, with Keep, is called as soon as the agent ended the session
	// cleanly, before the server side has stopped: Keep may follow.
	Parking func()
	// Detached, when set with IdleAfter and both connections
	// protocol.Watchers, lets Relay return protocol.ErrDetached once the
	// client side is suspended and the server side waits between
	// messages too: its wait goes to the watcher as well, and the
	// session holds no goroutine until either side has input. Relay
	// then calls Detached once, on a goroutine of its own, with what it
	// would have returned (after Keep).
	Detached func(error)
}

const (
	defaultMaxMessage = 64 << 20
	bufSize           = 16 << 10
	flushAt           = 32 << 10
	// maxPooledOut is the largest output buffer kept for other sessions;
	// one grown past it for a large result is let go.
	maxPooledOut = 2 * flushAt
	// deniedSQL replaces a denied statement upstream: the server fails it
	// with a syntax error at the same point of the protocol the statement
	// would have been, so it does everything a server does on an error
	// (rolls back the implicit transaction, marks a transaction block
	// failed, skips the extended-protocol messages until Sync) and the
	// relay only swaps the error the agent sees for its own.
	deniedSQL = "interlock_statement_denied_by_policy"
)

// Relay copies one session between agent and upstream until either side
// ends it, asking cfg.Enforcer about every statement. It takes ownership of
// both connections and closes them when it returns. It returns nil when the
// agent terminated or either side closed the connection, a *ProtocolError
// when the agent broke the protocol (the agent is told first, with SQLSTATE
// 08P01), a *LimitError when the session went over one of cfg's limits
// (the agent is told too), ErrMaskedCopy, and other errors for I/O or
// server failures.
//
// Relay runs one goroutine per direction and waits for both; while the
// agent is silent past cfg.IdleAfter and its connection is a
// protocol.Watcher, the client side has none (see suspend), and with
// cfg.Detached the server side then has none either once it waits
// between messages (suspendServer): Relay returns protocol.ErrDetached
// and reports the end through cfg.Detached. Each reads
// into a reused buffer, forwards the raw bytes of messages it does not
// change, and writes once its input is drained, not once per message. Every read and
// write is a system call on the session's critical path: interlockd passes
// sockets wrapped by agent/rawsock, which halves the thread switches
// per round trip.
func Relay(ctx context.Context, agent, upstream net.Conn, cfg RelayConfig) error {
	if cfg.Enforcer == nil {
		agent.Close()
		upstream.Close()
		return errors.New("relay: no enforcer")
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = defaultMaxMessage
	}
	if cfg.MaxBuffered <= 0 || cfg.MaxBuffered > cfg.MaxMessageSize {
		cfg.MaxBuffered = cfg.MaxMessageSize
	}
	cfg.MaxBuffered = max(cfg.MaxBuffered, bufSize)
	r := &relay{cfg: cfg, ctx: ctx, agent: agent, upstream: upstream,
		serverDone: make(chan struct{}), clientDone: make(chan error, 1)}
	if w, ok := agent.(protocol.Watcher); ok && cfg.IdleAfter > 0 {
		r.watcher = w
		if uw, ok := upstream.(protocol.Watcher); ok && cfg.Detached != nil {
			r.upWatcher = uw
		}
	}
	r.readAhead(true)
	r.q.room.L = &r.q.mu
	r.stop = context.AfterFunc(ctx, r.shutdown)
	// The server side runs on this goroutine, which already has the stack
	// the login grew, and the client side on one more: a goroutine less per
	// session, idle sessions included. Whichever side ends first ends the
	// session.
	r.client = r.newClientSide()
	r.server = r.newServerSide()
	go r.runClient(r.client)
	err := r.containedServerLoop(r.server)
	if err == errSuspended {
		return protocol.ErrDetached
	}
	return r.end(err)
}

// end ends the session once the server side has, with serverErr, and
// returns Relay's result.
func (r *relay) end(serverErr error) error {
	r.serverEnded()
	close(r.serverDone)
	if r.ended.CompareAndSwap(0, serverFirst) {
		r.shutdown()
	}
	r.idle.Lock()
	gone := r.clientGone
	r.idle.Unlock()
	var clientErr error
	if gone {
		// The client side was waiting on the watcher, which shutdown
		// stopped: no goroutine of it is left to report, and it holds
		// nothing but its framer's budget.
		r.client.f.close()
	} else {
		clientErr = <-r.clientDone
	}
	first := clientErr
	if r.ended.Load() == serverFirst {
		first = serverErr
	}
	// Hold notices may still be on their way; their sockets are closed.
	r.bg.Wait()
	r.readAhead(false)
	if r.parking.Load() {
		r.park()
	}
	r.stop()
	if r.ctx.Err() != nil {
		return r.ctx.Err()
	}
	return first
}

// park ends a session the agent ended cleanly with cfg.Keep set: the
// upstream goes to Keep if the server side stopped idle and shutdown (the
// context) has not closed it meanwhile; otherwise both are closed.
func (r *relay) park() {
	kept := false
	if r.serverIdle {
		r.closeOnce.Do(func() { kept = true })
	}
	switch {
	case kept && r.upstream.SetReadDeadline(time.Time{}) == nil:
		r.cfg.Keep(r.upstream)
	case kept:
		r.upstream.Close()
	default:
		r.shutdown()
	}
}

// Which side of a session ended it (relay.ended).
const serverFirst, clientFirst = 1, 2

// shutdown closes both connections, once; a client side waiting on the
// watcher is stopped first, while its socket is still open.
func (r *relay) shutdown() {
	r.closeOnce.Do(func() {
		r.idle.Lock()
		r.closing = true
		if r.suspended && r.watcher.Unwatch() {
			r.clientGone = true
		}
		r.wakeServer()
		r.idle.Unlock()
		r.agent.Close()
		r.upstream.Close()
	})
}

// wakeServer gives a suspended server side a goroutine again, with r.idle
// held, before its socket is closed or given a deadline: its read then
// fails as a waiting one's would. When the watcher has already taken the
// event, the server side is resuming anyway.
func (r *relay) wakeServer() {
	if r.serverSuspended && r.upWatcher.Unwatch() {
		r.serverSuspended = false
		go r.resumeServer()
	}
}

// runClient runs the client side until it ends or is suspended (see
// suspend); resume runs it again.
func (r *relay) runClient(c *clientSide) {
	err := r.containedClientLoop(c)
	if err == errSuspended {
		return
	}
	c.f.close()
	if r.ended.CompareAndSwap(0, clientFirst) {
		r.clientEnded(err)
	}
	r.clientDone <- err
}

// containedClientLoop and containedServerLoop run a side's loop. A panic
// in it (a defect reached by the bytes it reads) ends that side with the
// defect, as a failed read would (protocol.Contained): the session ends,
// not interlockd.
func (r *relay) containedClientLoop(c *clientSide) (err error) {
	defer protocol.Recover("postgres client side", &err)
	return r.clientLoop(c)
}

func (r *relay) containedServerLoop(s *serverSide) (err error) {
	defer protocol.Recover("postgres server side", &err)
	return r.serverLoop(s)
}

// errSuspended ends a client or server goroutine whose wait the watcher
// took over.
var errSuspended = errors.New("client side suspended")

// suspend hands the wait for the agent's next message to the watcher, and
// reports whether it did: the client goroutine then ends, and resume runs
// the client side on a new one once the agent sends, closes or fails.
func (r *relay) suspend(c *clientSide) bool {
	c.f.clearDeadline()
	r.idle.Lock()
	defer r.idle.Unlock()
	if r.closing {
		return false
	}
	if !r.watcher.Watch(func() { r.resume(c) }) {
		// Not this socket (or not now): wait as a goroutine from now on.
		c.f.idleAfter = 0
		r.readAhead(false)
		return false
	}
	r.suspended = true
	r.clientIdle.Store(true)
	if r.upWatcher != nil && !r.serverSuspended {
		// A server side waiting for the server's next message learns
		// that it may hand its wait over too (serverLoop).
		r.upstream.SetReadDeadline(time.Now())
	}
	return true
}

// readAhead allows the sockets' reads to go to a waiter (on), which saves
// the read that finds nothing after each message, where the relay bounds
// every wait itself, and stops them otherwise (protocol.AheadReader). A
// waiter can miss an end its peer signalled with its last bytes: a silent
// agent's wait goes to the watcher after IdleAfter, whose registration
// reports such an end, and the server's side is stopped then too
// (suspend) or fails the next statement's write; without the watchers
// nothing would end it. A server connection kept for the next session
// leaves with it stopped (end): that session's login reads it first.
func (r *relay) readAhead(on bool) {
	if a, ok := r.agent.(protocol.AheadReader); ok {
		a.ReadAhead(on && r.watcher != nil)
	}
	if a, ok := r.upstream.(protocol.AheadReader); ok {
		a.ReadAhead(on && r.upWatcher != nil)
	}
}

// suspendServer hands the server side's wait to the watcher when the
// client side is suspended and the session is not ending, and reports
// whether it did: the server side's goroutine then ends, and resumeServer
// runs it on a new one once the server sends, closes or fails. s is
// between messages with nothing unread.
func (r *relay) suspendServer(s *serverSide) bool {
	r.idle.Lock()
	defer r.idle.Unlock()
	if !r.suspended || r.closing || r.parking.Load() {
		return false
	}
	// An idle session holds no buffer; the resumed side takes them again
	// as it reads.
	s.f.putOut()
	s.f.in.close()
	s.f.in.r, s.f.in.w = 0, 0
	r.q.release()
	// A deadline a poke left (suspend) would fail the first read.
	r.upstream.SetReadDeadline(time.Time{})
	if !r.upWatcher.Watch(r.resumeServer) {
		return false
	}
	r.serverSuspended = true
	return true
}

// resumeServer continues a suspended server side, on a goroutine of its
// own, and ends the session (RelayConfig.Detached) when it does.
func (r *relay) resumeServer() {
	r.idle.Lock()
	r.serverSuspended = false
	r.idle.Unlock()
	err := r.containedServerLoop(r.server)
	if err == errSuspended {
		return
	}
	r.cfg.Detached(r.containedEnd(err))
}

// containedEnd is end on a resumed server side's goroutine, which no
// caller of Relay's contains: a panic in it closes both connections (the
// upstream too when park had taken it to keep) and is the session's
// result.
func (r *relay) containedEnd(serverErr error) (err error) {
	defer func() {
		if ie := protocol.Contained("postgres relay's end", recover()); ie != nil {
			r.shutdown()
			r.agent.Close()
			r.upstream.Close()
			err = ie
		}
	}()
	return r.end(serverErr)
}

// resume continues a suspended client side, on the watcher's goroutine.
func (r *relay) resume(c *clientSide) {
	r.idle.Lock()
	r.suspended = false
	r.clientIdle.Store(false)
	r.idle.Unlock()
	r.runClient(c)
}

// clientEnded ends a session whose agent side ended first, with err, while
// the server side may still run.
func (r *relay) clientEnded(err error) {
	if err == nil && r.cfg.Keep != nil {
		// A clean end: the server side stops at its next read, with the
		// upstream open, and Relay keeps it if it stopped between answers
		// (serverIdle). Closing the agent ends a server side still
		// writing to it, which then is not idle.
		r.parking.Store(true)
		if r.cfg.Parking != nil {
			r.cfg.Parking()
		}
		r.agent.Close()
		r.idle.Lock()
		r.wakeServer()
		r.idle.Unlock()
		r.upstream.SetReadDeadline(time.Now())
		return
	}
	var pe agentError
	if !errors.As(err, &pe) {
		r.shutdown()
		return
	}
	// End the server side first, so the agent's connection has a single
	// writer again, then tell the agent why.
	r.idle.Lock()
	r.wakeServer()
	r.idle.Unlock()
	r.upstream.Write([]byte{'X', 0, 0, 0, 4})
	r.upstream.Close()
	select {
	case <-r.serverDone:
		if b, err := pe.Response().Encode(nil); err == nil {
			r.agentMu.Lock()
			r.agent.Write(b)
			r.agentMu.Unlock()
		}
		drainAgent(r.agent)
		r.shutdown()
	case <-time.After(time.Second):
		// The server side is stuck writing to an agent that does not read.
		r.shutdown()
	}
}

// drainAgent reads and discards what the agent is still sending, for a
// moment, before its connection is closed. An agent refused in the middle
// of a large message is usually still writing it: closing with its bytes
// unread would reset the connection, and its client would report "connection
// reset" instead of the error it was just sent.
func drainAgent(agent net.Conn) {
	const lingerFor, lingerBytes = time.Second, 64 << 20
	if agent.SetReadDeadline(time.Now().Add(lingerFor)) != nil {
		return
	}
	buf := make([]byte, 32<<10)
	for total := 0; total < lingerBytes; {
		n, err := agent.Read(buf)
		total += n
		if err != nil {
			return
		}
	}
}

// agentError is an error the agent is told about before its session ends.
type agentError interface {
	error
	Response() *pgproto3.ErrorResponse
}

// ErrMaskedCopy ends a session whose masked statement turned out to copy
// rows out (COPY ... TO STDOUT): CopyData has no columns to mask, so the
// session is ended before a row reaches the agent.
var ErrMaskedCopy = errors.New("COPY out of a masked statement cannot be masked")

// entry kinds: what the server goroutine expects as answers, in order.
const (
	kQuery       = iota // Query or allowed FunctionCall: results until ReadyForQuery
	kDenyQuery          // injected failing Query: its error is replaced, then ReadyForQuery
	kDenyParse          // injected failing Parse: its error is replaced
	kDescribe           // Describe: RowDescription or NoData
	kInjDescribe        // the relay's Describe before a masked Execute: answer dropped
	kExecute            // masked Execute: rows until CommandComplete/PortalSuspended/EmptyQuery
	kSync               // Sync: ReadyForQuery
)

type entry struct {
	kind uint8
	mask ColumnMasker
	deny []byte // encoded ErrorResponse that replaces the server's
}

// queue is a FIFO ring of entries shared by the two goroutines under mu.
type queue struct {
	mu   sync.Mutex
	buf  []entry
	head int
	n    int
	// room is signalled when a queue that reached maxPending has drained
	// to half of it (waiting), or when the server side has ended (done).
	room    sync.Cond
	waiting bool
	done    bool
	// reached is set by push when the queue reaches maxPending, so the
	// agent's side checks it per message without taking mu again.
	reached atomic.Bool
}

// maxPending bounds the requests awaiting the server's answers. An agent
// that pipelines without reading them would otherwise grow the queue by an
// entry (48 bytes) per 5-byte Sync for as long as the sockets on the way
// take its input: 100 MB for one session, measured. At the bound the
// agent's side waits for answers, as a server's input does.
const maxPending = 1 << 14

// full reports whether the queue reached maxPending since the last wait.
func (q *queue) full() bool { return q.reached.Load() }

// waitRoom blocks until the queue has drained to half of maxPending or the
// server side has ended.
func (q *queue) waitRoom() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n >= maxPending/2 && !q.done {
		q.waiting = true
		q.room.Wait()
	}
	q.reached.Store(false)
}

// empty reports whether no answer is owed.
func (q *queue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n == 0
}

// close wakes a waitRoom for good: no answers will come.
func (q *queue) close() {
	q.mu.Lock()
	q.done = true
	q.room.Broadcast()
	q.mu.Unlock()
}

func (q *queue) push(e entry) {
	q.mu.Lock()
	if q.n == len(q.buf) {
		// Room for a statement's few extended-protocol messages at
		// first; pipelining agents grow it.
		nb := make([]entry, max(4, 2*len(q.buf)))
		for i := 0; i < q.n; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = e
	q.n++
	if q.n >= maxPending {
		q.reached.Store(true)
	}
	q.mu.Unlock()
}

// release lets an empty queue's ring go (the next push makes one), so
// that an idle session does not hold it.
func (q *queue) release() {
	q.mu.Lock()
	if q.n == 0 {
		q.buf, q.head = nil, 0
	}
	q.mu.Unlock()
}

// peek returns the i-th entry; the caller holds mu.
func (q *queue) peek(i int) *entry {
	if i >= q.n {
		return nil
	}
	return &q.buf[(q.head+i)%len(q.buf)]
}

// pop drops the head; the caller holds mu.
func (q *queue) pop() {
	q.buf[q.head] = entry{}
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	if q.waiting && q.n < maxPending/2 {
		q.waiting = false
		q.room.Broadcast()
	}
}

type relay struct {
	cfg             RelayConfig
	ctx             context.Context
	agent, upstream net.Conn
	closeOnce       sync.Once
	// ended is which side ended the session first (serverFirst,
	// clientFirst); serverDone is closed when the server side has, and
	// clientDone gets the client side's result.
	ended      atomic.Int32
	serverDone chan struct{}
	clientDone chan error
	// watcher, when set, takes over the wait of an agent idle for
	// cfg.IdleAfter (see suspend); idle guards the suspension's state.
	watcher protocol.Watcher
	idle    sync.Mutex
	// suspended: the client side has no goroutine, the watcher will
	// resume it; clientGone: shutdown stopped the watch before it did, so
	// the client side never will; closing: shutdown has begun.
	suspended, clientGone, closing bool
	// upWatcher, when set, takes over the server side's wait while the
	// client side is suspended (suspendServer); serverSuspended: the
	// server side has no goroutine (guarded by idle).
	upWatcher       protocol.Watcher
	serverSuspended bool
	// clientIdle is suspended, for the server side to read without the
	// lock after every message.
	clientIdle atomic.Bool
	client     *clientSide
	server     *serverSide
	stop       func() bool // the context's AfterFunc
	// agentMu serialises writes to the agent: the server goroutine's, and
	// the notices the client goroutine sends while holding a statement.
	agentMu sync.Mutex
	// parking: the agent ended cleanly and cfg.Keep wants the upstream;
	// serverIdle: the server side then stopped between answers, outside a
	// transaction, with nothing unread (set on Relay's goroutine).
	parking    atomic.Bool
	serverIdle bool
	q          queue
	bg         sync.WaitGroup // hold notices being written
}

// inBufs and outBufs hold the relays' buffers (*[]byte) while no session
// needs them: a direction with nothing unread and nothing to send gives
// both back before it waits for its peer (protocol.ReadPooled), so an idle
// session holds none. Buffers held across waits were most of an idle
// session's memory: 4 KiB for one that had sent a statement, 16 to 64 KiB
// more for one that had read results.
var (
	inBufs  = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}
	outBufs = sync.Pool{New: func() any { b := make([]byte, 0, bufSize); return &b }}
)

// reader is an input buffer over a connection: a pooled one of bufSize
// while it holds unread bytes (bp), or one grown for a larger message.
type reader struct {
	conn net.Conn
	bp   *[]byte // buf came from inBufs
	buf  []byte
	r, w int
	// budget, when set, accounts for held, the bytes buf has beyond
	// bufSize.
	budget Budget
	held   int
}

// reserve makes sure the budget covers a buffer of need bytes before fill
// allocates it.
func (rd *reader) reserve(need int) error {
	extra := need - bufSize
	if rd.budget == nil || extra <= rd.held {
		return nil
	}
	if !rd.budget.Reserve(extra - rd.held) {
		return &LimitError{Limit: LimitBudget, Code: "53200",
			Msg: fmt.Sprintf("a %d-byte message does not fit in the memory left to this identity's sessions", need-5)}
	}
	rd.held = extra
	return nil
}

// release gives back what the buffer holds of the budget.
func (rd *reader) release() {
	if rd.budget != nil && rd.held > 0 {
		rd.budget.Release(rd.held)
	}
	rd.held = 0
}

// fill reads at least one more byte, compacting or growing the buffer so
// that need bytes fit. With nothing unread, the read is a pooled one.
func (rd *reader) fill(need int) error {
	if rd.r == rd.w && need <= bufSize {
		return rd.fillPooled()
	}
	if need > len(rd.buf) {
		rd.grow(max(need, bufSize))
	} else if rd.r > 0 && rd.r+need > len(rd.buf) {
		rd.w = copy(rd.buf, rd.buf[rd.r:rd.w])
		rd.r = 0
	}
	n, err := rd.conn.Read(rd.buf[rd.w:])
	rd.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// fillPooled reads with nothing unread: into a pooled buffer, which goes
// back to the pool while the read waits. A buffer grown for a large
// message is let go.
func (rd *reader) fillPooled() error {
	if rd.bp == nil {
		rd.buf = nil
		rd.release()
	}
	rd.r, rd.w = 0, 0
	n, err := protocol.ReadPooled(rd.conn, &inBufs, &rd.bp)
	if n > 0 {
		rd.buf, rd.w = *rd.bp, n
		return nil
	}
	rd.buf = nil
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// grow moves the unread bytes into a new buffer of size bytes.
func (rd *reader) grow(size int) {
	nb := make([]byte, size)
	rd.w = copy(nb, rd.buf[rd.r:rd.w])
	rd.r = 0
	rd.buf = nb
	rd.putBuf()
}

// putBuf gives the pooled buffer back; the caller no longer reads from it.
func (rd *reader) putBuf() {
	if rd.bp != nil {
		inBufs.Put(rd.bp)
		rd.bp = nil
	}
}

// shrink gives back a buffer grown for one large message.
func (rd *reader) shrink() {
	if len(rd.buf) > 4*bufSize && rd.w-rd.r <= bufSize {
		bp := inBufs.Get().(*[]byte)
		rd.w = copy(*bp, rd.buf[rd.r:rd.w])
		rd.r = 0
		rd.bp, rd.buf = bp, *bp
		rd.release()
	}
}

// close gives back what the reader holds: its pooled buffer and its
// budget.
func (rd *reader) close() {
	rd.putBuf()
	rd.buf = nil
	rd.release()
}

// framer splits one direction's input into messages and collects what
// goes out. A message that fits the buffer, or that keepWhole asks for, is
// returned whole (keepWhole ones up to max bytes); a larger one is streamed:
// next returns its first part, which the caller forwards or marks dropped,
// and passes the rest on itself as it arrives.
type framer struct {
	in   reader
	out  []byte
	outp *[]byte // out's pooled buffer (outBufs)
	skip int     // bytes of a streamed message still to pass
	drop bool    // the streamed message is dropped, not passed
	max  int
	// maxWhole caps a message kept whole; timeout bounds the wait for the
	// rest of a begun message (0: none). deadline is set while the input
	// has a read deadline; timed while that deadline is the current
	// message's.
	maxWhole        int
	timeout         time.Duration
	deadline, timed bool
	// idleAfter, when set, bounds a wait for the next message's first
	// bytes: past it fill returns errIdle, for the caller to wait some
	// other way (relay.suspend).
	idleAfter time.Duration
	// write sends out; eof turns a read error into the loop's result (nil
	// for a clean end); from names the sender in length errors.
	write func([]byte) error
	eof   func(error) error
	from  string
}

// putOut gives the output buffer back to the pool, when it is one the
// pool may keep; the caller has nothing in it.
func (f *framer) putOut() {
	if f.outp != nil && cap(f.out) <= maxPooledOut {
		*f.outp = f.out[:0]
		outBufs.Put(f.outp)
	}
	f.out, f.outp = nil, nil
}

// close gives back the framer's buffers when its loop ends.
func (f *framer) close() {
	f.putOut()
	f.in.close()
}

func (f *framer) flush() error {
	if len(f.out) == 0 {
		return nil
	}
	err := f.write(f.out)
	f.out = f.out[:0]
	return err
}

// fill reads more input. begun says a message is partly read: with a
// timeout, the rest of it must arrive within the timeout, measured from the
// first wait for it. With idleAfter, a wait for a message's first bytes is
// bounded too (one deadline per wait between messages, a timer's reset);
// without, the common case (whole messages, waiting between them) sets
// none. Deadlines cost no system call.
func (f *framer) fill(need int, begun bool) error {
	switch {
	case begun && !f.timed && (f.timeout > 0 || f.deadline):
		// The rest of a begun message: within the timeout, or with no
		// deadline (an idle one was the wait's for its first bytes).
		if f.timeout > 0 {
			f.in.conn.SetReadDeadline(time.Now().Add(f.timeout))
			f.deadline = true
		} else {
			f.in.conn.SetReadDeadline(time.Time{})
			f.deadline = false
		}
		f.timed = true
	case !begun && f.idleAfter > 0:
		f.in.conn.SetReadDeadline(time.Now().Add(f.idleAfter))
		f.deadline, f.timed = true, false
	case !begun && f.deadline:
		f.clearDeadline()
	}
	if f.in.r == f.in.w && len(f.out) == 0 {
		f.putOut() // nothing to send while the read waits
	}
	err := f.in.fill(need)
	if f.outp == nil && f.out == nil {
		f.outp = outBufs.Get().(*[]byte)
		f.out = *f.outp
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		switch {
		case f.timed && f.timeout > 0:
			return &LimitError{Limit: LimitMessageTimeout, Code: "08P01",
				Msg: fmt.Sprintf("incomplete message: its rest did not arrive within %v", f.timeout)}
		case !begun && f.idleAfter > 0:
			f.putOut()
			return errIdle
		}
	}
	if err = f.eof(err); err == nil {
		return io.EOF
	}
	return err
}

// errIdle is fill's answer when the next message did not begin within
// idleAfter.
var errIdle = errors.New("no message within the idle interval")

// clearDeadline clears the input's deadline, whichever was set.
func (f *framer) clearDeadline() {
	if f.deadline {
		f.in.conn.SetReadDeadline(time.Time{})
	}
	f.deadline, f.timed = false, false
}

// await waits for the next message's first bytes when nothing is unread
// and no streamed message is under way, sending what was collected first,
// as next does: a caller that waits here, not in next, parks with next's
// frames and its own off the stack (see clientSide).
func (f *framer) await() error {
	if f.skip > 0 || f.in.r < f.in.w {
		return nil
	}
	if err := f.flush(); err != nil {
		return err
	}
	f.in.shrink()
	return f.fill(5, false)
}

// next returns the next message (type byte, length and body) and its body
// size; streamed means msg holds only the message's first part. keepWhole
// is asked about a message larger than the buffer, with the part of its
// body read so far. At the clean end of the input it returns io.EOF.
func (f *framer) next(keepWhole func(typ byte, head []byte) bool) (typ byte, msg []byte, size int, streamed bool, err error) {
	for {
		avail := f.in.w - f.in.r
		if f.skip > 0 {
			if avail == 0 {
				if err := f.flush(); err != nil {
					return 0, nil, 0, false, err
				}
				if err := f.fill(1, true); err != nil {
					return 0, nil, 0, false, err
				}
				continue
			}
			k := min(f.skip, avail)
			if !f.drop {
				f.out = append(f.out, f.in.buf[f.in.r:f.in.r+k]...)
			}
			f.in.r += k
			f.skip -= k
			if f.skip == 0 {
				f.timed = false
			}
			// The end of a streamed message goes out at once: the server
			// side keeps the agent's connection to itself until then.
			if len(f.out) >= flushAt || f.skip == 0 {
				if err := f.flush(); err != nil {
					return 0, nil, 0, false, err
				}
			}
			continue
		}
		if avail < 5 {
			if err := f.flush(); err != nil {
				return 0, nil, 0, false, err
			}
			f.in.shrink()
			if err := f.fill(5, avail > 0); err != nil {
				return 0, nil, 0, false, err
			}
			continue
		}
		typ = f.in.buf[f.in.r]
		n := int(binary.BigEndian.Uint32(f.in.buf[f.in.r+1:]))
		if n < 4 || n-4 > f.max {
			return typ, nil, 0, false, &ProtocolError{Msg: fmt.Sprintf("invalid message length %d for message type %q%s", n, typ, f.from)}
		}
		total := 1 + n
		if avail < total {
			if total <= max(len(f.in.buf), bufSize) || keepWhole(typ, f.in.buf[f.in.r+5:f.in.w]) {
				if n-4 > f.maxWhole {
					return typ, nil, 0, false, &LimitError{Limit: LimitMessage, Code: "54000",
						Msg: fmt.Sprintf("message %q of %d bytes%s is larger than the %d bytes a session may buffer", typ, n-4, f.from, f.maxWhole)}
				}
				if err := f.in.reserve(total); err != nil {
					return typ, nil, 0, false, err
				}
				if err := f.flush(); err != nil {
					return 0, nil, 0, false, err
				}
				if err := f.fill(total, true); err != nil {
					return 0, nil, 0, false, err
				}
				continue
			}
			msg = f.in.buf[f.in.r:f.in.w]
			f.skip, f.drop = total-avail, false
			f.in.r = f.in.w
			f.timed = false
			return typ, msg, n - 4, true, nil
		}
		msg = f.in.buf[f.in.r : f.in.r+total]
		f.in.r += total
		f.timed = false
		return typ, msg, n - 4, false, nil
	}
}

// stmtState is the client goroutine's view of the agent's prepared
// statements and of the portals whose results are masked. Its maps are
// made at their first entry: most sessions (simple queries) never make
// them, and an idle session held both.
type stmtState struct {
	stmts   map[string]*stmtInfo
	portals map[string]ColumnMasker
}

// stmtInfo is one prepared statement. Every execution (Bind) is decided
// again, so a policy change or an expired approval applies to statements
// prepared before it; the first Bind after a Parse reuses the Parse's
// verdict, so one query is decided once.
type stmtInfo struct {
	sql   string
	fresh bool
	mask  ColumnMasker
}

// clientSide is the client goroutine's state between the agent's messages.
// It lives off the goroutine's stack so that the goroutine waits for the
// next message under two small frames (clientLoop and the read), whatever
// the deciding of the last one took: the runtime halves a parked
// goroutine's stack only while it uses under a quarter of it, and the
// decision's frames kept an idle session's client goroutine at 8 KiB.
type clientSide struct {
	f   framer
	st  stmtState
	rec Message
}

func (r *relay) newClientSide() *clientSide {
	c := &clientSide{
		f: framer{in: reader{conn: r.agent, budget: r.cfg.Budget},
			max: r.cfg.MaxMessageSize, maxWhole: r.cfg.MaxBuffered, timeout: r.cfg.MessageTimeout, eof: clientEOF},
		rec: Message{FromClient: true},
	}
	if r.watcher != nil {
		c.f.idleAfter = r.cfg.IdleAfter
	}
	c.f.write = func(b []byte) error {
		if _, err := r.upstream.Write(b); err != nil {
			return fmt.Errorf("write upstream: %w", err)
		}
		return nil
	}
	return c
}

// clientLoop runs the client side until the session ends (its result) or
// the agent's wait is handed to the watcher (errSuspended).
func (r *relay) clientLoop(c *clientSide) error {
	for {
		// Between messages the wait is here, not in clientMessage.
		err := c.f.await()
		if err == nil {
			var done bool
			if done, err = r.clientMessage(c); done {
				return err
			}
		}
		switch {
		case err == errIdle:
			if r.suspend(c) {
				return errSuspended
			}
		case err != nil:
			return r.clientFailed(&c.f, err)
		}
	}
}

// clientFailed is the client side's result for an error reading the
// agent: nil at its clean end.
func (r *relay) clientFailed(f *framer, err error) error {
	if err == io.EOF {
		return nil
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return r.violation(f.flush, pe.Msg)
	}
	var le *LimitError
	if errors.As(err, &le) {
		f.flush()
	}
	return err
}

// keepWholeClient says which of the agent's messages are kept whole:
// statements are decided on their whole text; a Bind too large for the
// buffer (big parameters) is decided on its names and streamed.
func keepWholeClient(typ byte, head []byte) bool {
	switch typ {
	case 'Q', 'P', 'F', 'X', 'E', 'C':
		return true
	case 'B':
		_, _, ok := bindNames(head)
		return !ok
	}
	return false
}

// clientMessage reads, decides and passes on (or answers) one message from
// the agent; done reports the agent's Terminate.
func (r *relay) clientMessage(c *clientSide) (done bool, err error) {
	f, rec := &c.f, &c.rec
	typ, msg, size, streamed, err := f.next(keepWholeClient)
	if err == errIdle {
		// A streamed message ended, and the next has yet to begin.
		return false, err
	}
	if err != nil {
		return true, r.clientFailed(f, err)
	}
	if r.cfg.Recorder != nil {
		rec.Type, rec.Body, rec.Size, rec.Time = typ, msg[5:], size, time.Now()
		r.cfg.Recorder.Record(rec)
	}
	if streamed {
		forward := true
		if typ == 'B' {
			portal, stmt, _ := bindNames(msg[5:])
			if f.out, forward, err = r.onBind(f.out, portal, stmt, &c.st, f.flush); err != nil {
				return true, err
			}
		}
		if forward {
			f.out = append(f.out, msg...)
		} else {
			f.drop = true
		}
		return false, nil
	}
	switch typ {
	case 'Q':
		f.out, err = r.onQuery(f.out, msg, f.flush)
	case 'P':
		f.out, err = r.onParse(f.out, msg, &c.st, f.flush)
	case 'B':
		portal, stmt, ok := bindNames(msg[5:])
		if !ok {
			err = &ProtocolError{Msg: "malformed Bind message"}
			break
		}
		var forward bool
		if f.out, forward, err = r.onBind(f.out, portal, stmt, &c.st, f.flush); forward {
			f.out = append(f.out, msg...)
		}
	case 'E':
		f.out, err = r.onExecute(f.out, msg, &c.st)
	case 'D':
		r.q.push(entry{kind: kDescribe})
		f.out = append(f.out, msg...)
	case 'S':
		r.q.push(entry{kind: kSync})
		f.out = append(f.out, msg...)
	case 'C':
		if err = c.st.onClose(msg[5:]); err == nil {
			f.out = append(f.out, msg...)
		}
	case 'F':
		if r.cfg.AllowFunctionCall {
			r.q.push(entry{kind: kQuery})
			f.out = append(f.out, msg...)
		} else {
			f.out = r.deny(f.out, kDenyQuery, "", Verdict{Rule: "function-call", Message: "FunctionCall messages are not allowed"})
		}
	case 'X':
		if r.cfg.Keep == nil {
			// Kept, the server's session goes on for the next agent.
			f.out = append(f.out, msg...)
		}
		return true, f.flush()
	default:
		f.out = append(f.out, msg...)
	}
	if err != nil {
		var pe *ProtocolError
		if errors.As(err, &pe) {
			return true, r.violation(f.flush, pe.Msg)
		}
		return true, err
	}
	if len(f.out) >= flushAt {
		if err := f.flush(); err != nil {
			return true, err
		}
	}
	if r.q.full() {
		// What is queued must reach the server for answers to come.
		if err := f.flush(); err != nil {
			return true, err
		}
		r.q.waitRoom()
	}
	return false, nil
}

// clientEOF turns the agent closing its connection into a clean end.
func clientEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("read agent: %w", err)
}

// violation ends the session for bad agent input: the messages before it
// go upstream; Relay then tells the agent (FATAL protocol_violation) and
// terminates the server session.
func (r *relay) violation(flush func() error, msg string) error {
	flush()
	return &ProtocolError{Msg: msg}
}

// decide asks the enforcer and resolves a hold.
func (r *relay) decide(sql string, flush func() error) (Verdict, error) {
	v := r.cfg.Enforcer.Query(r.ctx, sql)
	if v.Action != Hold {
		return v, nil
	}
	// What the agent pipelined before this statement goes upstream first,
	// so its results are not held too.
	if err := flush(); err != nil {
		return v, err
	}
	notice, err := (&pgproto3.NoticeResponse{
		Severity: "NOTICE", SeverityUnlocalized: "NOTICE", Code: "01000",
		Message: "interlock: statement held for approval " + v.ApprovalID,
		Detail:  "rule " + v.Rule,
	}).Encode(nil)
	if err != nil {
		return v, fmt.Errorf("encode hold notice: %w", err)
	}
	// The server goroutine may be in the middle of streaming a large
	// message to the agent and keeps the agent's connection until it is
	// complete; the notice waits for that without blocking this goroutine,
	// which has to notice the session ending.
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		r.agentMu.Lock()
		r.agent.Write(notice)
		r.agentMu.Unlock()
	}()
	approved, reason := false, "no approver"
	if v.Wait != nil {
		approved, reason = v.Wait(r.ctx)
	}
	if approved {
		v.Action = Forward
	} else {
		v.Action = Deny
		v.Message = "approval " + v.ApprovalID + " refused"
		if reason != "" {
			v.Message += ": " + reason
		}
	}
	return v, nil
}

// deny queues the agent's denial and appends the failing substitute
// statement for the server.
func (r *relay) deny(out []byte, kind uint8, stmt string, v Verdict) []byte {
	resp := &pgproto3.ErrorResponse{Severity: "ERROR", SeverityUnlocalized: "ERROR", Code: v.Code, Message: v.Message, Position: v.Position}
	if v.Code == "" {
		resp.Code, resp.Message, resp.Position = "42501", "interlock: permission denied by rule \""+v.Rule+"\"", 0
		if v.Message != "" {
			resp.Message += ": " + v.Message
		}
	}
	e, _ := resp.Encode(nil)
	r.q.push(entry{kind: kind, deny: e})
	if kind == kDenyQuery {
		out, _ = (&pgproto3.Query{String: deniedSQL}).Encode(out)
		return out
	}
	out, _ = (&pgproto3.Parse{Name: stmt, Query: deniedSQL}).Encode(out)
	return out
}

func (r *relay) onQuery(out, msg []byte, flush func() error) ([]byte, error) {
	body := msg[5:]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return out, &ProtocolError{Msg: "malformed Query message"}
	}
	v, err := r.decide(string(body[:len(body)-1]), flush)
	if err != nil {
		return out, err
	}
	if v.Action != Forward {
		return r.deny(out, kDenyQuery, "", v), nil
	}
	r.q.push(entry{kind: kQuery, mask: v.Mask})
	return append(out, msg...), nil
}

func (r *relay) onParse(out, msg []byte, st *stmtState, flush func() error) ([]byte, error) {
	body := msg[5:]
	name, rest, ok := cbytes(body)
	if !ok {
		return out, &ProtocolError{Msg: "malformed Parse message"}
	}
	sql, rest, ok := cbytes(rest)
	if !ok || len(rest) < 2 || len(rest) != 2+4*int(binary.BigEndian.Uint16(rest)) {
		return out, &ProtocolError{Msg: "malformed Parse message"}
	}
	text := string(sql)
	v, err := r.decide(text, flush)
	if err != nil {
		return out, err
	}
	if v.Action != Forward {
		return r.deny(out, kDenyParse, string(name), v), nil
	}
	if info := st.stmts[string(name)]; info != nil {
		info.sql, info.fresh, info.mask = text, true, v.Mask
	} else {
		if st.stmts == nil {
			st.stmts = map[string]*stmtInfo{}
		}
		st.stmts[string(name)] = &stmtInfo{sql: text, fresh: true, mask: v.Mask}
	}
	return append(out, msg...), nil
}

// bindNames returns the portal and statement names that start a Bind body.
func bindNames(body []byte) (portal, stmt []byte, ok bool) {
	portal, rest, ok := cbytes(body)
	if !ok {
		return nil, nil, false
	}
	stmt, _, ok = cbytes(rest)
	return portal, stmt, ok
}

// onBind decides about a Bind, given the names it starts with; the caller
// forwards the message when forward is true.
func (r *relay) onBind(out, portal, stmt []byte, st *stmtState, flush func() error) (_ []byte, forward bool, _ error) {
	var mask ColumnMasker
	// A statement the relay has not seen parsed was prepared with SQL
	// PREPARE, which went through the enforcer as a Query; the server
	// rejects a Bind to a statement that does not exist.
	if info := st.stmts[string(stmt)]; info != nil {
		if info.fresh {
			info.fresh = false
			mask = info.mask
		} else {
			v, err := r.decide(info.sql, flush)
			if err != nil {
				return out, false, err
			}
			if v.Action != Forward {
				if len(st.portals) > 0 {
					delete(st.portals, string(portal))
				}
				// A failing Parse of a statement name nobody uses makes
				// the server fail at this point, as a failed Bind does.
				return r.deny(out, kDenyParse, deniedSQL, v), false, nil
			}
			mask = v.Mask
		}
	}
	if mask != nil {
		if st.portals == nil {
			st.portals = map[string]ColumnMasker{}
		}
		st.portals[string(portal)] = mask
	} else if len(st.portals) > 0 {
		delete(st.portals, string(portal))
	}
	return out, true, nil
}

func (st *stmtState) onClose(body []byte) error {
	if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') || body[len(body)-1] != 0 {
		return &ProtocolError{Msg: "malformed Close message"}
	}
	name := body[1 : len(body)-1]
	if body[0] == 'S' {
		delete(st.stmts, string(name))
	} else if len(st.portals) > 0 {
		delete(st.portals, string(name))
	}
	return nil
}

func (r *relay) onExecute(out, msg []byte, st *stmtState) ([]byte, error) {
	portal, rest, ok := cbytes(msg[5:])
	if !ok || len(rest) != 4 {
		return out, &ProtocolError{Msg: "malformed Execute message"}
	}
	if len(st.portals) > 0 {
		if m := st.portals[string(portal)]; m != nil {
			// Execute carries no column descriptions; ask for them right
			// before it and keep the answer from the agent.
			r.q.push(entry{kind: kInjDescribe})
			r.q.push(entry{kind: kExecute, mask: m})
			out, _ = (&pgproto3.Describe{ObjectType: 'P', Name: string(portal)}).Encode(out)
		}
	}
	return append(out, msg...), nil
}

// cbytes splits a NUL-terminated string off b without allocating.
func cbytes(b []byte) ([]byte, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// serverState is the server goroutine's view of the result in progress.
type serverState struct {
	rows    RowMasker // masks the DataRows of the current result set
	execing bool      // a masked Execute's rows are flowing
	cols    []Column
	status  byte // the last ReadyForQuery's transaction status
}

// serverSide is the server side's state between the server's messages,
// off its goroutine's stack: the goroutine ends while the server side is
// suspended (suspendServer), and a new one resumes it.
type serverSide struct {
	f         framer
	locked    bool // agentMu held across a streamed message
	ss        serverState
	rec       Message
	keepWhole func(typ byte, head []byte) bool
}

func (r *relay) newServerSide() *serverSide {
	s := &serverSide{
		f: framer{in: reader{conn: r.upstream, budget: r.cfg.Budget},
			max: r.cfg.MaxMessageSize, maxWhole: r.cfg.MaxBuffered, eof: serverEOF, from: " from server"},
		ss: serverState{status: 'I'},
	}
	s.f.write = func(b []byte) error {
		if !s.locked {
			r.agentMu.Lock()
		}
		_, err := r.agent.Write(b)
		s.locked = s.f.skip > 0
		if !s.locked {
			r.agentMu.Unlock()
		}
		if err != nil {
			return fmt.Errorf("write agent: %w", err)
		}
		return nil
	}
	// Rows are streamed unless they are masked; everything else the relay
	// may have to read or replace is kept whole.
	s.keepWhole = func(typ byte, _ []byte) bool { return typ != 'd' && (typ != 'D' || s.ss.rows != nil) }
	return s
}

// serverEnded gives back what the server side holds once it has ended.
func (r *relay) serverEnded() {
	r.q.close()
	if r.server.locked {
		// It ended in a streamed message, holding the agent's connection.
		r.server.locked = false
		r.agentMu.Unlock()
	}
	r.server.f.close()
}

// serverLoop runs the server side until the session ends (its result) or
// its wait is handed to the watcher (errSuspended). A side that was
// suspended resumes with a read: the watcher saw input.
func (r *relay) serverLoop(s *serverSide) error {
	f := &s.f
	for {
		typ, msg, size, streamed, err := f.next(s.keepWhole)
		if err == io.EOF {
			return nil
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			if r.parking.Load() {
				// Stopped for Keep (clientEnded).
				r.serverIdle = s.ss.status == 'I' && f.skip == 0 && f.in.r == f.in.w && r.q.empty()
				return nil
			}
			if r.upWatcher != nil {
				// The client side suspended (suspend): hand the wait
				// over if this is between messages, else read on. Keep
				// may have begun meanwhile: its deadline stands.
				r.upstream.SetReadDeadline(time.Time{})
				if r.parking.Load() {
					r.upstream.SetReadDeadline(time.Now())
				}
				if err := r.idleServer(s); err != nil {
					return err
				}
				continue
			}
		}
		if err != nil {
			return serverFailed(f, err)
		}
		if streamed {
			if r.cfg.Recorder != nil {
				s.rec.Type, s.rec.Body, s.rec.Size, s.rec.Time = typ, msg[5:], size, time.Now()
				r.cfg.Recorder.Record(&s.rec)
			}
			f.out = append(f.out, msg...)
			continue
		}
		if err := r.serverMessage(f, &s.ss, &s.rec, typ, msg); err != nil {
			return err
		}
		if len(f.out) >= flushAt {
			if err := f.flush(); err != nil {
				return err
			}
		}
		if r.upWatcher != nil && r.clientIdle.Load() {
			if err := r.idleServer(s); err != nil {
				return err
			}
		}
	}
}

// idleServer suspends the server side if it is between messages with
// nothing unread (suspendServer), after sending what it collected: it
// returns errSuspended then, the send's error, or nil to read on.
func (r *relay) idleServer(s *serverSide) error {
	f := &s.f
	if f.skip > 0 || f.in.r < f.in.w {
		return nil
	}
	if err := f.flush(); err != nil {
		return err
	}
	if r.suspendServer(s) {
		return errSuspended
	}
	return nil
}

// serverMessage passes on one whole message from the server, masked or
// replaced as the statement it answers asks. It is a function of its own
// so that its locals are off the stack while serverLoop waits for the
// next: an idle session parks there (see session.Pipeline.Handle).
func (r *relay) serverMessage(f *framer, ss *serverState, rec *Message, typ byte, msg []byte) error {
	var err error
	start := len(f.out)
	switch typ {
	case 'D':
		if ss.rows != nil {
			f.out, err = maskRow(f.out, msg, ss.rows)
		} else {
			f.out = append(f.out, msg...)
		}
	case 'T':
		f.out, err = r.onRowDescription(f.out, msg, ss)
	case 'n':
		f.out = r.onNoData(f.out, msg, ss)
	case 'C', 's', 'I':
		ss.rows = nil
		if ss.execing {
			ss.execing = false
			r.q.mu.Lock()
			if e := r.q.peek(0); e != nil && e.kind == kExecute {
				r.q.pop()
			}
			r.q.mu.Unlock()
		}
		f.out = append(f.out, msg...)
	case 'E':
		f.out = r.onError(f.out, msg, ss)
	case 'H', 'W':
		// CopyData rows have no columns to mask; a masked statement
		// that copies f.out ends the session rather than leak them.
		if r.maskedCopy(ss.execing) {
			f.out, _ = (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: "42501",
				Message: "interlock: " + ErrMaskedCopy.Error()}).Encode(f.out[:start])
			f.flush()
			return ErrMaskedCopy
		}
		f.out = append(f.out, msg...)
	case 'Z':
		ss.rows, ss.execing = nil, false
		if len(msg) > 5 {
			ss.status = msg[5]
		}
		r.q.mu.Lock()
		for e := r.q.peek(0); e != nil; e = r.q.peek(0) {
			k := e.kind
			r.q.pop()
			if k == kSync || k == kQuery || k == kDenyQuery {
				break
			}
		}
		r.q.mu.Unlock()
		f.out = append(f.out, msg...)
	default:
		f.out = append(f.out, msg...)
	}
	if err != nil {
		return err
	}
	if r.cfg.Recorder != nil && len(f.out) > start {
		b := f.out[start:]
		rec.Type, rec.Body, rec.Size, rec.Time = b[0], b[5:], len(b)-5, time.Now()
		r.cfg.Recorder.Record(rec)
	}
	if len(f.out) >= flushAt {
		return f.flush()
	}
	return nil
}

// serverFailed ends the server side on a read that failed: what the server
// sent before stays, and an agent over a limit learns why nothing follows.
func serverFailed(f *framer, err error) error {
	var le *LimitError
	if errors.As(err, &le) {
		f.out, _ = le.Response().Encode(f.out)
		f.flush()
	}
	return err
}

func serverEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return upstreamReadError{err}
}

// upstreamReadError is a failed read of the server's side. Its message is
// made only when asked for: a kept session's end interrupts that read with
// a deadline and drops the error, and formatting it there (fmt.Errorf
// over the *net.OpError) cost 13 allocations a session.
type upstreamReadError struct{ err error }

func (e upstreamReadError) Error() string { return "read upstream: " + e.err.Error() }
func (e upstreamReadError) Unwrap() error { return e.err }

func (r *relay) onRowDescription(out, msg []byte, ss *serverState) ([]byte, error) {
	r.q.mu.Lock()
	e := r.q.peek(0)
	var kind uint8 = 255
	var mask ColumnMasker
	if e != nil {
		kind, mask = e.kind, e.mask
		switch kind {
		case kDescribe:
			r.q.pop()
		case kInjDescribe:
			r.q.pop()
			if next := r.q.peek(0); next != nil && next.kind == kExecute {
				mask = next.mask
			}
		}
	}
	r.q.mu.Unlock()
	if (kind == kQuery || kind == kInjDescribe) && mask != nil {
		cols, err := parseRowDescription(ss.cols[:0], msg[5:])
		if err != nil {
			return out, err
		}
		ss.cols = cols
		ss.rows = mask.Plan(cols)
	}
	if kind == kInjDescribe {
		ss.execing = true
		return out, nil
	}
	return append(out, msg...), nil
}

// maskedCopy reports whether the result now starting belongs to a masked
// statement.
func (r *relay) maskedCopy(execing bool) bool {
	r.q.mu.Lock()
	defer r.q.mu.Unlock()
	e := r.q.peek(0)
	return e != nil && e.mask != nil && (e.kind == kQuery || (e.kind == kExecute && execing))
}

func (r *relay) onNoData(out, msg []byte, ss *serverState) []byte {
	r.q.mu.Lock()
	e := r.q.peek(0)
	injected := e != nil && e.kind == kInjDescribe
	if e != nil && (e.kind == kDescribe || injected) {
		r.q.pop()
	}
	r.q.mu.Unlock()
	if injected {
		ss.rows, ss.execing = nil, true
		return out
	}
	return append(out, msg...)
}

var deniedMarker = []byte(deniedSQL)

func (r *relay) onError(out, msg []byte, ss *serverState) []byte {
	ss.rows, ss.execing = nil, false
	r.q.mu.Lock()
	defer r.q.mu.Unlock()
	if e := r.q.peek(0); e != nil && (e.kind == kDenyQuery || e.kind == kDenyParse) &&
		bytes.Contains(msg, []byte("C42601\x00")) && bytes.Contains(msg, deniedMarker) {
		out = append(out, e.deny...)
	} else {
		out = append(out, msg...)
	}
	// The server skips the rest of the extended-protocol batch until Sync.
	for e := r.q.peek(0); e != nil; e = r.q.peek(0) {
		if e.kind == kSync || e.kind == kQuery || e.kind == kDenyQuery {
			break
		}
		r.q.pop()
	}
	return out
}

// parseRowDescription decodes a RowDescription body into cols.
func parseRowDescription(cols []Column, b []byte) ([]Column, error) {
	if len(b) < 2 {
		return cols, &ProtocolError{Msg: "malformed RowDescription from server"}
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < n; i++ {
		name, rest, ok := cbytes(b)
		if !ok || len(rest) < 18 {
			return cols, &ProtocolError{Msg: "malformed RowDescription from server"}
		}
		cols = append(cols, Column{
			Name:         string(name),
			TableOID:     binary.BigEndian.Uint32(rest),
			TableAttr:    binary.BigEndian.Uint16(rest[4:]),
			TypeOID:      binary.BigEndian.Uint32(rest[6:]),
			TypeSize:     int16(binary.BigEndian.Uint16(rest[10:])),
			TypeModifier: int32(binary.BigEndian.Uint32(rest[12:])),
			Format:       int16(binary.BigEndian.Uint16(rest[16:])),
		})
		b = rest[18:]
	}
	return cols, nil
}

// maskRow appends msg, a DataRow, with its fields rewritten by m.
func maskRow(out, msg []byte, m RowMasker) ([]byte, error) {
	b := msg[5:]
	if len(b) < 2 {
		return out, &ProtocolError{Msg: "malformed DataRow from server"}
	}
	start := len(out)
	out = append(out, 'D', 0, 0, 0, 0, b[0], b[1])
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < n; i++ {
		if len(b) < 4 {
			return out[:start], &ProtocolError{Msg: "malformed DataRow from server"}
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		var v []byte
		if l >= 0 {
			if int(l) > len(b) {
				return out[:start], &ProtocolError{Msg: "malformed DataRow from server"}
			}
			v, b = b[:int(l):int(l)], b[int(l):]
		}
		nv := m.MaskValue(i, v)
		if nv == nil {
			out = binary.BigEndian.AppendUint32(out, 0xffffffff)
			continue
		}
		out = binary.BigEndian.AppendUint32(out, uint32(len(nv)))
		out = append(out, nv...)
	}
	binary.BigEndian.PutUint32(out[start+1:], uint32(len(out)-start-1))
	return out, nil
}
