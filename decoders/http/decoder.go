package http

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// Message types of the recording (see the package comment).
const (
	MsgRequest        = 'h'
	MsgRequestBody    = 'b'
	MsgResponse       = 'H'
	MsgResponseBody   = 'B'
	MsgInterlock      = 'i'
	MsgPassthrough    = 't'
	MsgPassthroughEnd = 'n'
)

// Defaults for the Decoder's zero fields.
const (
	DefaultMaxHeaderBytes       = 64 << 10
	DefaultMaxRequestBody       = 1 << 30
	DefaultMaxRecordedBody      = 64 << 10
	DefaultMaxConcurrentStreams = 100
	DefaultIdleTimeout          = 2 * time.Minute
)

// Mode is a target's TLS handling.
type Mode uint8

const (
	// Plain is HTTP without TLS.
	Plain Mode = iota
	// Intercept terminates TLS and decides every request.
	Intercept
	// Passthrough decides the server name and relays the TLS bytes.
	Passthrough
)

// Target is what a session's target says about HTTP.
type Target struct {
	Mode Mode
	// RootCAs verify the upstream's certificate; nil: the system roots.
	RootCAs *x509.CertPool
}

// Decoder serves HTTP sessions (protocol.Decoder). Safe for concurrent
// use.
type Decoder struct {
	// Target returns the HTTP settings of the target a session was given.
	Target func(target string) (Target, error)
	// MaxHeaderBytes caps a request head, and an upstream's response head
	// (DefaultMaxHeaderBytes if 0).
	MaxHeaderBytes int
	// MaxRequestBody caps a request body; a larger one is refused with 413
	// (DefaultMaxRequestBody if 0).
	MaxRequestBody int64
	// MaxRecordedBody caps what the recording keeps of each body
	// (DefaultMaxRecordedBody if 0).
	MaxRecordedBody int
	// MaxConcurrentStreams bounds the HTTP/2 streams of one connection
	// (DefaultMaxConcurrentStreams if 0).
	MaxConcurrentStreams uint32
	// IdleTimeout ends a connection that waits this long for its next
	// request (DefaultIdleTimeout if 0): an idle connection still holds
	// one of its identity's sessions.
	IdleTimeout time.Duration
	// Guard, when set, sees every allowed request and every response
	// (credentials, the leak guard).
	Guard Guard

	// sessions holds each target's upstream TLS sessions (target name ->
	// *upstreamSessions), so an intercepted connection resumes the TLS
	// session an earlier one opened instead of a full handshake.
	sessions sync.Map
	// idle holds upstream HTTP/1.1 and HTTP/2 connections between an
	// identity's sessions, transports their clients for the other requests.
	idle       idle1
	transports transports
}

// upstreamSessionsPerTarget bounds the TLS sessions kept for one target's
// upstream: one per server name it is reached by, so a target of many
// names keeps its most recent.
const upstreamSessionsPerTarget = 64

// upstreamSessions are the TLS sessions of one target's upstream, which
// were verified against roots. crypto/tls does not verify a resumed
// session's certificate again, so these sessions serve only connections
// verifying against the same roots; crypto/tls keys them by server name.
type upstreamSessions struct {
	roots *x509.CertPool // nil: the system roots
	cache tls.ClientSessionCache
	// noH2: the upstream answered without HTTP/2 (see dialRelay).
	noH2 atomic.Bool
}

// sessionCache returns the TLS session cache of target's upstream for
// connections that verify against roots. A target whose roots changed
// (its upstream_ca replaced) starts a new cache: no session verified
// against the old roots is resumed.
func (d *Decoder) sessionCache(target string, roots *x509.CertPool) tls.ClientSessionCache {
	return d.upstreamOf(target, roots).cache
}

// upstreamOf returns what target's upstream connections verified against
// roots share: the same value for as long as the roots are equal (a
// target's upstream_ca may be replaced while interlockd runs).
func (d *Decoder) upstreamOf(target string, roots *x509.CertPool) *upstreamSessions {
	if v, ok := d.sessions.Load(target); ok {
		if s := v.(*upstreamSessions); s.roots.Equal(roots) {
			return s
		}
	}
	s := &upstreamSessions{roots: roots, cache: tls.NewLRUClientSessionCache(upstreamSessionsPerTarget)}
	d.sessions.Store(target, s)
	return s
}

func orDefault[T int | int64 | uint32 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// headBuffer is the buffer an agent's bytes are first read through: a
// ClientHello is read, not peeked, through it, so it need not fit, and a
// request head that does not fit grows it to the head cap (serveHTTP1). A
// buffer of the cap for every connection (64 KiB by default) was most of
// the bytes an HTTPS connection allocated.
const headBuffer = 4 << 10

// headReader returns the reader an agent's bytes are first read through.
func (c *conn) headReader(r io.Reader) *bufio.Reader {
	if size := min(headBuffer, c.maxHeader); size != headBuffer {
		return bufio.NewReaderSize(r, size)
	}
	br := headReaders.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

// headReaders keeps head readers for the next connections: a passthrough
// connection needs its own only until the hello is sent upstream
// (passthrough gives it back), and it was a seventh of what a new
// passthrough connection allocated.
var headReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, headBuffer) }}

// tlsRecordHandshake is the first byte of a TLS connection: a record of
// the handshake content type (RFC 8446, 5.1).
const tlsRecordHandshake = 0x16

// Serve implements protocol.Decoder.
func (d *Decoder) Serve(ctx context.Context, s *protocol.Session) error {
	defer s.Agent.Close()
	if s.Refuse != nil {
		refuseOverLimit(s)
		return s.Refuse
	}
	c := &conn{d: d, s: s, maxHeader: orDefault(d.MaxHeaderBytes, DefaultMaxHeaderBytes),
		maxBody: orDefault(d.MaxRequestBody, DefaultMaxRequestBody), maxRecorded: orDefault(d.MaxRecordedBody, DefaultMaxRecordedBody)}
	stop := context.AfterFunc(ctx, func() { s.Agent.Close() })
	defer stop()
	s.Agent.SetReadDeadline(time.Now().Add(s.Handshake))
	br := c.headReader(s.Agent)
	first, err := br.Peek(1)
	if err != nil {
		return nil // gone before a byte
	}
	if first[0] != tlsRecordHandshake {
		c.agent = &protocol.ReplayConn{Conn: s.Agent, R: br}
		return c.serveHTTP1(ctx, br)
	}
	hello, br, err := peekHello(br)
	if err != nil {
		return &protocol.ViolationError{Msg: "malformed TLS ClientHello: " + err.Error()}
	}
	agent := &protocol.ReplayConn{Conn: s.Agent, R: br}
	c.serverName = strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if err := c.choose(ctx, c.serverName); err != nil {
		alert := byte(alertInternalError)
		if c.connect.Action == protocol.Deny {
			alert = alertAccessDenied
		}
		refuseTLS(agent, alert)
		return err
	}
	if c.t.Mode == Passthrough && c.connect.Action != protocol.Allow {
		refuseTLS(agent, alertAccessDenied)
		return &protocol.RefusedError{Outcome: "denied", Err: fmt.Errorf("server name %q: a passthrough connection is allowed or refused as a whole (rule %s)", hello.ServerName, c.connect.Rule)}
	}
	if err := c.s.Recorder.Ready(); err != nil {
		// Before the handshake (no leaf minted) and the upstream: over
		// TLS an alert is all that can be said, as at the session limit.
		refuseTLS(agent, alertInternalError)
		return &protocol.RefusedError{Outcome: protocol.RecordingUnavailable, Err: err}
	}
	switch c.t.Mode {
	case Passthrough:
		// The hello, and what came with it, go first; then the socket.
		return c.passthrough(ctx, br, hello)
	case Intercept:
		return c.intercept(ctx, agent)
	}
	refuseTLS(agent, alertInternalError)
	return &protocol.RefusedError{Outcome: "handshake", Err: fmt.Errorf("target %s is plain HTTP and the agent sent TLS", c.target)}
}

// overLimitWait bounds how long a connection refused for its identity's
// session limit is read from, to answer in its own protocol.
const overLimitWait = 2 * time.Second

// refuseOverLimit tells an agent over its identity's session limit so in
// the protocol it speaks: a TLS alert, or a 503 to a plain request.
func refuseOverLimit(s *protocol.Session) {
	s.Agent.SetDeadline(time.Now().Add(overLimitWait))
	br := bufio.NewReader(s.Agent)
	first, err := br.Peek(1)
	switch {
	case err != nil:
	case first[0] == tlsRecordHandshake:
		refuseTLS(s.Agent, alertInternalError)
	default:
		resp := errorResponse(nethttp.StatusServiceUnavailable, s.Refuse.Msg)
		resp.Close = true
		resp.Write(s.Agent)
	}
}

// conn is one agent connection.
type conn struct {
	d           *Decoder
	s           *protocol.Session
	maxHeader   int
	maxBody     int64
	maxRecorded int
	agent       net.Conn
	serverName  string // the TLS server name, lower case
	target      string
	t           Target
	connect     protocol.Verdict
	chosen      bool
	transportMu sync.Mutex
	transport   *nethttp.Transport // taken at its first use (client)
	upTLS       *tls.Config        // upstream TLS, cloned by each connection's dial (never changed)
	up1         upstream1          // an HTTP/1.1 agent's requests without a body
	h2base      *nethttp.Server    // an HTTP/2 connection's: see serveHTTP2
	scheme      string

	// mu pairs each request's record with its decision (protocol.Enforcer)
	// and orders every record from the agent.
	mu sync.Mutex
	// ending is why the session must end (an upstream that failed
	// verification), set once; see end and ended.
	endOnce sync.Once
	endMu   sync.Mutex
	ending  error
}

// choose settles the session's target: by name when the pipeline chooses
// so, else the one it was given; and refuses the session when the
// connection to it is denied.
func (c *conn) choose(ctx context.Context, name string) error {
	c.chosen = true
	c.target, c.connect = c.s.Target, c.s.Connect
	if c.s.Select != nil {
		c.target, c.connect = c.s.Select(ctx, name)
	}
	if c.connect.Action == protocol.Deny {
		return &protocol.RefusedError{Outcome: "denied", Err: fmt.Errorf("server name %q: %s", name, describe(c.connect))}
	}
	t, err := c.d.Target(c.target)
	if err != nil {
		return &protocol.RefusedError{Outcome: "target", Err: err}
	}
	c.t = t
	return nil
}

// describe says why a verdict refuses, for errors and 403 bodies.
func describe(v protocol.Verdict) string {
	if v.Message != "" {
		return fmt.Sprintf("denied by rule %s: %s", v.Rule, v.Message)
	}
	return "denied by rule " + v.Rule
}

// passthrough relays a connection whose server name was allowed, without
// decrypting it: first what br read of it (the hello, and whatever came
// with it), then the agent's socket itself.
func (c *conn) passthrough(ctx context.Context, br *bufio.Reader, hello Hello) error {
	read, _ := br.Peek(br.Buffered())
	if err := c.s.Recorder.Start(ctx); err != nil {
		refuseTLS(c.s.Agent, alertInternalError)
		return err
	}
	c.s.Recorder.Record(protocol.Message{Type: MsgPassthrough, Time: time.Now(), Body: fmt.Appendf(nil,
		"TLS passthrough to %s, ALPN %s: not decrypted", orNone(hello.ServerName), orNone(strings.Join(hello.ALPN, ",")))})
	up, err := c.s.Upstream.Dial(ctx)
	if err != nil {
		return &protocol.RefusedError{Outcome: "upstream unreachable", Err: err}
	}
	defer up.Close()
	c.s.Agent.SetDeadline(time.Time{})
	if _, err := up.Write(read); err != nil {
		return &protocol.RefusedError{Outcome: "upstream unreachable", Err: err}
	}
	sent0 := int64(len(read))
	if br.Size() == headBuffer {
		// Nothing reads br again: the rest comes from the socket. (A
		// hello larger than it came in a reader of its own.)
		br.Reset(nil)
		headReaders.Put(br)
	}
	sent, recv, defect := protocol.Relay(c.s.Agent, up)
	sent += sent0
	c.s.Recorder.Relayed(sent, recv)
	c.s.Recorder.Record(protocol.Message{Type: MsgPassthroughEnd, Time: time.Now(),
		Body: fmt.Appendf(nil, "agent sent %d bytes, server %d bytes", sent, recv)})
	return defect
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// intercept terminates the agent's TLS with a leaf for the server name and
// serves HTTP/2 or HTTP/1.1 as its ALPN asks.
func (c *conn) intercept(ctx context.Context, agent net.Conn) error {
	var cfg *tls.Config
	if c.s.TLS != nil {
		cfg = c.s.TLS()
	}
	if cfg == nil {
		refuseTLS(agent, alertInternalError)
		return &protocol.RefusedError{Outcome: "handshake", Err: errors.New("no TLS configuration: this interlockd cannot terminate TLS")}
	}
	cfg.NextProtos = []string{"h2", "http/1.1"}
	tc := tls.Server(agent, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.s.Handshake)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		return &protocol.RefusedError{Outcome: "handshake", Err: fmt.Errorf("agent TLS handshake: %w", err)}
	}
	c.s.Agent.SetDeadline(time.Time{})
	c.agent = tc
	if err := c.s.Recorder.Start(ctx); err != nil {
		return err
	}
	c.settleUpstream()
	defer c.closeUpstream()
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		if up := c.dialRelay(ctx); up != nil {
			c.serveRelay(ctx, tc, up)
		} else {
			c.serveHTTP2(ctx, tc)
		}
		return c.ended()
	}
	// The first request is bounded as the handshake was.
	c.s.Agent.SetReadDeadline(time.Now().Add(c.s.Handshake))
	return c.serveHTTP1(ctx, c.headReader(tc))
}

// closeUpstream ends the session's use of its upstream connections: an
// HTTP/1.1 connection in step with its server is kept for the identity's
// next session (idle1), as its client's idle connections are
// (transports).
func (c *conn) closeUpstream() {
	c.up1.keep()
}

// settleUpstream settles how the session reaches its upstream: in the clear,
// or TLS verified for the agent's server name and resumed from the
// target's earlier connections when it can be.
func (c *conn) settleUpstream() {
	c.scheme = "http"
	c.up1.c = c
	if c.t.Mode == Intercept {
		c.scheme = "https"
		c.upTLS = &tls.Config{ServerName: c.serverName, RootCAs: c.t.RootCAs, MinVersion: tls.VersionTLS12,
			ClientSessionCache: c.d.sessionCache(c.target, c.t.RootCAs)}
	}
}

// client returns the net/http client of the session's identity and
// upstream (transports), taken at the session's first use: most sessions
// never need one (upstream1 and relay2 serve their requests).
func (c *conn) client() *nethttp.Transport {
	c.transportMu.Lock()
	defer c.transportMu.Unlock()
	if c.transport == nil {
		c.transport = c.d.transports.get(c.idleKey(false), c.newClient)
	}
	return c.transport
}

// newClient makes a client for the session's identity and upstream: every
// connection it opens is the Upstream's of the session whose request
// opened it (its context's: see roundTrip), TLS as the session's
// (verified for the same server name against the same roots), HTTP/2 when
// the server offers it.
func (c *conn) newClient() *nethttp.Transport {
	t := &nethttp.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			up, _ := ctx.Value(upstreamKey{}).(protocol.Upstream)
			if up == nil {
				return nil, errors.New("a request without its session's upstream")
			}
			return up.Dial(ctx)
		},
		MaxResponseHeaderBytes: int64(c.maxHeader),
		TLSHandshakeTimeout:    c.s.Handshake,
		IdleConnTimeout:        idleFor,
		MaxIdleConnsPerHost:    idlePerKey,
		// The agent's Accept-Encoding goes upstream as it is, and the
		// answer comes back as it was encoded.
		DisableCompression: true,
		ForceAttemptHTTP2:  true,
	}
	if c.upTLS != nil {
		// The Transport sets its copy's NextProtos at its first request.
		t.TLSClientConfig = c.upTLS.Clone()
	}
	return t
}

// upstreamKey is the context key of the session's protocol.Upstream in a
// request its client (transports) sends: a client outlives the session
// that made it, and dials for the session whose request needs a
// connection.
type upstreamKey struct{}

// roundTrip sends out through the session's client.
func (c *conn) roundTrip(out *nethttp.Request) (*nethttp.Response, error) {
	return c.client().RoundTrip(out.WithContext(context.WithValue(out.Context(), upstreamKey{}, c.s.Upstream)))
}

// serveHTTP1 serves HTTP/1.1 requests one after another until the agent
// or the exchange ends the connection. Each head is checked for ambiguous
// framing before net/http reads it.
func (c *conn) serveHTTP1(ctx context.Context, br *bufio.Reader) error {
	for first := true; ; first = false {
		if !first {
			c.agent.SetReadDeadline(time.Now().Add(orDefault(c.d.IdleTimeout, DefaultIdleTimeout)))
		}
		req, status, err := nextRequest(br)
		if errors.Is(err, errHeadTooLarge) && br.Size() < c.maxHeader {
			// A head longer than the buffer: read on through one of the
			// cap, around what the first holds.
			br = bufio.NewReaderSize(br, c.maxHeader)
			req, status, err = nextRequest(br)
		}
		switch {
		case status == nethttp.StatusRequestHeaderFieldsTooLarge:
			c.refuse1(nil, errorResponse(status, "request head too large"))
			return &protocol.LimitError{Limit: "message_buffer", Msg: fmt.Sprintf("request head over %d bytes", c.maxHeader)}
		case status != 0:
			c.refuse1(nil, errorResponse(status, err.Error()))
			return &protocol.ViolationError{Msg: err.Error()}
		case err != nil:
			return nil // the agent closed, or stalled before a request
		}
		if !c.chosen {
			if err := c.choose(ctx, hostOf(req.Host)); err != nil {
				c.reply1(req, errorResponse(nethttp.StatusForbidden, err.Error()))
				return err
			}
			if c.t.Mode != Plain {
				c.reply1(req, errorResponse(nethttp.StatusBadRequest, "this target is reached over TLS"))
				return &protocol.RefusedError{Outcome: "handshake", Err: fmt.Errorf("target %s speaks TLS and the agent sent plain HTTP", c.target)}
			}
			if err := c.s.Recorder.Start(ctx); err != nil {
				c.reply1(req, errorResponse(nethttp.StatusServiceUnavailable, protocol.Unrecordable))
				return err
			}
			c.serverName = hostOf(req.Host)
			c.settleUpstream()
			defer c.closeUpstream()
		}
		c.agent.SetReadDeadline(time.Time{})
		if strings.EqualFold(req.Header.Get("Expect"), "100-continue") && req.Body != nethttp.NoBody {
			// The agent waits for a go-ahead before it sends the body: it
			// gets one when the body is first read, that is once the
			// request has been allowed, as net/http's server does.
			req.Header.Del("Expect")
			req.Body = &continueBody{ReadCloser: req.Body, agent: c.agent}
		}
		resp := c.exchange(ctx, req)
		if resp.StatusCode == nethttp.StatusSwitchingProtocols {
			return c.upgraded(resp, br)
		}
		// What the exchange did not read of the body (a request denied
		// before its body came) is read and dropped before the answer, as
		// nginx discards it: the agent is still sending it, and most
		// clients read no answer until they are done. The connection then
		// goes on. When the body does not end within bounds (one declared
		// over max_request_body never does), or when the agent still holds
		// it back for a go-ahead (which it then never gets: RFC 9110,
		// 10.1.1), the answer ends the connection instead.
		cb, held := req.Body.(*continueBody)
		if held && !cb.sent || !drain(req, c.agent.SetReadDeadline, c.maxBody) {
			// Not closed: net/http's Close of a request body reads it to
			// its end.
			c.refuse1(req, resp)
			return c.ended()
		}
		req.Body.Close()
		if err := c.reply1(req, resp); err != nil {
			return nil
		}
		if err := c.ended(); err != nil {
			return err
		}
		if req.Close || resp.Close {
			return nil
		}
	}
}

// nextRequest reads the next HTTP/1.1 request from br after checking its
// head for ambiguous framing. A request that must be refused comes back
// with the status to refuse it with; an error and no status is the agent
// gone or silent.
func nextRequest(br *bufio.Reader) (*nethttp.Request, int, error) {
	head, err := peekHead(br)
	switch {
	case errors.Is(err, errHeadTooLarge):
		return nil, nethttp.StatusRequestHeaderFieldsTooLarge, err
	case err != nil:
		return nil, 0, err
	}
	if why := ambiguous(head); why != "" {
		return nil, nethttp.StatusBadRequest, errors.New("ambiguous request framing: " + why)
	}
	req, err := nethttp.ReadRequest(br)
	if err != nil {
		return nil, nethttp.StatusBadRequest, fmt.Errorf("malformed request: %w", err)
	}
	return req, 0, nil
}

// refuse1 answers req (nil: a request that could not be read) and ends
// the connection as net/http does: the sending side first, then what the
// agent still sends is read and dropped for a moment, so that closing with
// unread bytes does not reset the connection before the agent has read
// the answer.
func (c *conn) refuse1(req *nethttp.Request, resp *nethttp.Response) {
	resp.Close = true
	if c.reply1(req, resp) != nil {
		return
	}
	protocol.CloseWrite(c.agent)
	c.agent.SetReadDeadline(time.Now().Add(lingerTime))
	io.Copy(io.Discard, io.LimitReader(c.agent, lingerBytes))
}

// How long, and how much, refuse1 reads after its answer.
const (
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 256 << 10
)

// drain reads what the exchange left unread of req's body and drops it,
// and reports whether the body ended within max bytes (the deadline then
// cleared); one declared longer is not read at all. Each read may wait
// drainIdle (set through deadline): as long as nginx's lingering_timeout,
// so that a client pausing while it makes its body (git's pack) is not cut
// off mid-upload.
func drain(req *nethttp.Request, deadline func(time.Time) error, max int64) bool {
	switch {
	case req.Body == nethttp.NoBody:
		return true
	case req.ContentLength > max:
		return false
	}
	for n := int64(0); n <= max; {
		deadline(time.Now().Add(drainIdle))
		m, err := io.CopyN(io.Discard, req.Body, 64<<10)
		n += m
		if err == io.EOF && n <= max {
			deadline(time.Time{})
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

const drainIdle = 5 * time.Second

// reply1 writes resp to an HTTP/1.1 agent and closes its body. A response
// after which the connection ends says so ("Connection: close", RFC 9112,
// 9.6), so the agent learns it from the answer, not from a reset of its
// next request; the upstream's answer does not carry it ("close" is
// hop-by-hop, and an HTTP/2 upstream has no such header).
func (c *conn) reply1(req *nethttp.Request, resp *nethttp.Response) error {
	defer resp.Body.Close()
	resp.Request = req
	if req == nil || req.Close || c.ended() != nil {
		resp.Close = true
	}
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	if resp.ContentLength < 0 && len(resp.TransferEncoding) == 0 {
		resp.TransferEncoding = []string{"chunked"}
	}
	w := replyWriters.Get().(*bufio.Writer)
	w.Reset(c.agent)
	err := writeResponse(w, resp)
	w.Reset(nil)
	replyWriters.Put(w)
	return err
}

// replyBuffer holds a response head and the start of its body: one TLS
// record's worth.
const replyBuffer = 16 << 10

// replyWriters are the buffers answers are written through, each held
// only while one answer is written: a buffer per connection was a sixth
// of what a new intercepted connection allocated (18 of 95 KB), and a
// connection idle between requests kept its 16 KiB.
var replyWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, replyBuffer) }}

// writeResponse writes resp through w and flushes it. net/http writes a
// head a line at a time, and on a TLS connection every write would be a
// record and a system call of its own: the head goes out with the first
// read of the body, and what is buffered goes out before every later read,
// which may wait, so a streamed body is never held back. A body of unknown
// length may wait for its first byte too (server-sent events), so its head
// goes out before the first read.
func writeResponse(w *bufio.Writer, resp *nethttp.Response) error {
	if resp.Body != nil && resp.Body != nethttp.NoBody {
		resp.Body = &flushingBody{ReadCloser: resp.Body, w: w, first: resp.ContentLength >= 0}
	}
	if err := resp.Write(noReadFrom{w}); err != nil {
		return err
	}
	return w.Flush()
}

// noReadFrom is a bufio.Writer without ReadFrom, which would read a body
// into the Writer's own buffer, under the flush in flushingBody.Read. It
// keeps WriteString: net/http writes a head's lines with it, and without
// it each line was copied to a new slice.
type noReadFrom struct{ w *bufio.Writer }

func (n noReadFrom) Write(p []byte) (int, error)       { return n.w.Write(p) }
func (n noReadFrom) WriteString(s string) (int, error) { return n.w.WriteString(s) }

// flushingBody flushes w before each read of the body it wraps but the
// first of a body of known length.
type flushingBody struct {
	io.ReadCloser
	w     *bufio.Writer
	first bool
}

func (b *flushingBody) Read(p []byte) (int, error) {
	if b.first {
		b.first = false
	} else if err := b.w.Flush(); err != nil {
		return 0, err
	}
	return b.ReadCloser.Read(p)
}

// serveHTTP2 serves the agent's HTTP/2 connection, a stream per request.
func (c *conn) serveHTTP2(ctx context.Context, tc *tls.Conn) {
	srv := &http2.Server{MaxConcurrentStreams: orDefault(c.d.MaxConcurrentStreams, DefaultMaxConcurrentStreams),
		IdleTimeout: orDefault(c.d.IdleTimeout, DefaultIdleTimeout)}
	// The base server's Shutdown ends the connection gracefully (GOAWAY,
	// streams under way finish): see serveStream.
	c.h2base = &nethttp.Server{MaxHeaderBytes: c.maxHeader}
	if err := http2.ConfigureServer(c.h2base, srv); err != nil {
		return
	}
	srv.ServeConn(tlsBatchConn{&batchConn{Conn: tc}}, &http2.ServeConnOpts{Context: ctx, BaseConfig: c.h2base, Handler: nethttp.HandlerFunc(c.serveStream)})
}

// streamBufs are serveStream's copy buffers: one per stream answered
// was most of what a stream allocated.
var streamBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// serveStream answers one HTTP/2 stream.
func (c *conn) serveStream(w nethttp.ResponseWriter, req *nethttp.Request) {
	var body *streamBody
	if req.ContentLength != 0 {
		body = &streamBody{ReadCloser: req.Body}
		req.Body = body
	}
	resp := c.exchange(req.Context(), req)
	defer resp.Body.Close()
	h := w.Header()
	for k, v := range resp.Header {
		h[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	rc := nethttp.NewResponseController(w)
	bp := streamBufs.Get().(*[]byte)
	defer streamBufs.Put(bp)
	buf := *bp
	var sent int64
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			sent += int64(n)
		}
		if err != nil {
			break
		}
		// The next read may wait for the upstream: what was written goes
		// out first, unless the body is known to be whole, when the
		// stream's end goes with it. Flushing after every write cost a
		// frame write of its own per stream; left to the end, the server
		// writes the streams answered together in one.
		if resp.ContentLength < 0 || sent < resp.ContentLength {
			rc.Flush()
		}
	}
	// Trailers (gRPC's status) are known only once the body is read:
	// sent undeclared, as net/http allows with TrailerPrefix.
	for k, v := range resp.Trailer {
		h[nethttp.TrailerPrefix+k] = v
	}
	if body != nil && !body.done.Load() && sent > 0 {
		// The answer came before the body did (a denied upload): a stream
		// ended while the agent still sends is reset (RFC 9113, 8.1,
		// RST_STREAM NO_ERROR), which curl before 8 takes for a failed
		// transfer and never shows the answer. The answer goes out now,
		// and the stream ends once the body has been read and dropped
		// (see drain). An answer without a body is left as it is: gRPC's
		// trailers-only answer must be one HEADERS frame that ends the
		// stream.
		rc.Flush()
		drain(req, rc.SetReadDeadline, c.maxBody)
	}
	if c.ended() != nil {
		// The connection ends once its streams are answered.
		go c.h2base.Shutdown(context.Background())
	}
}

// streamBody is an HTTP/2 request body that knows whether it was read to
// its end or closed. done is atomic: after an answer that came before
// the body, the upstream transport's writer may still be in a Read while
// serveStream drains.
type streamBody struct {
	io.ReadCloser
	done atomic.Bool
}

func (b *streamBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.done.Store(true)
	}
	return n, err
}

func (b *streamBody) Close() error {
	b.done.Store(true)
	return b.ReadCloser.Close()
}

// continueBody sends an HTTP/1.1 agent "100 Continue" before the first
// read of a body it holds back until told.
type continueBody struct {
	io.ReadCloser
	agent net.Conn
	sent  bool
}

func (b *continueBody) Read(p []byte) (int, error) {
	if !b.sent {
		b.sent = true
		cont := &nethttp.Response{StatusCode: nethttp.StatusContinue, Status: "100 Continue", ProtoMajor: 1, ProtoMinor: 1, Header: nethttp.Header{}}
		if err := cont.Write(b.agent); err != nil {
			return 0, err
		}
	}
	return b.ReadCloser.Read(p)
}

// hostOf is a Host or :authority without its port, lower case.
func hostOf(hostport string) string {
	h := hostport
	// Only a colon after any bracket can begin a port: without one,
	// SplitHostPort fails, and its error is an allocation, two a request
	// (a Host header usually has no port).
	if strings.LastIndexByte(h, ':') > strings.LastIndexByte(h, ']') {
		if host, _, err := net.SplitHostPort(hostport); err == nil {
			h = host
		}
	}
	return strings.ToLower(strings.TrimSuffix(strings.Trim(h, "[]"), "."))
}
