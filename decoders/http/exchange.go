package http

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// isHopHeader reports whether the canonical header name k is a hop-by-hop
// header (RFC 9110, 7.6.1) a proxy must not forward.
func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// removeHopHeaders drops the hop-by-hop headers of h, those its Connection
// header names included. The parsers store names in canonical form, so
// one pass over h with a switch finds them: a Header.Del per hop-by-hop
// name, each canonicalizing its name first, was 3 % of interlockd's CPU
// under wrk through intercept.
func removeHopHeaders(h nethttp.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for k := range h {
		if isHopHeader(k) {
			delete(h, k)
		}
	}
}

// exchange decides one request and answers it: from upstream when it is
// allowed, or with interlockd's own response. It never returns nil.
func (c *conn) exchange(ctx context.Context, req *nethttp.Request) *nethttp.Response {
	v, own := c.decide(ctx, req)
	if own != nil {
		return own
	}
	return c.act(ctx, req, v)
}

// decide records a request and decides it, or refuses it first with
// interlockd's own response when it is not one to decide: a Host other
// than the server name, a path not in canonical form, a body over the cap.
func (c *conn) decide(ctx context.Context, req *nethttp.Request) (protocol.Verdict, *nethttp.Response) {
	host := hostOf(req.Host)
	if c.serverName != "" && host != c.serverName {
		return protocol.Verdict{}, c.own(nethttp.StatusMisdirectedRequest, fmt.Sprintf("Host %q is not the server name %q this connection was opened for", host, c.serverName))
	}
	if why := NonCanonical(req.URL.Path); why != "" {
		return protocol.Verdict{}, c.own(nethttp.StatusBadRequest, why)
	}
	if req.ContentLength > c.maxBody {
		return protocol.Verdict{}, c.own(nethttp.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", c.maxBody))
	}
	text := DecidedTarget(req.URL)
	c.mu.Lock()
	defer c.mu.Unlock()
	b := headBuf()
	requestHead(b, req)
	c.recordHead(true, MsgRequest, b)
	return c.s.Enforcer.Decide(ctx, protocol.Request{Operation: req.Method, Text: text, Host: host, Header: req.Header}), nil
}

// DecidedTarget is the request target the policy decides a request on:
// the decoded path (in canonical form, see decide) and the raw query, so
// that "/%61dmin/" is the "/admin/" a rule names. interlockd decides what
// agents send on it; policy replay and explain decide theirs on it too.
func DecidedTarget(u *url.URL) string {
	if u.RawQuery == "" {
		return u.Path
	}
	return u.Path + "?" + u.RawQuery
}

// act carries out v, the decision on req: the answer from upstream, or
// interlockd's refusal. It never returns nil.
func (c *conn) act(ctx context.Context, req *nethttp.Request, v protocol.Verdict) *nethttp.Response {
	switch v.Action {
	case protocol.Deny:
		return c.denied(req, v.Rule, v.Message)
	case protocol.Mask:
		if v.Mask == nil {
			return c.denied(req, v.Rule, "the mask could not be applied; the request is refused rather than answered unmasked")
		}
	case protocol.Hold:
		ok, reason := false, "no approval could be awaited"
		if v.Wait != nil {
			ok, reason = v.Wait(ctx)
		}
		if !ok {
			return c.denied(req, v.Rule, fmt.Sprintf("approval %s refused: %s", v.ApprovalID, reason))
		}
	}
	return c.forward(ctx, req, hostOf(req.Host), v.Mask)
}

// NonCanonical says why interlockd answers a request for path (decoded)
// 400 before any rule decides it, or "" for a path in canonical form: rules
// match decoded paths, and "/a/../b" would match a rule for /a/ while the
// server serves /b.
func NonCanonical(path string) string {
	if !strings.HasPrefix(path, "/") || cleanPath(path) != path {
		return "the request path is not in canonical form (dot segments or no leading /)"
	}
	return ""
}

// cleanPath is p with dot segments resolved, keeping a trailing slash.
func cleanPath(p string) string {
	cp := path.Clean(p)
	if strings.HasSuffix(p, "/") && cp != "/" {
		cp += "/"
	}
	return cp
}

// forward sends an allowed request upstream and returns the answer, its
// head and body recorded; with mask, the body as maskResponse rewrote it.
func (c *conn) forward(ctx context.Context, req *nethttp.Request, host string, mask protocol.Masker) *nethttp.Response {
	// A deep copy: its URL and Header are changed below.
	out := req.Clone(ctx)
	out.RequestURI = ""
	out.URL.Scheme, out.URL.Host = c.scheme, req.Host
	out.URL.RawQuery = wireQuery(out.URL.RawQuery)
	removeHopHeaders(out.Header)
	if _, ok := out.Header["User-Agent"]; !ok {
		// net/http's clients send their own User-Agent with a request
		// that has none, unless it is there and empty.
		out.Header["User-Agent"] = []string{""}
	}
	// The agent's "Connection: close" is about its own connection, which
	// closes after this answer; the upstream connection stays open for
	// the identity's next (idle1).
	out.Close = false
	if isWebSocket(req) {
		// The one upgrade passed on: the relay after it is upgraded's.
		if mask != nil {
			return c.denied(req, "", "a WebSocket's messages cannot be masked; the upgrade is refused")
		}
		out.Header.Set("Connection", "Upgrade")
		out.Header.Set("Upgrade", "websocket")
	}
	recordBody := func(b []byte, n int64) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if n > 0 {
			c.s.Recorder.Record(protocol.Message{FromClient: true, Type: MsgRequestBody, Time: time.Now(), Body: b})
		}
	}
	switch {
	case req.ContentLength == 0:
		// No body: an HTTP/2 request that ended with its headers still
		// has a Body, which the client would send as an empty DATA frame
		// of its own.
		out.Body = nethttp.NoBody
	case req.ContentLength > 0 && req.ContentLength <= int64(c.maxRecorded):
		// A body the recording keeps whole is read before the request goes
		// upstream, and recorded then: read by the transport, it could be
		// recorded after the answer (an upstream may answer before it has
		// the body, as nginx's return does), and a body recorded after the
		// answer is a streaming upload's, which the pcap export leaves out.
		b := make([]byte, req.ContentLength)
		if _, err := io.ReadFull(req.Body, b); err != nil {
			return c.own(nethttp.StatusBadRequest, fmt.Sprintf("the request body ended before its %d bytes: %v", req.ContentLength, err))
		}
		recordBody(b, req.ContentLength)
		out.Body = io.NopCloser(bytes.NewReader(b))
	case req.Body != nil && req.Body != nethttp.NoBody:
		out.Body = &capture{r: io.LimitReader(req.Body, c.maxBody+1), max: c.maxRecorded, limit: c.maxBody, done: recordBody}
	}
	if c.d.Guard != nil {
		if err := c.d.Guard.Outbound(ctx, c.s, c.target, out); err != nil {
			return c.refused(err)
		}
	}
	// The Transport takes what upstream1 does not.
	var (
		resp *nethttp.Response
		err  error = errNoHTTP1
	)
	if c.up1.direct(req, out) {
		resp, err = c.up1.roundTrip(ctx, out)
	}
	if errors.Is(err, errNoHTTP1) {
		resp, err = c.roundTrip(out)
	}
	if err != nil {
		var (
			verr *tls.CertificateVerificationError
			ref  *Refusal
		)
		if errors.As(err, &ref) {
			return c.refused(ref)
		}
		if errors.As(err, &verr) {
			c.end(&protocol.RefusedError{Outcome: "upstream certificate", Err: fmt.Errorf("%s: %w", host, err)})
			return c.own(nethttp.StatusBadGateway, fmt.Sprintf("the upstream certificate for %s does not verify", host))
		}
		if errors.Is(err, errBodyTooLarge) {
			return c.own(nethttp.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", c.maxBody))
		}
		return c.own(nethttp.StatusBadGateway, "upstream: "+err.Error())
	}
	removeHopHeaders(resp.Header)
	if c.d.Guard != nil {
		if err := c.d.Guard.Inbound(c.s, c.target, resp); err != nil {
			resp.Body.Close()
			return c.own(nethttp.StatusBadGateway, err.Error())
		}
	}
	if mask != nil {
		if err := maskResponse(resp, mask); err != nil {
			return c.own(nethttp.StatusBadGateway, "the response could not be masked: "+err.Error())
		}
	}
	b := headBuf()
	responseHead(b, resp)
	c.recordHead(false, MsgResponse, b)
	if resp.StatusCode == nethttp.StatusSwitchingProtocols {
		return resp // its body is the upgraded connection: see upgraded
	}
	resp.Body = &capture{r: resp.Body, closer: resp.Body, max: c.maxRecorded, limit: -1, done: func(b []byte, n int64) {
		if n > 0 {
			c.s.Recorder.Record(protocol.Message{Type: MsgResponseBody, Time: time.Now(), Body: b})
		}
	}}
	return resp
}

// refused answers a request a Guard refused.
func (c *conn) refused(err error) *nethttp.Response {
	var ref *Refusal
	if errors.As(err, &ref) {
		return c.own(ref.Status, ref.Message)
	}
	return c.own(nethttp.StatusBadGateway, err.Error())
}

// end records why the session must end, the first time.
func (c *conn) end(err error) {
	c.endOnce.Do(func() {
		c.endMu.Lock()
		c.ending = err
		c.endMu.Unlock()
	})
}

// contain is deferred by the goroutines a session starts besides its own
// (an HTTP/2 stream's exchange, a WebSocket's copies): a panic there ends
// the session with the defect (protocol.Contained), not interlockd. Its
// own goroutine is the pipeline's to contain.
func (c *conn) contain(where string) {
	if ie := protocol.Contained(where, recover()); ie != nil {
		c.fail(ie)
	}
}

// fail ends the session at once with err, which Serve returns: the
// agent's connection is closed under whatever serves it.
func (c *conn) fail(err error) {
	c.end(err)
	c.s.Agent.Close()
}

// ended returns why the session must end, nil while it goes on.
func (c *conn) ended() error {
	c.endMu.Lock()
	defer c.endMu.Unlock()
	return c.ending
}

// grpcPermissionDenied is gRPC's status code PERMISSION_DENIED.
const grpcPermissionDenied = "7"

// denied is the 403 of a refused request: a small JSON body naming the
// rule. A gRPC call gets gRPC's own refusal instead: a trailers-only
// response with status PERMISSION_DENIED.
func (c *conn) denied(req *nethttp.Request, rule, message string) *nethttp.Response {
	if strings.HasPrefix(req.Header.Get("Content-Type"), "application/grpc") {
		msg := "denied by interlock rule " + rule
		if message != "" {
			msg += ": " + message
		}
		resp := errorResponseBody(nethttp.StatusOK, nil)
		resp.Header = nethttp.Header{"Content-Type": {"application/grpc"}, "Grpc-Status": {grpcPermissionDenied},
			"Grpc-Message": {url.PathEscape(msg)}}
		b := headBuf()
		responseHead(b, resp)
		c.recordHead(false, MsgInterlock, b)
		return resp
	}
	body, _ := json.Marshal(struct {
		Error   string `json:"error"`
		Rule    string `json:"rule"`
		Message string `json:"message,omitempty"`
	}{"denied by interlock", rule, message})
	return c.ownBody(nethttp.StatusForbidden, body)
}

// own is a response interlockd gives itself, recorded as such.
func (c *conn) own(status int, message string) *nethttp.Response {
	body, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{message})
	return c.ownBody(status, body)
}

func (c *conn) ownBody(status int, body []byte) *nethttp.Response {
	resp := errorResponseBody(status, body)
	// Head, blank line, body: as Transcript and Wire split it.
	b := headBuf()
	responseHead(b, resp)
	b.WriteString("\r\n")
	b.Write(body)
	c.recordHead(false, MsgInterlock, b)
	return resp
}

// errorResponse is a JSON error response that goes unrecorded: one
// answered before the session's recording starts.
func errorResponse(status int, message string) *nethttp.Response {
	body, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{message})
	return errorResponseBody(status, body)
}

func errorResponseBody(status int, body []byte) *nethttp.Response {
	h := nethttp.Header{"Content-Type": {"application/json"}}
	return &nethttp.Response{StatusCode: status, Status: fmt.Sprintf("%d %s", status, nethttp.StatusText(status)),
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: h,
		ContentLength: int64(len(body)), Body: io.NopCloser(bytes.NewReader(body))}
}

// secretHeaders carry credentials: the recording keeps that they were
// sent and how long they were, never their values.
var secretHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie"}

// requestHead renders a request's head in HTTP/1.1 form for the
// recording, whichever version carried it, with credentials redacted.
//
// Its target is the path as escaped on the wire, not the decoded path the
// policy decides on: a decoded "%0d%0a" ended the line there, and an agent
// wrote header lines of its choosing into its own recording (and a "%20"
// made the line unreadable as HTTP). Bytes of the query no request line
// may hold (HTTP/2 carries a space there) are escaped too; a query's
// parameters read the same either way. RecordedRequest decodes the path
// again.
func requestHead(b *bytes.Buffer, req *nethttp.Request) {
	b.WriteString(req.Method)
	b.WriteByte(' ')
	b.WriteString(req.URL.EscapedPath())
	if q := req.URL.RawQuery; q != "" {
		b.WriteByte('?')
		b.WriteString(wireQuery(q))
	}
	protoVersion(b, " HTTP/", req.ProtoMajor, req.ProtoMinor)
	b.WriteString("\r\nHost: ")
	b.WriteString(req.Host)
	b.WriteString("\r\n")
	redacted(req.Header).Write(b)
}

// wireQuery is a raw query with the bytes no HTTP/1.1 request line may
// hold escaped: HTTP/2 carries a space in :path, and net/http writes a
// query as it is, so "?a=1 HTTP/1.0" made an upstream read a request line
// of the agent's making. A query's parameters read the same either way.
func wireQuery(q string) string {
	i := strings.IndexFunc(q, func(r rune) bool { return r <= ' ' || r == 0x7f })
	if i < 0 {
		return q
	}
	var b strings.Builder
	b.WriteString(q[:i])
	for ; i < len(q); i++ {
		if c := q[i]; c <= ' ' || c == 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// protoVersion writes prefix and the version major.minor.
func protoVersion(b *bytes.Buffer, prefix string, major, minor int) {
	b.WriteString(prefix)
	b.Write(strconv.AppendInt(b.AvailableBuffer(), int64(major), 10))
	b.WriteByte('.')
	b.Write(strconv.AppendInt(b.AvailableBuffer(), int64(minor), 10))
}

// headBufs are the buffers heads are rendered into for the recording,
// which copies what it keeps (protocol.Recorder): rendering a head was a
// few allocations of every request and answer.
var headBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledHead is the largest head buffer kept for other heads.
const maxPooledHead = 64 << 10

func headBuf() *bytes.Buffer {
	b := headBufs.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

// recordHead records what b holds and gives b back.
func (c *conn) recordHead(fromClient bool, typ byte, b *bytes.Buffer) {
	c.s.Recorder.Record(protocol.Message{FromClient: fromClient, Type: typ, Time: time.Now(), Body: b.Bytes()})
	if b.Cap() <= maxPooledHead {
		headBufs.Put(b)
	}
}

// redacted is h with the values of secretHeaders replaced by their length.
func redacted(h nethttp.Header) nethttp.Header {
	out, cloned := h, false
	for _, k := range secretHeaders {
		vs, ok := h[k]
		if !ok {
			continue
		}
		if !cloned {
			out, cloned = h.Clone(), true
		}
		out[k] = make([]string, len(vs))
		for i, v := range vs {
			out[k][i] = fmt.Sprintf("[redacted, %d bytes]", len(v))
		}
	}
	return out
}

// responseHead renders a response's head in HTTP/1.1 form.
func responseHead(b *bytes.Buffer, resp *nethttp.Response) {
	protoVersion(b, "HTTP/", resp.ProtoMajor, resp.ProtoMinor)
	b.WriteByte(' ')
	b.WriteString(resp.Status)
	b.WriteString("\r\n")
	redacted(resp.Header).Write(b)
}

// errBodyTooLarge is a request body over the decoder's cap.
var errBodyTooLarge = errors.New("request body too large")

// capture passes a body through, keeping its first max bytes, and hands
// them to done once, at its end or close, with the whole length. A limit
// of 0 or more fails the read past limit bytes.
type capture struct {
	// mu orders a transport's Close against a Read in progress.
	mu     sync.Mutex
	r      io.Reader
	closer io.Closer
	max    int
	limit  int64
	buf    []byte
	n      int64
	done   func(b []byte, n int64)
	fired  bool
}

func (c *capture) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.r.Read(p)
	if keep := min(n, c.max-len(c.buf)); keep > 0 {
		c.buf = append(c.buf, p[:keep]...)
	}
	c.n += int64(n)
	if c.limit >= 0 && c.n > c.limit {
		return 0, errBodyTooLarge
	}
	if err != nil {
		c.fire()
	}
	return n, err
}

func (c *capture) Close() error {
	var err error
	if c.closer != nil {
		// Closed first: that ends a Read blocked on it.
		err = c.closer.Close()
	}
	// A Read still blocked (on the agent's request body) fires at its end.
	if c.mu.TryLock() {
		c.fire()
		c.mu.Unlock()
	}
	return err
}

func (c *capture) fire() {
	if !c.fired {
		c.fired = true
		c.done(c.buf, c.n)
	}
}
