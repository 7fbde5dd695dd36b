// Package proxy accepts the connections the data path redirects to
// interlockd, attaches the kernel-attested identity and original destination
// to each, and hands it to a Handler. It tracks every connection so shutdown
// closes them all.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
)

// Identity is who opened a redirected connection, as the kernel recorded it
// at connect() and as /proc showed it at accept.
type Identity struct {
	// Name is the identity the caller's cgroup (or an ancestor) is tagged with.
	Name     string `json:"identity"`
	PID      uint32 `json:"pid"`
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
	Comm     string `json:"comm"`
	Exe      string `json:"exe"`
	CgroupID uint64 `json:"cgroup_id"`
	// Cgroup is the caller's cgroup path relative to the cgroup2 mount.
	Cgroup string `json:"cgroup"`
	// NetnsCookie identifies the caller's network namespace.
	NetnsCookie uint64 `json:"netns_cookie"`
	// Connected is when the kernel took the connect, before it looked up
	// the tag that named the identity (zero if unknown).
	Connected time.Time `json:"-"`
	// Container is the container the caller's cgroup belongs to, as its
	// runtime described it at accept; nil unless the policy selects on
	// containers and the runtime could say.
	Container *policy.Container `json:"container,omitempty"`
	// Gone says the process had exited before /proc was read: its
	// executable, and its cgroup path unless one was remembered for its
	// cgroup ID, are unknown (a socket it left to a child goes on).
	Gone bool `json:"-"`
}

// Conn is one accepted, identified agent connection.
type Conn struct {
	// ID names the connection in logs, audit records and recordings.
	ID       string
	Identity Identity
	// Dst is where the agent was connecting before the redirect.
	Dst      netip.AddrPort
	Client   *net.TCPConn
	Accepted time.Time
	// refs counts what keeps the connection served: its Handle call
	// and each Hold; done untracks it once none is left (a Conn made
	// outside a Server has none).
	refs atomic.Int32
	done func()
}

// Hold keeps c served after Handle returns, until release is called
// (once): a handler whose session goes on with no goroutine of its own
// (protocol.ErrDetached) returns while shutdown must still wait for it.
func (c *Conn) Hold() (release func()) {
	c.refs.Add(1)
	return c.release
}

func (c *Conn) release() {
	if c.refs.Add(-1) == 0 && c.done != nil {
		c.done()
	}
}

// Identifier resolves a redirected connection from the 4-tuple the proxy sees.
type Identifier interface {
	Identify(peer, local netip.AddrPort) (Identity, netip.AddrPort, error)
}

// Handler serves one connection until it ends, or until it returns having
// called c.Hold. It owns c.Client and must close it.
type Handler interface {
	Handle(ctx context.Context, c *Conn)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, c *Conn)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, c *Conn) { f(ctx, c) }

// Server accepts redirected connections on one or more listeners. It is safe
// for concurrent use.
type Server struct {
	Identifier Identifier
	Handler    Handler
	Log        zerolog.Logger
	// Paused, if set, is called as a listener's pause begins (see
	// pauses), each one, logged or not: for a metric.
	Paused func()

	mu     sync.Mutex
	conns  map[*net.TCPConn]struct{}
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// NewServer returns a server that identifies with id and serves with h.
func NewServer(id Identifier, h Handler, log zerolog.Logger) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{Identifier: id, Handler: h, Log: log, conns: map[*net.TCPConn]struct{}{}, ctx: ctx, cancel: cancel}
}

// Listen opens a plain TCP listener (Go would use MPTCP where the kernel
// has it) on addr, such as 127.0.0.1:0: the data path delivers the proxy
// address's connections to it through a SOCKMAP, which holds TCP sockets
// only, so it can be bound where no other process can take it. Its
// connections get no TCP keepalive: their peers are local processes, whose
// ends close when they exit, and Go's default probes cost four setsockopt
// calls per connection.
func Listen(ctx context.Context, network, addr string) (*net.TCPListener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen proxy: %w", err)
	}
	return l.(*net.TCPListener), nil
}

// Serve accepts on l until l is closed or the server shuts down.
func (s *Server) Serve(l net.Listener) error { return s.ServeWith(l, s.Identifier) }

// ServeWith is Serve with id identifying l's connections in place of the
// server's Identifier: for a listener in another network namespace, whose
// connections are recorded under that namespace.
//
// A process or host out of descriptors or memory (an agent holding
// thousands of connections is enough) is waited out: accepting pauses
// (see pauses) while new connections wait in the listen queue. It returns
// an error only for one that accepting again cannot clear.
func (s *Server) ServeWith(l net.Listener, id Identifier) error {
	p := pauses{log: &s.Log, listener: l.Addr().String(), count: s.Paused}
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if pendingError(err) {
				continue // that connection's own failure; the next is fine
			}
			if !exhausted(err) {
				return fmt.Errorf("proxy listener: %w", err)
			}
			t := time.NewTimer(p.failed(err))
			select {
			case <-t.C:
				p.waited()
			case <-s.ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		p.accepted()
		tc := c.(*net.TCPConn)
		if !s.track(tc) {
			tc.Close()
			return nil
		}
		s.wg.Add(1)
		go s.serveConn(tc, id)
	}
}

// pauseLogEvery bounds how often one listener logs a pause: an agent that
// keeps interlockd at its descriptor limit makes one each time a
// connection closes.
const pauseLogEvery = 10 * time.Second

// pauses paces one listener's accepts while interlockd is out of
// descriptors or memory: 5 ms before the first retry, doubling to a
// second, and back to none at the first accept that succeeds (each
// connection that closes frees what the next needs). A pause is logged
// as an error when it begins, with the pauses not logged since the last
// one that was, and as a warning when it ends.
type pauses struct {
	log      *zerolog.Logger
	listener string
	count    func()        // Server.Paused
	wait     time.Duration // before the next accept; 0 while accepting
	began    time.Time     // when the pause began
	ended    time.Time     // when its last wait ended
	accepts  int           // accepts failed in the pause
	logged   time.Time     // when the last logged pause began
	unlogged int           // pauses since then
}

// failed counts an accept that failed with err, one of exhausted's, and
// returns how long to wait before the next.
func (p *pauses) failed(err error) time.Duration {
	if p.wait == 0 {
		p.began, p.accepts = time.Now(), 0
		if p.count != nil {
			p.count()
		}
		if p.began.Sub(p.logged) < pauseLogEvery {
			p.unlogged++
		} else {
			p.log.Error().Err(err).Str("listener", p.listener).Int("pauses_unlogged", p.unlogged).
				Msg("accepting paused: interlockd is out of descriptors or memory; new connections wait in the listen queue")
			p.logged, p.unlogged = p.began, 0
		}
	}
	p.accepts++
	p.wait = min(max(2*p.wait, 5*time.Millisecond), time.Second)
	return p.wait
}

// waited marks the end of a wait failed returned.
func (p *pauses) waited() { p.ended = time.Now() }

// accepted ends the pause, if any.
func (p *pauses) accepted() {
	if p.wait == 0 {
		return
	}
	if p.logged.Equal(p.began) {
		p.log.Warn().Str("listener", p.listener).Int64("paused_ms", p.ended.Sub(p.began).Milliseconds()).
			Int("failed_accepts", p.accepts).Msg("accepting again")
	}
	p.wait = 0
}

// exhausted reports whether an accept failed because the process or the
// host ran out of something a connection takes: descriptors (EMFILE,
// ENFILE) or kernel memory (ENOBUFS, ENOMEM). Connections that close give
// them back.
func exhausted(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// pendingError reports whether an accept failed with the error of the
// connection it dequeued, which Linux's accept passes on and accept(2)
// says to retry like EAGAIN (Go retries ECONNABORTED itself). Each
// failing connection is gone from the queue, so retrying cannot spin.
// (accept(2)'s EPERM, "firewall rules forbid connection", is not one: a
// security module refusing every accept would keep it coming.)
func pendingError(err error) bool {
	for _, e := range []syscall.Errno{syscall.ENETDOWN, syscall.EPROTO, syscall.ENOPROTOOPT, syscall.EHOSTDOWN,
		syscall.ENONET, syscall.EHOSTUNREACH, syscall.EOPNOTSUPP, syscall.ENETUNREACH} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *Server) track(c *net.TCPConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *net.TCPConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) serveConn(c *net.TCPConn, identifier Identifier) {
	done := func() {
		s.untrack(c)
		s.wg.Done()
	}
	// A panic identifying the caller, or one the handler did not contain
	// itself (its decoders' are, see protocol.Contained), ends this
	// connection, not interlockd.
	var conn *Conn
	defer func() {
		if ie := protocol.Contained("connection", recover()); ie != nil {
			s.contained(ie, c, conn == nil, done)
		}
	}()
	// The handler parks this goroutine for as long as the session lasts,
	// unless it holds the connection (Conn.Hold); identifying is a
	// function of its own so that its locals are not on the stack
	// meanwhile (see session.Pipeline.Handle).
	conn = s.identify(c, identifier)
	if conn == nil {
		done()
		return
	}
	conn.done = done
	conn.refs.Store(1)
	defer conn.release()
	s.Handler.Handle(s.ctx, conn)
}

// contained logs a panic recovered in serveConn and closes c. A caller
// that was never identified has no Conn whose release ends its tracking:
// done does. (A handler that held its Conn and panicked before releasing
// it leaves it tracked: Shutdown waits for it until its deadline.)
func (s *Server) contained(ie *protocol.InternalError, c *net.TCPConn, unidentified bool, done func()) {
	LogDefect(&s.Log, ie, "peer", c.RemoteAddr().String())
	c.Close()
	if unidentified {
		done()
	}
}

// LogDefect logs a defect recovered on a goroutine that served an agent
// (protocol.Contained), with key naming what it ended: the audit trail has
// what ended, the log the stack, for interlockd's developers.
func LogDefect(log *zerolog.Logger, ie *protocol.InternalError, key, value string) {
	log.Error().Str(key, value).Str("where", ie.Where).Str("panic", fmt.Sprint(ie.Value)).
		Str("stack", string(ie.Stack)).Msg("ended by an internal error")
}

// identify returns c as the connection of the caller the kernel recorded,
// or closes it and returns nil.
func (s *Server) identify(c *net.TCPConn, identifier Identifier) *Conn {
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	id, dst, err := identifier.Identify(peer, local)
	if err != nil {
		// Not redirected by our programs (or the record is gone): nobody we
		// can vouch for, so nothing is relayed.
		s.Log.Warn().Err(err).Str("peer", peer.String()).Msg("refusing unidentified connection")
		c.Close()
		return nil
	}
	// The connection's ID is its session's, in the store: IDs that sort by
	// time keep the store's indexes on it growing at their end, where a
	// random one put each new session (and its decisions) on a page of its
	// own, written to SQLite's WAL at every commit.
	return &Conn{ID: store.NewID(), Identity: id, Dst: dst, Client: c, Accepted: time.Now()}
}

// Shutdown stops handlers (their context is cancelled), closes every tracked
// connection and waits for the handlers to return or ctx to end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Active returns the number of connections being served.
func (s *Server) Active() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
