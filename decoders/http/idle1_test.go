package http

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// TestIdleUpstreamKeptForTheIdentity: a session's upstream connection
// serves the identity's next session, never another identity's, never a
// request that could not be sent again, and never once the server closed
// it or wrote to it unasked while it was idle.
func TestIdleUpstreamKeptForTheIdentity(t *testing.T) {
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
			body := fmt.Sprintf("genuine %s %s on connection %d", req.Method, req.URL.Path, n)
			if req.Close { // as servers do
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
				return
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
			switch req.URL.Path {
			case "/then-forge":
				time.Sleep(50 * time.Millisecond)
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
			case "/then-close":
				time.Sleep(50 * time.Millisecond)
				return
			}
		}
	})
	d := &Decoder{Target: func(string) (Target, error) { return Target{Mode: Plain}, nil }}
	// session serves one agent connection of identity with one request
	// and returns the answer's body once the session has ended.
	session := func(identity, method, path string) string {
		t.Helper()
		agent, server := net.Pipe()
		s := &protocol.Session{ID: "s", Identity: identity, Agent: server, Target: "api", Connect: protocol.Verdict{Action: protocol.Allow},
			Handshake: 5 * time.Second, Upstream: upstream{ln.Addr().String()}, Enforcer: &enforcer{}, Recorder: &recorder{}}
		done := make(chan struct{})
		go func() { d.Serve(context.Background(), s); close(done) }()
		// The agent closes after one request (its own connection only).
		fmt.Fprintf(agent, "%s %s HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n", method, path)
		resp, err := nethttp.ReadResponse(bufio.NewReader(agent), nil)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		agent.Close()
		<-done
		if !strings.HasPrefix(string(b), "genuine "+method+" "+path+" ") {
			t.Fatalf("%s %s as %s: %q", method, path, identity, b)
		}
		return string(b)
	}
	steps := []struct {
		identity, method, path string
		conn                   int
	}{
		{"ci", "GET", "/a", 1},
		{"ci", "GET", "/b", 1},    // the identity's next session
		{"bot", "GET", "/c", 2},   // another identity's
		{"ci", "DELETE", "/d", 3}, // not sent again if the kept one was stale
		{"ci", "GET", "/e", 3},    // the most recently kept
		{"ci", "GET", "/f", 3},    //
		{"ci", "GET", "/then-forge", 3},
		{"ci", "GET", "/g", 1}, // 3 wrote unasked while idle: closed, 1 taken
		{"ci", "GET", "/then-close", 1},
		{"ci", "GET", "/h", 4}, // 1 was closed by the server while idle
	}
	for _, st := range steps {
		if st.path == "/g" || st.path == "/h" {
			time.Sleep(150 * time.Millisecond) // the server's unasked write or close lands
		}
		body := session(st.identity, st.method, st.path)
		if want := fmt.Sprintf("on connection %d", st.conn); !strings.HasSuffix(body, want) {
			t.Fatalf("%s %s as %s: %q, want it %s", st.method, st.path, st.identity, body, want)
		}
	}
}

// TestIdleUpstreamIntercept: agent connections one after another, each its
// own TLS session with interlockd, share one verified TLS connection
// upstream.
func TestIdleUpstreamIntercept(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	for i := range 3 {
		c := h.client(true, false)
		if resp, body := get(t, c, fmt.Sprintf("https://example.com/n/%d", i)); resp.StatusCode != 200 || !strings.Contains(body, fmt.Sprintf("GET /n/%d", i)) {
			t.Fatalf("connection %d: %d %q", i, resp.StatusCode, body)
		}
		c.Transport.(*nethttp.Transport).CloseIdleConnections()
		if err := <-h.errs; err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	if n := h.upstreamConns.Load(); n != 1 {
		t.Errorf("3 agent connections took %d upstream connections, want 1", n)
	}
}

// TestIdleKeyRoots: a target's upstream_ca is read again for every
// connection, so equal roots must make one key (else no connection is ever
// reused and every one is kept), and other roots another.
func TestIdleKeyRoots(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	again := func() *x509.CertPool {
		p := x509.NewCertPool()
		p.AddCert(h.up.Certificate())
		return p
	}
	d := &Decoder{}
	if a, b := d.upstreamOf("api", again()), d.upstreamOf("api", again()); a != b {
		t.Fatal("equal roots read twice give two keys")
	}
	if a, b := d.upstreamOf("api", again()), d.upstreamOf("api", x509.NewCertPool()); a == b {
		t.Fatal("other roots give the same key")
	}
}

// TestIdleBounded: however many keys, at most idleMax connections are
// kept; the others are closed at once.
func TestIdleBounded(t *testing.T) {
	var p idle1
	var closed atomic.Int64
	for i := range idleMax + 10 {
		a, b := net.Pipe()
		defer b.Close()
		p.put(idleKey{identity: fmt.Sprint(i)}, &idleConn{nc: closeCounter{a, &closed}, br: bufio.NewReader(a), bw: bufio.NewWriter(a)})
	}
	if p.n != idleMax || closed.Load() != 10 {
		t.Fatalf("kept %d, closed %d; want %d kept and 10 closed", p.n, closed.Load(), idleMax)
	}
	if ic := p.take(idleKey{identity: "3"}); ic != nil {
		t.Fatal("a pipe cannot be peeked, so it is not reused")
	}
	if p.n != idleMax-1 || closed.Load() != 11 {
		t.Fatalf("after a take: kept %d, closed %d", p.n, closed.Load())
	}
}

type closeCounter struct {
	net.Conn
	n *atomic.Int64
}

func (c closeCounter) Close() error { c.n.Add(1); return c.Conn.Close() }

// TestTransportKeptForTheIdentity: requests that go through net/http's
// client (here uploads, over HTTP/1.1 and HTTP/2 agents' connections)
// reach the server over the connection an earlier session of the identity
// opened, never over another identity's.
func TestTransportKeptForTheIdentity(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	post := func(identity string, h2 bool) {
		t.Helper()
		h.identity.Store(&identity)
		c := h.client(true, h2)
		resp, err := c.Post("https://example.com/upload", "text/plain", strings.NewReader("a body"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), `upstream POST /upload host=example.com body="a body"`) {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		c.Transport.(*nethttp.Transport).CloseIdleConnections()
	}
	conns := func(want int64) {
		t.Helper()
		if n := h.upstreamConns.Load(); n != want {
			t.Fatalf("%d upstream connections, want %d", n, want)
		}
	}
	post("ci", false)
	post("ci", false)
	conns(1)
	// An HTTP/2 agent's connection opens the relay's own (relay2), and
	// its upload goes through the client's.
	post("ci", true)
	conns(2)
	h.kept(t, 1)
	post("ci", true)
	conns(2)
	post("other", false)
	conns(3)
}
