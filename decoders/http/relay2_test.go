package http

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// serveRelayPaths answers the harness upstream's paths of the relay's
// tests: /big/N, N bytes of a pattern; /sum, the SHA-256 and length of
// the request body; /slow, after a pause.
func serveRelayPaths(w nethttp.ResponseWriter, r *nethttp.Request) bool {
	switch {
	case strings.HasPrefix(r.URL.Path, "/big/"):
		n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/big/"))
		w.Header().Set("Content-Length", strconv.Itoa(n))
		w.Write(patternBytes(n))
	case r.URL.Path == "/sum":
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
	case r.URL.Path == "/stamp":
		w.Header().Set("X-Got-Stamp", r.Header.Get("X-Stamp"))
	case r.URL.Path == "/slow":
		time.Sleep(200 * time.Millisecond)
		io.WriteString(w, "slow")
	default:
		return false
	}
	return true
}

// patternBytes is n bytes of the run 0 to 250, over and over.
func patternBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// TestRelayLargeAnswers: answers larger than every window the relay
// advertises arrive whole, several streams at once, one read slowly.
func TestRelayLargeAnswers(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	c := h.client(true, true)
	const size = 6 << 20
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get("https://example.com/big/" + strconv.Itoa(size))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var r io.Reader = resp.Body
			if i == 0 {
				r = &slowReader{r: r}
			}
			b, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(b, patternBytes(size)) || resp.ProtoMajor != 2 {
				t.Errorf("stream %d: %d bytes, %v, %s", i, len(b), err, resp.Proto)
			}
		}()
	}
	wg.Wait()
	if kinds := h.rec.types(); strings.Count(kinds, "B") != 4 {
		t.Errorf("recorded %q: want 4 answer bodies", kinds)
	}
}

// slowReader pauses before its reads: the relay must wait for the
// agent's window rather than buffer the answer.
type slowReader struct {
	r io.Reader
	n int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.n++; s.n%64 == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	return s.r.Read(p)
}

// TestRelayUpload: request bodies larger than the windows go upstream
// whole, several at once.
func TestRelayUpload(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	c := h.client(true, true)
	body := patternBytes(5 << 20)
	sum := sha256.Sum256(body)
	want := fmt.Sprintf("%d %s", len(body), hex.EncodeToString(sum[:]))
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Post("https://example.com/sum", "application/octet-stream", bytes.NewReader(body))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			got, _ := io.ReadAll(resp.Body)
			if string(got) != want {
				t.Errorf("upstream got %q, want %q", got, want)
			}
		}()
	}
	wg.Wait()
}

// h2Agent is a raw HTTP/2 client of the harness, to send what no real
// client sends.
type h2Agent struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	// wmu orders writes of a test's goroutines with outcome's.
	wmu sync.Mutex
}

func (h *harness) rawH2(t *testing.T) *h2Agent {
	t.Helper()
	conn, err := tls.Dial("tcp", h.ln.Addr().String(), &tls.Config{RootCAs: h.roots, ServerName: "example.com", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	a := &h2Agent{t: t, conn: conn, fr: http2.NewFramer(conn, conn)}
	a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	a.enc = hpack.NewEncoder(&a.hbuf)
	io.WriteString(conn, http2.ClientPreface)
	a.fr.WriteSettings()
	return a
}

// block encodes fields as a header block.
func (a *h2Agent) block(fields ...string) []byte {
	a.hbuf.Reset()
	for i := 0; i < len(fields); i += 2 {
		a.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(a.hbuf.Bytes())
}

// get sends a GET of path on stream id, with more fields after the
// pseudo-headers, its header block in frames of HTTP/2's default size.
func (a *h2Agent) get(id uint32, path string, more ...string) {
	fields := append([]string{":method", "GET", ":scheme", "https", ":authority", "example.com", ":path", path}, more...)
	block := a.block(fields...)
	const frame = 16 << 10
	first := block[:min(len(block), frame)]
	block = block[len(first):]
	a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		frag := block[:min(len(block), frame)]
		block = block[len(frag):]
		a.fr.WriteContinuation(id, len(block) == 0, frag)
	}
}

// outcome reads frames until stream id is answered: its status (0 when
// reset), the reset's code, or a GOAWAY's (goaway true).
func (a *h2Agent) outcome(id uint32) (status int, code http2.ErrCode, goaway bool) {
	a.t.Helper()
	for {
		f, err := a.fr.ReadFrame()
		if err != nil {
			a.t.Fatalf("stream %d: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				status, _ = strconv.Atoi(f.PseudoValue("status"))
				if status >= 200 {
					return status, 0, false
				}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return 0, f.ErrCode, false
			}
		case *http2.GoAwayFrame:
			return 0, f.ErrCode, true
		case *http2.SettingsFrame:
			if !f.IsAck() {
				a.wmu.Lock()
				a.fr.WriteSettingsAck()
				a.wmu.Unlock()
			}
		}
	}
}

// TestRelayMalformed: requests HTTP/2 calls malformed are reset, those
// interlockd refuses are answered, and the connection goes on either way.
func TestRelayMalformed(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	a := h.rawH2(t)
	id := uint32(1)
	next := func() uint32 { id += 2; return id - 2 }
	cases := []struct {
		name   string
		send   func(id uint32)
		status int
		code   http2.ErrCode
	}{
		{"transfer-encoding", func(id uint32) { a.get(id, "/x", "transfer-encoding", "chunked") }, 0, http2.ErrCodeProtocol},
		{"connection", func(id uint32) { a.get(id, "/x", "connection", "keep-alive") }, 0, http2.ErrCodeProtocol},
		{"te other than trailers", func(id uint32) { a.get(id, "/x", "te", "gzip") }, 0, http2.ErrCodeProtocol},
		{"CONNECT", func(id uint32) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndStream: true, EndHeaders: true,
				BlockFragment: a.block(":method", "CONNECT", ":authority", "example.com:443")})
		}, 0, http2.ErrCodeProtocol},
		{"no path", func(id uint32) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndStream: true, EndHeaders: true,
				BlockFragment: a.block(":method", "GET", ":scheme", "https", ":authority", "example.com")})
		}, 0, http2.ErrCodeProtocol},
		{"another authority", func(id uint32) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndStream: true, EndHeaders: true,
				BlockFragment: a.block(":method", "GET", ":scheme", "https", ":authority", "evil.test", ":path", "/x")})
		}, nethttp.StatusMisdirectedRequest, 0},
		{"dot segments", func(id uint32) { a.get(id, "/a/../deny/x") }, nethttp.StatusBadRequest, 0},
		{"denied", func(id uint32) { a.get(id, "/deny/x") }, nethttp.StatusForbidden, 0},
		{"body shorter than its length", func(id uint32) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true,
				BlockFragment: a.block(":method", "POST", ":scheme", "https", ":authority", "example.com", ":path", "/sum", "content-length", "5")})
			a.fr.WriteData(id, true, []byte("abc"))
		}, 0, http2.ErrCodeProtocol},
		{"DATA after the request ended", func(id uint32) {
			a.get(id, "/slow")
			a.fr.WriteData(id, true, []byte("abc"))
		}, 0, http2.ErrCodeStreamClosed},
		{"header list too large", func(id uint32) { a.get(id, "/x", "x-big", strings.Repeat("a", DefaultMaxHeaderBytes)) }, nethttp.StatusRequestHeaderFieldsTooLarge, 0},
	}
	for _, tc := range cases {
		id := next()
		tc.send(id)
		status, code, goaway := a.outcome(id)
		if goaway || status != tc.status || code != tc.code {
			t.Errorf("%s: status %d, code %v, goaway %v; want %d, %v", tc.name, status, code, goaway, tc.status, tc.code)
		}
		// The next request on the connection is answered.
		ok := next()
		a.get(ok, "/after")
		if status, code, goaway := a.outcome(ok); status != 200 {
			t.Fatalf("after %s: status %d, code %v, goaway %v", tc.name, status, code, goaway)
		}
	}
	if n := h.upstreamHits.Load(); n != int64(len(cases))+1 {
		// Only the good requests reach the upstream, and "DATA after the
		// request ended"'s, which was whole before its DATA came.
		t.Errorf("upstream saw %d requests, want %d", n, len(cases)+1)
	}
}

// TestRelayAbandonedUpload: the agent gets the answer to an upload
// denied before its body came; a body it then stops sending ends its
// stream (drainIdle), not its connection.
func TestRelayAbandonedUpload(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	a := h.rawH2(t)
	a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
		BlockFragment: a.block(":method", "POST", ":scheme", "https", ":authority", "example.com", ":path", "/deny/up", "content-length", "100")})
	a.fr.WriteData(1, false, []byte("0123456789"))
	if status, code, goaway := a.outcome(1); status != nethttp.StatusForbidden {
		t.Fatalf("status %d, code %v, goaway %v: want 403", status, code, goaway)
	}
	start := time.Now()
	if status, code, goaway := a.outcome(1); goaway || code != http2.ErrCodeCancel {
		t.Fatalf("status %d, code %v, goaway %v: want the stream reset", status, code, goaway)
	}
	if waited := time.Since(start); waited < drainIdle/2 {
		t.Errorf("reset after %v: want about %v", waited, drainIdle)
	}
	a.get(3, "/after")
	if status, _, _ := a.outcome(3); status != 200 {
		t.Fatalf("after: status %d", status)
	}
}

// TestRelayConnectionErrors: a stream the agent may not open, or a frame
// larger than the relay takes, ends the connection.
func TestRelayConnectionErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	for _, tc := range []struct {
		name string
		send func(a *h2Agent)
		code http2.ErrCode
	}{
		{"even stream", func(a *h2Agent) { a.get(2, "/x") }, http2.ErrCodeProtocol},
		{"frame over 16 KiB", func(a *h2Agent) {
			a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndStream: true, EndHeaders: true,
				BlockFragment: a.block(":method", "GET", ":scheme", "https", ":authority", "example.com", ":path", "/", "x-big", strings.Repeat("a", 40<<10))})
		}, http2.ErrCodeFrameSize},
	} {
		a := h.rawH2(t)
		tc.send(a)
		if _, code, goaway := a.outcome(1 << 30); !goaway || code != tc.code {
			t.Errorf("%s: code %v, goaway %v: want a GOAWAY with %v", tc.name, code, goaway, tc.code)
		}
	}
}

// TestRelayRapidReset: an agent that opens streams only to reset them
// (CVE-2023-44487) loses its connection before it has cost much upstream.
func TestRelayRapidReset(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	a := h.rawH2(t)
	const streams = 1000
	go func() {
		for i := range uint32(streams) {
			id := 2*i + 1
			a.wmu.Lock()
			a.get(id, "/slow")
			err := a.fr.WriteRSTStream(id, http2.ErrCodeCancel)
			a.wmu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	if _, code, goaway := a.outcome(2*streams + 1); !goaway || code != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("code %v, goaway %v: want a GOAWAY with ENHANCE_YOUR_CALM", code, goaway)
	}
	if n := h.upstreamHits.Load(); n > 2*int64(DefaultMaxConcurrentStreams) {
		t.Errorf("the upstream saw %d of the agent's streams", n)
	}
}

// TestRelayContinuationFlood: a header block that never ends
// (CVE-2024-27316) ends the connection once it passes the head cap, not
// when memory runs out.
func TestRelayContinuationFlood(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	a := h.rawH2(t)
	a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: a.block(":method", "GET", ":scheme", "https", ":authority", "example.com", ":path", "/")})
	frag := a.block("x-flood", strings.Repeat("a", 8000))
	done := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if err := a.fr.WriteContinuation(1, false, frag); err != nil {
				done <- nil
				return
			}
			if i > 10000 {
				done <- errors.New("80 MB of CONTINUATION taken")
				return
			}
		}
	}()
	for {
		f, err := a.fr.ReadFrame()
		if err != nil {
			break // closed
		}
		if g, ok := f.(*http2.GoAwayFrame); ok && g.ErrCode == http2.ErrCodeNo {
			t.Fatalf("GOAWAY %v", g.ErrCode)
		}
	}
	a.conn.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRelayStreamLimits: a stream over the agent's limit is refused, and
// streams over the upstream's go on all the same.
func TestRelayStreamLimits(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true, upStreams: 2})
	h.enf.release = make(chan struct{})
	a := h.rawH2(t)
	for i := range uint32(DefaultMaxConcurrentStreams) {
		a.get(2*i+1, "/hold/x")
	}
	over := 2*uint32(DefaultMaxConcurrentStreams) + 1
	a.get(over, "/x")
	if status, code, goaway := a.outcome(over); goaway || code != http2.ErrCodeRefusedStream {
		t.Fatalf("stream over the limit: status %d, code %v, goaway %v", status, code, goaway)
	}
	close(h.enf.release)

	// Ten at once to an upstream that takes two.
	c := h.client(true, true)
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, body := getErr(c, "https://example.com/slow"); resp == nil || resp.StatusCode != 200 || body != "slow" {
				t.Errorf("%v %q", resp, body)
			}
		}()
	}
	wg.Wait()
}

func getErr(c *nethttp.Client, url string) (*nethttp.Response, string) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestRelayUpstreamGoAway: once the upstream ends its connection
// gracefully, the relay opens another for the agent's next requests (the
// one between them goes through the Transport).
func TestRelayUpstreamGoAway(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	c := h.client(true, true)
	get := func(path string) {
		t.Helper()
		if resp, body := getErr(c, "https://example.com"+path); resp == nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %q", path, resp, body)
		}
	}
	// "Connection: close" makes Go's HTTP/2 server send GOAWAY.
	get("/close")
	get("/a")
	deadline := time.Now().Add(5 * time.Second)
	for h.upstreamConns.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, path := range []string{"/b", "/c", "/d"} {
		get(path)
	}
	// The relay's first, the Transport's for /a, the relay's second.
	if n := h.upstreamConns.Load(); n != 3 {
		t.Errorf("%d upstream connections, want 3", n)
	}
	if n := h.upstreamHits.Load(); n != 5 {
		t.Errorf("the upstream saw %d requests, want 5", n)
	}
}

// stampGuard writes X-Stamp into every request unless it passes them.
type stampGuard struct {
	passes bool
	calls  atomic.Int64
}

func (g *stampGuard) Outbound(_ context.Context, _ *protocol.Session, _ string, req *nethttp.Request) error {
	g.calls.Add(1)
	req.Header.Set("X-Stamp", "stamped")
	return nil
}
func (g *stampGuard) Inbound(*protocol.Session, string, *nethttp.Response) error { return nil }
func (g *stampGuard) Passes(*protocol.Session, string) bool                      { return g.passes }

// TestRelayGuard: a Guard at work sees every request of an HTTP/2 agent
// (the stream is exchanged, not relayed as it is); one that passes them
// is not called.
func TestRelayGuard(t *testing.T) {
	for _, passes := range []bool{false, true} {
		g := &stampGuard{passes: passes}
		h := newHarness(t, harnessOpts{mode: Intercept, tls: true, guard: g})
		c := h.client(true, true)
		for range 3 {
			resp, err := c.Get("https://example.com/stamp")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got := resp.Header.Get("X-Got-Stamp"); (got == "stamped") == passes {
				t.Errorf("passes %v: the upstream saw X-Stamp %q", passes, got)
			}
		}
		if n := g.calls.Load(); (n == 3) == passes || n != 0 && n != 3 {
			t.Errorf("passes %v: Outbound called %d times", passes, n)
		}
	}
}

// FuzzRelay: whatever frames an agent sends, the relay neither panics nor
// outlives the agent's connection.
func FuzzRelay(f *testing.F) {
	var seed bytes.Buffer
	fr := http2.NewFramer(&seed, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "example.com"}, {":path", "/sum"}, {"content-length", "3"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, true, []byte("abc"))
	fr.WriteWindowUpdate(0, 1000)
	fr.WriteWindowUpdate(1, 1000)
	fr.WriteRSTStream(1, http2.ErrCodeCancel)
	fr.WritePing(false, [8]byte{1})
	f.Add(seed.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		agent, agentPeer := net.Pipe()
		up, upPeer := net.Pipe()
		go (&http2.Server{}).ServeConn(upPeer, &http2.ServeConnOpts{Handler: nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
			io.Copy(w, r.Body)
		})})
		c := fuzzConn(agent)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.serveRelay(context.Background(), agent, newUp2(c, up))
		}()
		go io.Copy(io.Discard, agentPeer)
		agentPeer.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(agentPeer, http2.ClientPreface)
		agentPeer.Write(data)
		time.Sleep(time.Millisecond)
		agentPeer.Close()
		relayEnded(t, done)
		upPeer.Close()
	})
}

// relayEnded waits for a relay whose agent went to end (done closed).
func relayEnded(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay outlived its agent")
	}
}

// fuzzConn is an intercepted session of the agent connection agent, over
// a relay, whose Transport reaches nothing.
func fuzzConn(agent net.Conn) *conn {
	d := &Decoder{Target: func(string) (Target, error) { return Target{Mode: Intercept}, nil }}
	s := &protocol.Session{ID: "s", Agent: agent, Target: "api", Handshake: time.Second,
		Upstream: upstream{"127.0.0.1:1"}, Enforcer: &enforcer{}, Recorder: &recorder{}}
	c := &conn{d: d, s: s, maxHeader: DefaultMaxHeaderBytes, maxBody: DefaultMaxRequestBody, maxRecorded: DefaultMaxRecordedBody,
		target: "api", serverName: "example.com", t: Target{Mode: Intercept}}
	c.settleUpstream()
	return c
}

// FuzzRelayUpstream: whatever frames the upstream sends, while an agent's
// request is under way and after the agent went (the connection kept),
// the relay neither panics nor outlives its connections.
func FuzzRelayUpstream(f *testing.F) {
	var seed bytes.Buffer
	fr := http2.NewFramer(&seed, nil)
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 1}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	var hb bytes.Buffer
	hpack.NewEncoder(&hb).WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true})
	fr.WriteData(1, false, []byte("answer"))
	fr.WritePing(false, [8]byte{2})
	fr.WriteData(1, true, []byte("end"))
	fr.WriteData(3, true, make([]byte, 100))
	fr.WriteRSTStream(1, http2.ErrCodeRefusedStream)
	fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	f.Add(seed.Bytes())
	f.Fuzz(relayUpstream)
}

// relayUpstream is FuzzRelayUpstream's case: an agent's GET, the first
// half of data as the upstream's answer, the agent's end, the rest.
func relayUpstream(t *testing.T, data []byte) {
	agent, agentPeer := net.Pipe()
	up, upPeer := net.Pipe()
	// Both peers read all the relay writes, as TCP would buffer it.
	go io.Copy(io.Discard, upPeer)
	go io.Copy(io.Discard, agentPeer)
	c := fuzzConn(agent)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.serveRelay(context.Background(), agent, newUp2(c, up))
	}()
	var req bytes.Buffer
	afr := http2.NewFramer(&req, nil)
	afr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "example.com"}, {":path", "/x"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	afr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true})
	agentPeer.SetWriteDeadline(time.Now().Add(time.Second))
	io.WriteString(agentPeer, http2.ClientPreface)
	agentPeer.Write(req.Bytes())
	upPeer.SetWriteDeadline(time.Now().Add(time.Second))
	half := len(data) / 2
	upPeer.Write(data[:half])
	time.Sleep(time.Millisecond)
	agentPeer.Close()
	relayEnded(t, done)
	// What a kept connection reads.
	upPeer.Write(data[half:])
	upPeer.Close()
}

// TestRelayKeepsUpstream: an HTTP/2 agent's upstream connection serves
// the identity's next HTTP/2 connections, answering the server's PINGs
// while it waits, never another identity's, and not once the server has
// ended it.
func TestRelayKeepsUpstream(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true, upPing: 50 * time.Millisecond})
	// connection makes one agent connection with two requests, and waits
	// until the relay kept its upstream connection.
	connection := func(identity string) {
		t.Helper()
		h.identity.Store(&identity)
		c := h.client(true, true)
		for _, path := range []string{"/a", "/b"} {
			resp, body := getErr(c, "https://example.com"+path)
			if resp == nil || resp.StatusCode != 200 || resp.Header.Get("X-Upstream-Proto") != "HTTP/2.0" {
				t.Fatalf("%s: %v %q", path, resp, body)
			}
		}
		c.Transport.(*nethttp.Transport).CloseIdleConnections()
	}
	connection("ci")
	h.kept(t, 1)
	// Longer than the server waits for a PING's answer, several times.
	time.Sleep(400 * time.Millisecond)
	connection("ci")
	h.kept(t, 1)
	if n := h.upstreamConns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for one identity's two agent connections, want 1", n)
	}
	connection("other")
	h.kept(t, 2)
	if n := h.upstreamConns.Load(); n != 2 {
		t.Fatalf("%d upstream connections after another identity's, want 2", n)
	}
	if n := h.upstreamHits.Load(); n != 6 {
		t.Fatalf("the upstream saw %d requests, want 6", n)
	}
	// The server closes them: the next agent connection gets a new one.
	h.up.CloseClientConnections()
	h.kept(t, 0)
	connection("ci")
	h.kept(t, 1)
	if n := h.upstreamConns.Load(); n != 3 {
		t.Fatalf("%d upstream connections after the server closed the kept ones, want 3", n)
	}
}

// TestRelayKeptUpstreamGoAway: a kept upstream connection whose server
// sends GOAWAY (here at its idle timeout) is dropped.
func TestRelayKeptUpstreamGoAway(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true, upIdle: 300 * time.Millisecond})
	c := h.client(true, true)
	if resp, body := getErr(c, "https://example.com/a"); resp == nil || resp.StatusCode != 200 {
		t.Fatalf("%v %q", resp, body)
	}
	c.Transport.(*nethttp.Transport).CloseIdleConnections()
	h.kept(t, 1)
	h.kept(t, 0)
}

// kept waits until the decoder keeps want upstream connections.
func (h *harness) kept(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		h.d.idle.mu.Lock()
		n := h.d.idle.n
		h.d.idle.mu.Unlock()
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d upstream connections kept, want %d", n, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRelayKeptUpstreamWindow: what the server sent for agents that went
// away before reading it is credited to the kept connection, whose window
// would otherwise shrink with every such agent until nothing could pass.
func TestRelayKeptUpstreamWindow(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
	for range 5 {
		// The agent's window (64 KiB) takes a small part of the answer;
		// the relay takes the rest from the server, then the agent goes.
		a := h.rawH2(t)
		a.get(1, "/big/1000000")
		if status, code, _ := a.outcome(1); status != 200 {
			t.Fatalf("status %d, reset %v", status, code)
		}
		time.Sleep(300 * time.Millisecond)
		a.conn.Close()
		h.kept(t, 1)
	}
	const n = 6 << 20 // more than the connection's window
	resp, body := getErr(h.client(true, true), fmt.Sprintf("https://example.com/big/%d", n))
	if resp == nil || resp.StatusCode != 200 || !bytes.Equal([]byte(body), patternBytes(n)) {
		t.Fatalf("%v, %d bytes", resp, len(body))
	}
	if c := h.upstreamConns.Load(); c != 1 {
		t.Fatalf("%d upstream connections, want 1", c)
	}
}

// TestRelayRetriesLostStreams: a request its upstream connection lost
// before the answer began goes again over a connection of the
// Transport's: one the server refused (a GOAWAY below it), whatever its
// method, or one safe to send twice on a connection that closed (a kept
// connection the server closed as it was taken); a POST on a connection
// that closed gets 502, as it may have been processed.
func TestRelayRetriesLostStreams(t *testing.T) {
	for _, tc := range []struct {
		name, method string
		goAway       bool
		want         int
	}{
		{"refused", "POST", true, 200},
		{"closed", "GET", false, 200},
		{"closed-post", "POST", false, 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, harnessOpts{mode: Intercept, tls: true})
			// Over TCP: a pipe's writes wait for its reader, and both
			// sides write before they read.
			ln := serveEach(t, func(c net.Conn) { loseFirstStream(c, tc.goAway) })
			up, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			target := Target{Mode: Intercept, RootCAs: h.roots}
			s := &protocol.Session{ID: "s", Identity: "ci", Target: "api", Handshake: 5 * time.Second,
				Upstream: upstream{h.up.Listener.Addr().String()}, Enforcer: h.enf, Recorder: h.rec}
			c := &conn{d: h.d, s: s, maxHeader: DefaultMaxHeaderBytes, maxBody: DefaultMaxRequestBody, maxRecorded: DefaultMaxRecordedBody,
				target: "api", serverName: "example.com", t: target}
			c.settleUpstream()
			agentLn := serveEach(t, func(agent net.Conn) {
				c.serveRelay(context.Background(), agent, newUp2(c, up))
			})
			agentPeer, err := net.Dial("tcp", agentLn.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			cc, err := (&http2.Transport{}).NewClientConn(agentPeer)
			if err != nil {
				t.Fatal(err)
			}
			req, _ := nethttp.NewRequest(tc.method, "https://example.com/x", nil)
			resp, err := cc.RoundTrip(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want || tc.want == 200 && !strings.Contains(string(body), "upstream "+tc.method+" /x") {
				t.Fatalf("%d %q, want %d", resp.StatusCode, body, tc.want)
			}
			if n := h.upstreamHits.Load(); tc.want == 200 && n != 1 {
				t.Errorf("the server behind the Transport saw %d requests, want 1", n)
			}
			cc.Close()
		})
	}
}

// loseFirstStream is an HTTP/2 server that answers none of its
// connection's streams: at the first HEADERS it sends a GOAWAY below
// them (goAway), or closes the connection.
func loseFirstStream(c net.Conn, goAway bool) {
	defer c.Close()
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil {
		return
	}
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			if !goAway {
				return
			}
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		}
	}
}

// TestQueryWithSpaceToHTTP1: HTTP/2 carries a space in :path, which an
// HTTP/1.1 request line cannot hold; a query with one reaches an upstream
// that speaks HTTP/1.1 alone escaped, as one request target, not as a
// request line of the agent's making ("HTTP/1.0" and all).
func TestQueryWithSpaceToHTTP1(t *testing.T) {
	h := newHarness(t, harnessOpts{mode: Intercept, tls: true, upH1: true})
	a := h.rawH2(t)
	a.get(1, "/x?a=1 HTTP/1.0 x")
	if status, code, _ := a.outcome(1); status != 200 {
		t.Fatalf("status %d (reset %v), want the upstream's 200", status, code)
	}
	for {
		f, err := a.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 1 {
			if got := string(d.Data()); !strings.HasPrefix(got, "upstream GET /x?a=1%20HTTP/1.0%20x host=example.com") {
				t.Fatalf("the upstream got %q", got)
			}
			return
		}
	}
}
