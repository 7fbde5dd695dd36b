package http

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// recorder keeps what a session recorded (protocol.Recorder).
type recorder struct {
	mu      sync.Mutex
	msgs    []protocol.Message
	relayed [2]int64
}

func (r *recorder) Start(context.Context) error { return nil }
func (r *recorder) Ready() error                { return nil }

func (r *recorder) Record(m protocol.Message) {
	if !m.FromClient && bytes.Contains(m.Body, []byte("X-Defect")) {
		// A defect reached by what the server sent
		// (TestDefectEndsItsSession).
		panic("recorder defect")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	m.Body = append([]byte(nil), m.Body...)
	r.msgs = append(r.msgs, m)
}

func (r *recorder) Relayed(fromAgent, toAgent int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.relayed[0] += fromAgent
	r.relayed[1] += toAgent
}

func (r *recorder) types() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, m := range r.msgs {
		b.WriteByte(m.Type)
	}
	return b.String()
}

// enforcer denies paths under /deny/ as rule "no-deny" and allows the
// rest (protocol.Enforcer).
type enforcer struct {
	mu   sync.Mutex
	seen []protocol.Request
	// release, when set, ends the wait of requests under /hold/, which are
	// held for approval and then approved.
	release chan struct{}
}

func (e *enforcer) Decide(_ context.Context, r protocol.Request) protocol.Verdict {
	e.mu.Lock()
	e.seen = append(e.seen, r)
	e.mu.Unlock()
	if strings.HasPrefix(r.Text, "/hold/") {
		return protocol.Verdict{Action: protocol.Hold, Rule: "held", ApprovalID: "a1", Wait: func(ctx context.Context) (bool, string) {
			select {
			case <-e.release:
				return true, ""
			case <-ctx.Done():
				return false, "gone"
			}
		}}
	}
	if strings.HasPrefix(r.Text, "/defect/") {
		// A defect on the stream's own goroutine (TestDefectEndsItsSession).
		return protocol.Verdict{Action: protocol.Hold, Rule: "held", ApprovalID: "a2", Wait: func(context.Context) (bool, string) {
			panic("wait defect")
		}}
	}
	if strings.HasPrefix(r.Text, "/mask/") {
		return protocol.Verdict{Action: protocol.Mask, Rule: "masked", Mask: emailMasker{}}
	}
	if strings.HasPrefix(r.Text, "/deny/") {
		return protocol.Verdict{Action: protocol.Deny, Rule: "no-deny"}
	}
	return protocol.Verdict{Action: protocol.Allow, Rule: "ok"}
}

type upstream struct{ addr string }

func (u upstream) Addr() string { return u.addr }

// The decoder keeps no server connections between sessions.
func (upstream) Resume(string) (io.Closer, bool) { return nil, false }
func (upstream) Parking(string) func(io.Closer) bool {
	return func(io.Closer) bool { return false }
}
func (u upstream) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", u.addr)
}
func (upstream) Credential(context.Context, protocol.CredentialRequest) (protocol.Credential, error) {
	return protocol.Credential{}, nil
}

// harness runs one Decoder session per connection to its listener.
type harness struct {
	t    testing.TB
	ln   net.Listener
	rec  *recorder
	enf  *enforcer
	errs chan error
	// upstreamHits counts requests the upstream server saw, upstreamConns
	// the connections it accepted.
	upstreamHits  atomic.Int64
	upstreamConns atomic.Int64
	up            *httptest.Server
	roots         *x509.CertPool
	d             *Decoder
	// identity is the identity of the sessions the harness starts ("ci"
	// unless set).
	identity atomic.Pointer[string]
}

type harnessOpts struct {
	refuse  *protocol.LimitError
	idle    time.Duration
	mode    Mode
	tls     bool // the upstream speaks TLS
	roots   func(h *harness) *x509.CertPool
	selectf func(ctx context.Context, name string) (string, protocol.Verdict)
	upIdle  time.Duration // the upstream server's idle timeout
	// front, when set, puts a server of its own between the decoder and
	// the upstream server: it returns the address the decoder dials.
	front func(t testing.TB, upstream string) string
	// maxHeader is the decoder's MaxHeaderBytes (0: the default).
	maxHeader int
	// upStreams bounds the upstream's concurrent HTTP/2 streams (0: its
	// default).
	upStreams int
	// upPing makes the upstream's HTTP/2 server PING a connection silent
	// for this long, and close it when the answer is as late.
	upPing time.Duration
	guard  Guard
	// upH1 makes the upstream offer HTTP/1.1 alone.
	upH1 bool
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	h := &harness{t: t, rec: &recorder{}, enf: &enforcer{}, errs: make(chan error, 16)}
	h.up = httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		h.upstreamHits.Add(1)
		if serveMaskable(w, r) {
			return
		}
		if serveRelayPaths(w, r) {
			return
		}
		if r.URL.Path == "/trailers" {
			io.WriteString(w, "streamed")
			w.Header().Set(nethttp.TrailerPrefix+"Grpc-Status", "0")
			return
		}
		if r.URL.Path == "/early" {
			// Answers without waiting for the body, as nginx's return does.
			io.WriteString(w, "early")
			w.(nethttp.Flusher).Flush()
			return
		}
		if r.URL.Path == "/hints" {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(nethttp.StatusEarlyHints)
		}
		if r.URL.Path == "/close" {
			w.Header().Set("Connection", "close")
		}
		if r.URL.Path == "/upstream-defect" {
			w.Header().Set("X-Defect", "1")
		}
		if r.URL.Path == "/ws" {
			websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }).ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Upstream-Proto", r.Proto)
		w.Header().Set("X-Upstream-User-Agent", fmt.Sprintf("%q", r.Header["User-Agent"]))
		w.Header().Set("X-Upstream-Resumed", strconv.FormatBool(r.TLS != nil && r.TLS.DidResume))
		fmt.Fprintf(w, "upstream %s %s host=%s body=%q", r.Method, r.URL.RequestURI(), r.Host, body)
	}))
	h.up.Config.IdleTimeout = o.upIdle
	h.up.Config.HTTP2 = &nethttp.HTTP2Config{MaxConcurrentStreams: o.upStreams, SendPingTimeout: o.upPing, PingTimeout: o.upPing}
	h.up.Config.ConnState = func(_ net.Conn, s nethttp.ConnState) {
		if s == nethttp.StateNew {
			h.upstreamConns.Add(1)
		}
	}
	if o.tls {
		h.up.EnableHTTP2 = !o.upH1
		h.up.StartTLS()
		h.roots = x509.NewCertPool()
		h.roots.AddCert(h.up.Certificate())
	} else {
		h.up.Start()
	}
	t.Cleanup(h.up.Close)
	roots := h.roots
	if o.roots != nil {
		roots = o.roots(h)
	}
	upAddr := h.up.Listener.Addr().String()
	if o.front != nil {
		upAddr = o.front(t, upAddr)
	}
	d := &Decoder{Target: func(string) (Target, error) { return Target{Mode: o.mode, RootCAs: roots}, nil }, IdleTimeout: o.idle,
		MaxHeaderBytes: o.maxHeader, Guard: o.guard}
	h.d = d
	ci := "ci"
	h.identity.Store(&ci)
	h.ln = serveEach(t, func(agent net.Conn) {
		s := &protocol.Session{ID: "s", Identity: *h.identity.Load(), Agent: agent, Target: "api", Connect: protocol.Verdict{Action: protocol.Allow},
			Handshake: 5 * time.Second, Upstream: upstream{upAddr}, Enforcer: h.enf, Recorder: h.rec,
			Select: o.selectf, Refuse: o.refuse}
		if o.tls {
			// The agent side presents the same certificate as the
			// upstream: the test client trusts it.
			s.TLS = func() *tls.Config { return &tls.Config{Certificates: h.up.TLS.Certificates} }
		}
		h.errs <- d.Serve(context.Background(), s)
	})
	return h
}

// serveEach listens on loopback and runs serve on each connection, in a
// goroutine of its own, until the test ends.
func serveEach(t testing.TB, serve func(net.Conn)) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return ln
}

// client returns an HTTP client whose every connection reaches the
// harness, over TLS for server name example.com when tls.
func (h *harness) client(tlsOn, h2 bool) *nethttp.Client {
	tr := &nethttp.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", h.ln.Addr().String())
		},
		ForceAttemptHTTP2: h2,
		MaxConnsPerHost:   1,
	}
	if tlsOn {
		tr.TLSClientConfig = &tls.Config{RootCAs: h.roots, ServerName: "example.com"}
		if !h2 {
			tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
		}
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &nethttp.Client{Transport: tr, Timeout: 10 * time.Second}
}

func get(t *testing.T, c *nethttp.Client, url string) (*nethttp.Response, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestIntercept(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
			c := h.client(true, h2)
			resp, body := get(t, c, "https://example.com/repos/x?y=1")
			wantProto := "HTTP/1.1"
			if h2 {
				wantProto = "HTTP/2.0"
			}
			if resp.StatusCode != 200 || resp.Proto != wantProto || !strings.Contains(body, "upstream GET /repos/x?y=1 host=example.com") {
				t.Fatalf("allowed: %d %s %q", resp.StatusCode, resp.Proto, body)
			}
			// An HTTP/1.1 agent's requests without a body go over HTTP/1.1
			// (see upstream1); everything else over HTTP/2, which the
			// server offers.
			if up := resp.Header.Get("X-Upstream-Proto"); up != wantProto {
				t.Errorf("upstream spoke %s, want %s", up, wantProto)
			}
			resp, body = get(t, c, "https://example.com/deny/me")
			var denial struct{ Rule string }
			if resp.StatusCode != 403 || json.Unmarshal([]byte(body), &denial) != nil || denial.Rule != "no-deny" {
				t.Fatalf("denied: %d %q", resp.StatusCode, body)
			}
			// The same connection goes on.
			resp, _ = get(t, c, "https://example.com/after")
			if resp.StatusCode != 200 {
				t.Fatalf("after a denial: %d", resp.StatusCode)
			}
			if got := h.upstreamHits.Load(); got != 2 {
				t.Errorf("upstream saw %d requests, want 2 (the denied one never went)", got)
			}
			if n := len(h.enf.seen); n != 3 || h.enf.seen[0].Host != "example.com" || h.enf.seen[0].Operation != "GET" {
				t.Errorf("decided %+v", h.enf.seen)
			}
			// The last body is recorded once written, after the client
			// may have read it.
			for deadline := time.Now().Add(5 * time.Second); h.rec.types() != "hHBhihHB" && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
			if ty := h.rec.types(); ty != "hHBhihHB" {
				t.Errorf("recorded types %q, want hHBhihHB", ty)
			}
			post, err := c.Post("https://example.com/repos/x", "text/plain", strings.NewReader("a body"))
			if err != nil {
				t.Fatal(err)
			}
			pb, _ := io.ReadAll(post.Body)
			post.Body.Close()
			if up := post.Header.Get("X-Upstream-Proto"); post.StatusCode != 200 || up != "HTTP/2.0" || !strings.Contains(string(pb), `body="a body"`) {
				t.Errorf("POST: %d over %s upstream: %q", post.StatusCode, up, pb)
			}
		})
	}
}

func TestHostMustMatchServerName(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	c := h.client(true, false)
	req, _ := nethttp.NewRequest("GET", "https://example.com/x", nil)
	req.Host = "other.example.com"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != nethttp.StatusMisdirectedRequest || h.upstreamHits.Load() != 0 {
		t.Errorf("Host other than SNI: %d, upstream hits %d", resp.StatusCode, h.upstreamHits.Load())
	}
}

func TestUpstreamCertificateMustVerify(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true, roots: func(*harness) *x509.CertPool { return x509.NewCertPool() }})
	resp, _ := get(t, h.client(true, false), "https://example.com/x")
	if resp.StatusCode != nethttp.StatusBadGateway {
		t.Fatalf("unverified upstream: %d, want 502", resp.StatusCode)
	}
	var refused *protocol.RefusedError
	if err := <-h.errs; !errors.As(err, &refused) || refused.Outcome != "upstream certificate" {
		t.Errorf("Serve: %v, want the upstream certificate refusal", err)
	}
}

func TestPassthrough(t *testing.T) {
	var asked atomic.Value
	h := newHarness(t, harnessOpts{mode: Passthrough, tls: true, selectf: func(_ context.Context, name string) (string, protocol.Verdict) {
		asked.Store(name)
		if name == "example.com" {
			return "api", protocol.Verdict{Action: protocol.Allow, Rule: "ok"}
		}
		return "", protocol.Verdict{Action: protocol.Deny, Rule: "unknown-host"}
	}})
	conn, err := tls.Dial("tcp", h.ln.Addr().String(), &tls.Config{RootCAs: h.roots, ServerName: "example.com", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	// The agent sees the upstream's own certificate.
	if !conn.ConnectionState().PeerCertificates[0].Equal(h.up.Certificate()) {
		t.Error("passthrough: the agent did not get the upstream's certificate")
	}
	fmt.Fprintf(conn, "GET /deny/anything HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
	resp, err := nethttp.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("passthrough request: %v %v", resp, err)
	}
	conn.Close()
	if err := <-h.errs; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if ty := h.rec.types(); ty != "tn" || len(h.enf.seen) != 0 {
		t.Errorf("recorded %q, decided %d requests: passthrough decides nothing inside", ty, len(h.enf.seen))
	}
	// What it relayed is counted, though not recorded: a TLS handshake and
	// a request each way, more than a few hundred bytes.
	h.rec.mu.Lock()
	relayed := h.rec.relayed
	h.rec.mu.Unlock()
	if relayed[0] < 300 || relayed[1] < 1000 {
		t.Errorf("passthrough relayed %d bytes from the agent and %d to it, want a TLS session's", relayed[0], relayed[1])
	}
	// A name no target has is refused in TLS's words: access_denied, not
	// an internal error.
	_, err = tls.Dial("tcp", h.ln.Addr().String(), &tls.Config{RootCAs: h.roots, ServerName: "evil.test"})
	if err == nil || !strings.Contains(err.Error(), "remote error: tls: access denied") {
		t.Errorf("denied server name: %v, want a TLS access_denied alert", err)
	}
	var refused *protocol.RefusedError
	if err := <-h.errs; !errors.As(err, &refused) || refused.Outcome != "denied" || asked.Load() != "evil.test" {
		t.Errorf("Serve: %v", err)
	}
}

func TestPlainSelectsByHost(t *testing.T) {
	var names []string
	h := newHarness(t, harnessOpts{mode: Plain, selectf: func(_ context.Context, name string) (string, protocol.Verdict) {
		names = append(names, name)
		return "api", protocol.Verdict{Action: protocol.Allow}
	}})
	c := h.client(false, false)
	resp, body := get(t, c, "http://intranet.test/x")
	if resp.StatusCode != 200 || !strings.Contains(body, "host=intranet.test") {
		t.Fatalf("plain: %d %q", resp.StatusCode, body)
	}
	req, _ := nethttp.NewRequest("GET", "http://intranet.test/y", nil)
	req.Host = "elsewhere.test"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != nethttp.StatusMisdirectedRequest || len(names) != 1 || names[0] != "intranet.test" {
		t.Errorf("second Host on the connection: %d, selected %v", resp.StatusCode, names)
	}
}

// TestAmbiguousFraming sends requests that parsers frame differently: each
// gets 400 and nothing reaches the upstream.
func TestAmbiguousFraming(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Plain})
	for _, raw := range []string{
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /deny/x HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
		"GET /a/../deny/x HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd",
	} {
		conn, err := net.Dial("tcp", h.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, raw)
		resp, err := nethttp.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 400 {
			t.Errorf("%q: %v %v, want 400", raw, resp, err)
		}
		conn.Close()
	}
	if n := h.upstreamHits.Load(); n != 0 {
		t.Errorf("the upstream saw %d requests, want none", n)
	}
}

// TestHeadCap: a request head up to the decoder's cap goes through, one
// over it gets 431 and reaches nothing, plain and intercepted, with caps
// below and above the buffer a connection's first bytes are read through.
func TestHeadCap(t *testing.T) {
	for _, c := range []struct {
		name      string
		maxHeader int
		tls       bool
	}{
		{"plain, small cap", 1 << 10, false},
		{"plain, default cap", 0, false},
		{"intercept, small cap", 1 << 10, true},
		{"intercept, default cap", 0, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			mode := Plain
			if c.tls {
				mode = Intercept
			}
			h := newHarness(t, harnessOpts{mode: mode, tls: c.tls, maxHeader: c.maxHeader})
			limit := orDefault(c.maxHeader, DefaultMaxHeaderBytes)
			client := h.client(c.tls, false)
			url := "http://example.com/"
			if c.tls {
				url = "https://example.com/"
			}
			do := func(pad int) int {
				req, _ := nethttp.NewRequest("GET", url, nil)
				req.Header.Set("X-Pad", strings.Repeat("p", pad))
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("head with %d bytes of padding: %v", pad, err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			// Go's client adds Host, User-Agent and Accept-Encoding: well
			// under 200 bytes besides the padding.
			if got := do(limit - 300); got != 200 {
				t.Errorf("head just under the %d-byte cap: %d, want 200", limit, got)
			}
			hits := h.upstreamHits.Load()
			if got := do(limit); got != nethttp.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("head over the %d-byte cap: %d, want 431", limit, got)
			}
			if n := h.upstreamHits.Load(); n != hits {
				t.Errorf("a head over the cap reached the upstream")
			}
		})
	}
	// A head that grows the buffer, sent with the next request behind it:
	// both arrive whole, in order.
	h := newHarness(t, harnessOpts{mode: Plain})
	conn, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	big := "GET /first HTTP/1.1\r\nHost: a\r\nX-Pad: " + strings.Repeat("p", 3*headBuffer) + "\r\n\r\n"
	io.WriteString(conn, big+"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody")
	br := bufio.NewReader(conn)
	for _, want := range []string{`upstream GET /first host=a body=""`, `upstream POST /second host=a body="body"`} {
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("pipelined after a long head: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != want {
			t.Errorf("pipelined after a long head: %d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
}

func TestMalformedHello(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	conn, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff})
	var v *protocol.ViolationError
	if err := <-h.errs; !errors.As(err, &v) {
		t.Errorf("Serve: %v, want a violation", err)
	}
	conn.Close()
	// The next connection is served as ever.
	if resp, _ := get(t, h.client(true, false), "https://example.com/x"); resp.StatusCode != 200 {
		t.Errorf("after a malformed hello: %d", resp.StatusCode)
	}
}

// TestHoldHoldsOneStream: a request held for approval waits alone; another
// stream of the same HTTP/2 connection completes meanwhile.
func TestHoldHoldsOneStream(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	h.enf.release = make(chan struct{})
	c := h.client(true, true)
	held := make(chan string, 1)
	go func() {
		resp, body := get(t, c, "https://example.com/hold/deploy")
		held <- fmt.Sprintf("%d %s", resp.StatusCode, body)
	}()
	for deadline := time.Now().Add(5 * time.Second); ; {
		h.enf.mu.Lock()
		n := len(h.enf.seen)
		h.enf.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the held request was never decided")
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, _ := get(t, c, "https://example.com/fast")
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
		t.Fatalf("the other stream: %d %s", resp.StatusCode, resp.Proto)
	}
	select {
	case r := <-held:
		t.Fatalf("the held request answered before its approval: %s", r)
	default:
	}
	close(h.enf.release)
	if r := <-held; !strings.HasPrefix(r, "200 upstream GET /hold/deploy") {
		t.Errorf("the approved request: %s", r)
	}
}

// TestDefectEndsItsSession: a panic on a goroutine of an HTTP/2 session
// besides its own (the one a stream is exchanged on, or the one reading
// the upstream connection's frames) ends that session with the defect,
// not the process; the next connection is served. An upstream connection
// whose reader panicked is closed, not kept.
func TestDefectEndsItsSession(t *testing.T) {
	for _, tc := range []struct {
		path, where, value string
		upstreamConns      int64
	}{
		{"/defect/x", "http/2 exchange", "wait defect", 1},
		{"/upstream-defect", "http/2 upstream connection", "recorder defect", 2},
	} {
		t.Run(tc.where, func(t *testing.T) {
			h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
			if resp, err := h.client(true, true).Get("https://example.com" + tc.path); err == nil {
				resp.Body.Close()
				t.Errorf("the request that reached the defect was answered: %d", resp.StatusCode)
			}
			var ie *protocol.InternalError
			if err := <-h.errs; !errors.As(err, &ie) || ie.Where != tc.where || ie.Value != tc.value {
				t.Errorf("Serve: %v, want the defect in the %s", err, tc.where)
			}
			if resp, _ := get(t, h.client(true, true), "https://example.com/x"); resp.StatusCode != 200 || resp.ProtoMajor != 2 {
				t.Errorf("after the defect: %d %s", resp.StatusCode, resp.Proto)
			}
			if n := h.upstreamConns.Load(); n != tc.upstreamConns {
				t.Errorf("%d upstream connections, want %d", n, tc.upstreamConns)
			}
		})
	}
}

// TestGRPCDenied: a denied gRPC call gets PERMISSION_DENIED in gRPC's own
// words, a trailers-only response.
func TestGRPCDenied(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	req, _ := nethttp.NewRequest("POST", "https://example.com/deny/pkg.Service/Method", strings.NewReader("\x00\x00\x00\x00\x00"))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := h.client(true, true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "7" || !strings.Contains(resp.Header.Get("Grpc-Message"), "no-deny") {
		t.Errorf("denied gRPC call: %d %v", resp.StatusCode, resp.Header)
	}
	if h.upstreamHits.Load() != 0 {
		t.Error("the denied call reached the upstream")
	}
}

// TestIdleConnectionEnds: a connection that waits past IdleTimeout for its
// next request is closed, so it holds no session.
func TestIdleConnectionEnds(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Plain, idle: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	io.ReadAll(resp.Body)
	select {
	case err := <-h.errs:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was kept")
	}
}

// TestExpectContinueAndRedaction: an agent that waits for 100 Continue
// gets it once its request is allowed, and the recording keeps no
// credential the agent sent.
func TestExpectContinueAndRedaction(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Plain})
	conn, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cr3t-token\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 Continue") {
		t.Fatalf("before the body: %q %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(conn, "hello")
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `body="hello"`) {
		t.Errorf("upload: %d %q", resp.StatusCode, body)
	}
	h.rec.mu.Lock()
	defer h.rec.mu.Unlock()
	for _, m := range h.rec.msgs {
		if strings.Contains(string(m.Body), "s3cr3t") {
			t.Errorf("the recording holds the agent's credential: %q", m.Body)
		}
	}
	if !strings.Contains(string(h.rec.msgs[0].Body), "Authorization: [redacted, 19 bytes]") {
		t.Errorf("recorded head: %q", h.rec.msgs[0].Body)
	}
}

// TestBodyRecordedBeforeAnswer: a request body the recording keeps whole
// is recorded before the answer even when the upstream answers before it
// has the body and the agent sends it late, so the pcap export (Wire)
// keeps both.
func TestBodyRecordedBeforeAnswer(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	for _, h2 := range []bool{false, true} {
		h.rec.mu.Lock()
		h.rec.msgs = nil
		h.rec.mu.Unlock()
		pr, pw := io.Pipe()
		go func() {
			time.Sleep(100 * time.Millisecond)
			io.WriteString(pw, "hello")
			pw.Close()
		}()
		req, _ := nethttp.NewRequest("POST", "https://example.com/early", pr)
		req.ContentLength = 5
		resp, err := h.client(true, h2).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "early" {
			t.Fatalf("h2 %v: %q", h2, body)
		}
		h.rec.mu.Lock()
		var kinds []byte
		for _, m := range h.rec.msgs {
			kinds = append(kinds, m.Type)
		}
		h.rec.mu.Unlock()
		if want := []byte{MsgRequest, MsgRequestBody, MsgResponse, MsgResponseBody}; !bytes.Equal(kinds, want) {
			t.Errorf("h2 %v: recorded %q, want %q", h2, kinds, want)
		}
	}
	// A body over the recording's cap streams: the answer comes first,
	// and the agent's stream still ends cleanly once its body is sent.
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, 100<<10))
		time.Sleep(100 * time.Millisecond)
		pw.Write(make([]byte, 100<<10))
		pw.Close()
	}()
	req, _ := nethttp.NewRequest("POST", "https://example.com/early", pr)
	resp, err := h.client(true, true).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body, err := io.ReadAll(resp.Body); err != nil || string(body) != "early" {
		t.Errorf("a streamed body, an early answer: %q %v", body, err)
	}
	resp.Body.Close()
}

// TestDeniedBody: the body of a denied HTTP/1.1 request is read and
// dropped, and the connection carries the next request; a body the agent
// holds back for 100 Continue is never asked for, and the answer ends the
// connection.
func TestDeniedBody(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Plain})
	conn, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	body := strings.Repeat("x", 3<<20)
	go io.WriteString(conn, "POST /deny/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3145728\r\n\r\n"+body+"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	br := bufio.NewReader(conn)
	for _, want := range []int{403, 200} {
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != want || resp.Close {
			t.Fatalf("want %d on a kept connection: %v %v", want, resp, err)
		}
		io.ReadAll(resp.Body)
	}

	held, err := net.Dial("tcp", h.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	held.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(held, "POST /deny/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 3145728\r\nExpect: 100-continue\r\n\r\n")
	out, err := io.ReadAll(held)
	if err != nil || !strings.HasPrefix(string(out), "HTTP/1.1 403 ") || !strings.Contains(string(out), "Connection: close") || strings.Contains(string(out), "100 Continue") {
		t.Errorf("a held-back body: %v\n%s", err, out)
	}
	if n := h.upstreamHits.Load(); n != 1 {
		t.Errorf("the upstream served %d requests, want 1", n)
	}
}

// emailMasker masks fields whose path ends in "email" (protocol.Masker).
type emailMasker struct{}

func (emailMasker) Plan(fields []string) protocol.FieldMasker {
	var idx []int
	for i, f := range fields {
		if strings.HasSuffix(f, "email") {
			idx = append(idx, i)
		}
	}
	if idx == nil {
		return nil
	}
	return emailFields(idx)
}

type emailFields []int

func (e emailFields) Mask(dst []byte, field int, v []byte) ([]byte, bool) {
	for _, i := range e {
		if i == field {
			return append(dst, "***"...), true
		}
	}
	return dst, false
}

const maskableDoc = `{"user":{"name":"ann","email":"ann@example.com"},"team":[{"email":"bob@example.com","id":7}],"ok":true}`

// serveMaskable answers the upstream's /mask/ paths with maskableDoc:
// gzip-encoded, or chunked in two writes.
func serveMaskable(w nethttp.ResponseWriter, r *nethttp.Request) bool {
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/mask/gzip":
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, maskableDoc)
		zw.Close()
	case "/mask/chunked":
		io.WriteString(w, maskableDoc[:20])
		w.(nethttp.Flusher).Flush()
		io.WriteString(w, maskableDoc[20:])
	case "/mask/image":
		w.Header().Set("Content-Type", "image/png")
		io.WriteString(w, "ann@example.com")
	default:
		w.Header().Del("Content-Type")
		return false
	}
	return true
}

// TestMaskJSON: masked fields arrive masked, in a gzip-encoded and in a
// chunked response, with the length set anew; a response that cannot be
// masked is refused.
func TestMaskJSON(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	c := h.client(true, false)
	want := `{"user":{"name":"ann","email":"***"},"team":[{"email":"***","id":7}],"ok":true}`
	for _, path := range []string{"/mask/gzip", "/mask/chunked"} {
		req, _ := nethttp.NewRequest("GET", "https://example.com"+path, nil)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := c.Transport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		body := resp.Body
		if resp.Header.Get("Content-Encoding") == "gzip" {
			if body, err = gzip.NewReader(resp.Body); err != nil {
				t.Fatal(err)
			}
		}
		got, _ := io.ReadAll(body)
		resp.Body.Close()
		if string(got) != want || resp.ContentLength < 0 {
			t.Errorf("%s: length %d, %s", path, resp.ContentLength, got)
		}
		if path == "/mask/gzip" && resp.Header.Get("Content-Encoding") != "gzip" {
			t.Errorf("%s: the encoding was not kept", path)
		}
	}
	resp, body := get(t, c, "https://example.com/mask/image")
	if resp.StatusCode != 502 || strings.Contains(body, "ann@") {
		t.Errorf("unmaskable: %d %q", resp.StatusCode, body)
	}
}

func TestMaskJSONShapes(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"email":"a@b.c"}`, `{"email":"***"}`},
		{`[{"email":1},{"x":{"email":null}}]`, `[{"email":"***"},{"x":{"email":null}}]`},
		{` "plain" `, ` "plain" `}, // nothing to mask: as it was
		{`{"a":[],"b":{},"email":[ "x" , 2.5e3 ]}`, `{"a":[],"b":{},"email":["***","***"]}`},
	} {
		got, err := maskJSON(emailMasker{}, []byte(c.in))
		if err != nil || string(got) != c.want {
			t.Errorf("%s: %s %v, want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{`{"email":`, `{"a":1} {"b":2}`, `[1,]`} {
		if _, err := maskJSON(emailMasker{}, []byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// TestWebSocket: an allowed upgrade is passed on and the WebSocket relayed
// both ways, its bytes recorded.
func TestWebSocket(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Plain})
	cfg, err := websocket.NewConfig("ws://"+h.ln.Addr().String()+"/ws", "http://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for _, msg := range []string{"hello", "again"} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	if ty := h.rec.types(); !strings.HasPrefix(ty, "hHwW") {
		t.Errorf("recorded %q, want the upgrade then the WebSocket's bytes", ty)
	}
	if len(h.enf.seen) != 1 || h.enf.seen[0].Header["Upgrade"][0] != "websocket" {
		t.Errorf("decided %+v", h.enf.seen)
	}
}

// TestTrailers: trailers the upstream sends after its body (gRPC's status)
// reach an HTTP/2 agent.
func TestTrailers(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	resp, body := get(t, h.client(true, true), "https://example.com/trailers")
	if resp.StatusCode != 200 || body != "streamed" || resp.Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("trailers: %d %q %v", resp.StatusCode, body, resp.Trailer)
	}
}

// TestOverSessionLimit: a connection over its identity's session limit is
// told so in HTTP (503) and reaches nothing.
func TestOverSessionLimit(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Plain, refuse: &protocol.LimitError{Limit: "sessions", Msg: "identity \"ci\" already has 1 sessions open, its limit"}})
	resp, body := get(t, h.client(false, false), "http://intranet.test/x")
	if resp.StatusCode != 503 || !strings.Contains(body, "its limit") || h.upstreamHits.Load() != 0 {
		t.Errorf("over the limit: %d %q", resp.StatusCode, body)
	}
	var limit *protocol.LimitError
	if err := <-h.errs; !errors.As(err, &limit) {
		t.Errorf("Serve: %v", err)
	}
	// Over TLS: an alert, not a hang-up.
	h = newHarness(t, harnessOpts{mode: Intercept, refuse: &protocol.LimitError{Limit: "sessions", Msg: "over"}})
	if _, err := tls.Dial("tcp", h.ln.Addr().String(), &tls.Config{RootCAs: h.roots, ServerName: "api.test"}); err == nil ||
		!strings.Contains(err.Error(), "remote error: tls: internal error") {
		t.Errorf("over the limit over TLS: %v, want a TLS alert", err)
	}
	if err := <-h.errs; !errors.As(err, &limit) {
		t.Errorf("Serve: %v", err)
	}
}

// TestCloseIsAnnounced: an HTTP/1.1 request that asks for the connection
// to close gets "Connection: close" in its answer, also from an HTTP/2
// upstream, whose answer has no such header to pass on; and the
// connection ends after it.
// TestCloseIsAnnounced: the answer to a request with Connection: close
// says so, whether the request went upstream over HTTP/1.1 (no body) or
// HTTP/2 (a body), which has no such header to pass on.
func TestCloseIsAnnounced(t *testing.T) {
	for _, tc := range []struct{ req, upstream string }{
		{"GET /x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", "HTTP/1.1"},
		{"POST /x HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", "HTTP/2.0"},
	} {
		h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
		conn, err := tls.Dial("tcp", h.ln.Addr().String(), &tls.Config{RootCAs: h.roots, ServerName: "example.com", NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, tc.req)
		br := bufio.NewReader(conn)
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Proto") != tc.upstream {
			t.Fatalf("%d from upstream %s, want 200 over %s", resp.StatusCode, resp.Header.Get("X-Upstream-Proto"), tc.upstream)
		}
		if !resp.Close {
			t.Error("the answer to a request with Connection: close does not say the connection closes")
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := br.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("after the answer: read %d bytes, %v; want the connection closed", n, err)
		}
	}
}

// TestUpstream1: an HTTP/1.1 agent's requests without a body share one
// connection upstream, in order; a connection the server closed while idle
// is replaced and the request sent again, once; an answer after which the
// server closes is not followed by another request on that connection; a
// 103 Early Hints is passed over for the answer that follows it.
func TestUpstream1(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true, upIdle: 200 * time.Millisecond})
	c := h.client(true, false)
	for i := range 3 {
		if resp, body := get(t, c, fmt.Sprintf("https://example.com/n/%d", i)); resp.StatusCode != 200 || !strings.Contains(body, fmt.Sprintf("GET /n/%d", i)) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := h.upstreamConns.Load(); n != 1 {
		t.Errorf("3 requests took %d upstream connections, want 1", n)
	}
	// The server closes the idle connection; the agent's stays open.
	time.Sleep(600 * time.Millisecond)
	if resp, body := get(t, c, "https://example.com/after-idle"); resp.StatusCode != 200 || !strings.Contains(body, "GET /after-idle") {
		t.Fatalf("after the server closed its idle connection: %d %q", resp.StatusCode, body)
	}
	if n := h.upstreamConns.Load(); n != 2 {
		t.Errorf("upstream connections %d, want 2", n)
	}
	if resp, _ := get(t, c, "https://example.com/close"); resp.StatusCode != 200 {
		t.Fatalf("/close: %d", resp.StatusCode)
	}
	resp, body := get(t, c, "https://example.com/hints")
	if resp.StatusCode != 200 || !strings.Contains(body, "GET /hints") {
		t.Fatalf("after 103: %d %q", resp.StatusCode, body)
	}
	if n := h.upstreamConns.Load(); n != 3 {
		t.Errorf("upstream connections %d, want 3 (a new one after the server's close)", n)
	}
	if got := h.upstreamHits.Load(); got != 6 {
		t.Errorf("upstream saw %d requests, want 6 (each once)", got)
	}
}

// TestUpstream1OutOfStep: bytes a server sends past an answer are not
// taken for the answer to the agent's next request.
func TestUpstream1OutOfStep(t *testing.T) {
	var conns atomic.Int64
	ln := serveEach(t, func(c net.Conn) {
		defer c.Close()
		n := conns.Add(1)
		br := bufio.NewReader(c)
		for {
			req, err := nethttp.ReadRequest(br)
			if err != nil {
				return
			}
			body := fmt.Sprintf("genuine %s on connection %d", req.URL.Path, n)
			answer := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			if n == 1 {
				answer += "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
			}
			io.WriteString(c, answer)
		}
	})
	d := &Decoder{Target: func(string) (Target, error) { return Target{Mode: Plain}, nil }}
	agent, server := net.Pipe()
	defer agent.Close()
	s := &protocol.Session{ID: "s", Identity: "ci", Agent: server, Target: "api", Connect: protocol.Verdict{Action: protocol.Allow},
		Handshake: 5 * time.Second, Upstream: upstream{ln.Addr().String()}, Enforcer: &enforcer{}, Recorder: &recorder{}}
	go d.Serve(context.Background(), s)
	br := bufio.NewReader(agent)
	for _, path := range []string{"/one", "/two"} {
		fmt.Fprintf(agent, "GET %s HTTP/1.1\r\nHost: example.com\r\n\r\n", path)
		resp, err := nethttp.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if !strings.HasPrefix(string(b), "genuine "+path) {
			t.Fatalf("%s: %q", path, b)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d upstream connections, want 2 (the one out of step not used again)", n)
	}
}

// TestUpstream1HTTP2Only: a server that refuses a client offering HTTP/1.1
// alone still serves an HTTP/1.1 agent, over HTTP/2.
func TestUpstream1HTTP2Only(t *testing.T) {
	// In front of the upstream: a ClientHello without h2 gets the
	// no_application_protocol alert of a strict HTTP/2-only server; the
	// rest is relayed.
	strict := func(t testing.TB, upstream string) string {
		return serveEach(t, func(c net.Conn) {
			defer c.Close()
			hello, br, err := peekHello(bufio.NewReader(c))
			if err != nil {
				return
			}
			if !slices.Contains(hello.ALPN, "h2") {
				c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 120})
				return
			}
			up, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer up.Close()
			go io.Copy(up, br)
			io.Copy(c, up)
		}).Addr().String()
	}
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true, front: strict})
	resp, body := get(t, h.client(true, false), "https://example.com/strict")
	if resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Proto") != "HTTP/2.0" || !strings.Contains(body, "GET /strict") {
		t.Fatalf("%d over %s: %q", resp.StatusCode, resp.Header.Get("X-Upstream-Proto"), body)
	}
}

// TestUpstreamSessionResumed: an intercepted connection resumes the
// upstream TLS session an earlier connection to the same target opened.
func TestUpstreamSessionResumed(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	for i, want := range []string{"false", "true"} {
		// A client of its own each time: a new agent connection, and so a
		// new upstream connection.
		resp, _ := get(t, h.client(true, false), "https://example.com/x")
		if resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Resumed") != want {
			t.Errorf("connection %d: %d, upstream TLS resumed %q, want %s", i+1, resp.StatusCode, resp.Header.Get("X-Upstream-Resumed"), want)
		}
	}
}

// TestUpstreamSessionsStayApart: TLS sessions are shared only by
// connections to the same target verifying against the same roots.
func TestUpstreamSessionsStayApart(t *testing.T) {
	ca := func(name string) *x509.Certificate {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true,
			BasicConstraintsValid: true, NotAfter: time.Now().Add(time.Hour)}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		return cert
	}
	pool := func(certs ...*x509.Certificate) *x509.CertPool {
		p := x509.NewCertPool()
		for _, c := range certs {
			p.AddCert(c)
		}
		return p
	}
	a, b := ca("a"), ca("b")
	var d Decoder
	first := d.sessionCache("api", pool(a))
	if d.sessionCache("api", pool(a)) != first {
		t.Error("the same target and equal roots got another cache")
	}
	if d.sessionCache("other", pool(a)) == first {
		t.Error("another target shares the cache")
	}
	if d.sessionCache("api", pool(a, b)) == first || d.sessionCache("api", nil) == first {
		t.Error("other roots share the cache")
	}
	if d.sessionCache("api", pool(a)) == first {
		t.Error("a cache of roots replaced since is used again")
	}
}

// TestLargeClientHello: a ClientHello larger than the head buffer (here
// for its many ALPN protocols) is read whole, then handed on whole, in
// both TLS modes.
func TestLargeClientHello(t *testing.T) {
	protos := []string{}
	for i := range 24 {
		protos = append(protos, fmt.Sprintf("x-%03d-%s", i, strings.Repeat("p", 240)))
	}
	protos = append(protos, "http/1.1")
	for _, mode := range []Mode{Passthrough, Intercept} {
		h := newHarness(t, harnessOpts{mode: mode, tls: true, selectf: func(context.Context, string) (string, protocol.Verdict) {
			return "api", protocol.Verdict{Action: protocol.Allow, Rule: "ok"}
		}})
		conn, err := tls.Dial("tcp", h.ln.Addr().String(), &tls.Config{RootCAs: h.roots, ServerName: "example.com", NextProtos: protos})
		if err != nil {
			t.Fatalf("mode %v: %v", mode, err)
		}
		fmt.Fprintf(conn, "GET /large-hello HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
		resp, err := nethttp.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("mode %v: %v %v", mode, resp, err)
		}
		conn.Close()
		if err := <-h.errs; err != nil {
			t.Errorf("mode %v: Serve: %v", mode, err)
		}
	}
}

// TestPassthroughHeadsReused: a passthrough connection gives its head
// reader back once the hello is upstream; connections one after another
// and at once, with hellos that fit it and hellos that do not, each relay
// their own bytes (TLS fails on any other).
func TestPassthroughHeadsReused(t *testing.T) {
	large := []string{"http/1.1"}
	for i := range 24 {
		large = append(large, fmt.Sprintf("x-%03d-%s", i, strings.Repeat("p", 240)))
	}
	h := newHarness(t, harnessOpts{mode: Passthrough, tls: true, selectf: func(context.Context, string) (string, protocol.Verdict) {
		return "api", protocol.Verdict{Action: protocol.Allow, Rule: "ok"}
	}})
	get := func(i int) error {
		protos := []string{"http/1.1"}
		if i%3 == 2 {
			protos = large
		}
		conn, err := tls.Dial("tcp", h.ln.Addr().String(), &tls.Config{RootCAs: h.roots, ServerName: "example.com", NextProtos: protos})
		if err != nil {
			return err
		}
		defer conn.Close()
		fmt.Fprintf(conn, "GET /heads/%d HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", i)
		resp, err := nethttp.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(body), fmt.Sprintf("/heads/%d", i)) {
			return fmt.Errorf("connection %d: %d %q", i, resp.StatusCode, body)
		}
		return nil
	}
	for i := range 9 {
		if err := get(i); err != nil {
			t.Fatal(err)
		}
		if err := <-h.errs; err != nil {
			t.Fatalf("Serve %d: %v", i, err)
		}
	}
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			if err := get(100 + i); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for range 12 {
		if err := <-h.errs; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
}

// TestUserAgentAsSent: a request goes upstream with the User-Agent the
// agent sent, and none when it sent none (net/http's clients add their
// own), over each way a request takes upstream: HTTP/1.1 without a body
// (upstream1), with one (the Transport), and HTTP/2 (the frame relay, and
// the Transport for a body).
func TestUserAgentAsSent(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	for _, h2 := range []bool{false, true} {
		client := h.client(true, h2)
		for _, ua := range []string{"", "agent/1.0"} {
			for _, body := range []string{"", "payload"} {
				method := "GET"
				if body != "" {
					method = "POST"
				}
				req, _ := nethttp.NewRequest(method, "https://example.com/ua", strings.NewReader(body))
				// Go's client, too, sends none when the header is empty.
				req.Header.Set("User-Agent", ua)
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				want := "[]"
				if ua != "" {
					want = fmt.Sprintf("[%q]", ua)
				}
				if got := resp.Header.Get("X-Upstream-User-Agent"); resp.StatusCode != 200 || got != want {
					t.Errorf("HTTP/2 %v, %s with User-Agent %q: %d, upstream got %s, want %s", h2, method, ua, resp.StatusCode, got, want)
				}
			}
		}
	}
}

// hostOf takes the port off a Host or :authority, and the brackets off an
// IPv6 literal, and costs nothing for the usual Host without a port.
func TestHostOf(t *testing.T) {
	for in, want := range map[string]string{
		"api.example.com":      "api.example.com",
		"API.Example.com.:443": "api.example.com",
		"api.example.com:8443": "api.example.com",
		"[::1]":                "::1",
		"[::1]:443":            "::1",
		"[2001:DB8::1]:8080":   "2001:db8::1",
		"127.0.0.1:80":         "127.0.0.1",
		"":                     "",
		"::1":                  "::1",
		"api.example.com:":     "api.example.com",
	} {
		if got := hostOf(in); got != want {
			t.Errorf("hostOf(%q) = %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { hostOf("api.example.com") }); n != 0 {
		t.Errorf("hostOf of a host without a port: %v allocations, want 0", n)
	}
}
