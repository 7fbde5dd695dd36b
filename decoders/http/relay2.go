package http

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// relay2 serves an agent's HTTP/2 connection over one HTTP/2 connection
// upstream, frame by frame, when the upstream speaks HTTP/2.
//
// Why: net/http's HTTP/2 server and client give every stream goroutines
// and pipes of their own on each side, and their switches, not the work,
// were most of what a small request cost (`h2load`, one connection × 10
// streams: 24 % of direct through them, 55–57 % for a frame relay, nginx
// 58 %). Here one goroutine reads each side; a request is decided as its
// HEADERS arrive, on the agent's reader.
//
// Two kinds of stream:
//
//   - fast: an allowed request without a body, on a session whose Guard
//     passes it, while the upstream connection takes new streams. Its
//     HEADERS go upstream encoded anew, and the answer's frames come back
//     on the upstream's reader; nothing else runs for it.
//   - exchanged: everything else (a body, a denial, a mask, a hold, a
//     Guard at work, interlockd's own answers). The request is built as
//     net/http's server builds it and goes through exchange's path on a
//     goroutine of its own, upstream over the session's Transport, which
//     opens its own connection if any stream needs it; the answer is
//     written back as frames.
//
// Each side's flow control is the relay's own: it advertises windows to
// both peers, sends the agent no more than the agent allows, and gives
// the upstream credit only for what went on to the agent (an agent's body
// for what its request read), so what waits in the relay is bounded by
// the windows it advertised.
type relay2 struct {
	c      *conn
	ctx    context.Context
	cancel context.CancelFunc
	agent  net.Conn
	ar     *http2.Framer // reads the agent's frames through ad
	ad     *dryReader
	idle   time.Duration

	// mu guards what follows, the agent's writer, and the upstream
	// connection's state while the relay owns it; cond (on mu) wakes the
	// exchanged streams' goroutines when their queue or body moves.
	mu   sync.Mutex
	cond *sync.Cond
	aw   frameWriter // to the agent
	u    *up2        // upstream; nil once the relay ended

	streams   map[uint32]*stream2 // by the agent's stream ID
	upStreams map[uint32]*stream2 // fast streams, by upstream stream ID
	lastAgent uint32              // the agent's highest stream ID
	redialing bool
	redialAt  time.Time
	goingAway bool // GOAWAY sent: no new streams from the agent
	closed    bool
	agentEOF  bool // the agent closed its connection

	agentWin   int32  // what the agent's connection window lets the relay send
	agentInit  int32  // the agent's initial stream window
	agentFrame uint32 // the agent's largest frame

	agentRecv window // the agent's DATA on the connection

	// fields is where header fields written at once are put together.
	fields []hpack.HeaderField

	idleTimer *time.Timer
	idleSince time.Time // when the last stream ended
	resets    int       // streams the agent reset in this second
	resetsAt  time.Time // when the second began
	wg        sync.WaitGroup
}

// Windows the relay advertises (see relay2): per stream as net/http's
// HTTP/2 server's default upload buffer, per connection four of those.
const (
	relayStreamWindow = 1 << 20
	relayConnWindow   = 4 << 20
	// relayQueued is how much an exchanged stream's goroutine queues for
	// the agent before it waits for the agent's window.
	relayQueued = 64 << 10
)

// window is one side's flow control into the relay: what the peer may
// still send, and what the relay has consumed but not yet credited.
type window struct {
	left, unsent int32
}

// give credits n bytes the relay consumed, in a WINDOW_UPDATE for stream
// id (0: the connection) through w once half of size is owed.
func (win *window) give(n, size int32, w *frameWriter, id uint32) {
	win.unsent += n
	if win.unsent >= size/2 {
		w.note(w.fr.WriteWindowUpdate(id, uint32(win.unsent)))
		win.left += win.unsent
		win.unsent = 0
	}
}

// frameWriter writes one side's frames through a buffer, flushed when the
// goroutine that wrote runs out of input (see relay2.flush).
type frameWriter struct {
	conn  net.Conn
	bw    *bufio.Writer
	fr    *http2.Framer
	enc   *hpack.Encoder
	hbuf  bytes.Buffer
	dirty bool
	err   error
}

func newFrameWriter(c net.Conn) frameWriter {
	w := frameWriter{conn: c, bw: bufio.NewWriterSize(c, replyBuffer)}
	w.fr = http2.NewFramer(w.bw, nil)
	return w
}

// headers writes a header block for stream id, in CONTINUATION frames
// after the HEADERS when it is larger than the peer's frames.
func (w *frameWriter) headers(id uint32, fields []hpack.HeaderField, end bool, maxFrame uint32) {
	enc := w.encoder()
	w.hbuf.Reset()
	for _, f := range fields {
		enc.WriteField(f)
	}
	block := w.hbuf.Bytes()
	first := true
	for first || len(block) > 0 {
		n := min(len(block), int(maxFrame))
		frag := block[:n]
		block = block[n:]
		if first {
			w.note(w.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0}))
			first = false
		} else {
			w.note(w.fr.WriteContinuation(id, len(block) == 0, frag))
		}
	}
}

func (w *frameWriter) note(err error) {
	w.dirty = true
	if err != nil && w.err == nil {
		w.err = err
	}
}

// flush writes what is buffered; a peer that stops reading for as long as
// a connection may idle ends it.
func (w *frameWriter) flush(idle time.Duration) error {
	if !w.dirty || w.err != nil {
		return w.err
	}
	w.dirty = false
	w.conn.SetWriteDeadline(time.Now().Add(idle))
	if err := w.bw.Flush(); err != nil {
		w.err = err
		w.conn.Close()
	}
	return w.err
}

// stream2 is one of the agent's streams.
type stream2 struct {
	id   uint32 // the agent's
	upID uint32 // the upstream's; 0: exchanged
	req  *nethttp.Request

	// What goes to the agent: frames waiting for its window.
	queue   []item2
	queued  int
	sendWin int32
	sent    bool // the answer's end (END_STREAM or RST_STREAM) went out
	head    bool // the answer's head came (fast: from upstream)

	// What the agent sends.
	agentDone bool // the agent's END_STREAM or reset came
	recv      window
	in        bytes.Buffer // an exchanged request's body, as the agent sent it
	inErr     error        // what a read gets once in is empty
	inLen     int64        // what the agent sent of the body
	discard   bool         // the answer is done: what the agent still sends is dropped
	drain     *time.Timer  // ends a discarded body the agent stops sending
	expect    bool         // the agent waits for "100 Continue" before its body
	cancel    context.CancelFunc

	// A fast stream's answer as the recording keeps it.
	upRecv window
	body   []byte
	bodyN  int64
}

// item2 is a frame waiting for the agent: headers, data, or a reset.
type item2 struct {
	fields []hpack.HeaderField // headers, when set
	data   []byte
	end    bool
	rst    http2.ErrCode
	isRST  bool
}

// serveRelay serves the agent's HTTP/2 connection through u (dialRelay).
func (c *conn) serveRelay(ctx context.Context, agent net.Conn, u *up2) {
	r := &relay2{c: c, agent: agent, idle: orDefault(c.d.IdleTimeout, DefaultIdleTimeout),
		streams: map[uint32]*stream2{}, upStreams: map[uint32]*stream2{},
		agentWin: 65535, agentInit: 65535, agentFrame: 16384, agentRecv: window{left: relayConnWindow}}
	r.ctx, r.cancel = context.WithCancel(ctx)
	r.cond = sync.NewCond(&r.mu)
	r.aw = newFrameWriter(agent)
	r.ad = &dryReader{conn: agent, onDry: r.dry}
	var br *bufio.Reader
	r.ar, br = newFrameReader(r.ad, c.maxHeader)
	defer putFrameReader(br) // after close: read only by this goroutine
	r.mu.Lock()
	r.startUpstream(u)
	r.mu.Unlock()
	// The upstream connection is kept for the identity's next one unless
	// the session was ended (a kill, a revocation, shutdown).
	defer func() { r.close(ctx.Err() == nil) }()

	r.ad.deadline = time.Now().Add(c.s.Handshake)
	if !r.preface() {
		return
	}
	r.ad.deadline = time.Time{}
	r.mu.Lock()
	r.idleSince = time.Now()
	r.idleTimer = time.AfterFunc(r.idle, r.idleEnd)
	r.mu.Unlock()
	r.readAgent()
}

// startUpstream makes u the relay's upstream connection; the caller holds
// mu.
func (r *relay2) startUpstream(u *up2) {
	r.u = u
	u.attach(r)
}

// redial opens a new upstream connection once the last one took no more
// streams (a GOAWAY: nginx ends an HTTP/2 connection after 1 000
// requests, or 75 s idle, by default) and its streams are done, so that an
// agent's long connection keeps the relay. Streams go through the
// Transport meanwhile.
func (r *relay2) redial() {
	defer r.wg.Done()
	defer r.c.contain("http/2 redial")
	u := r.c.dialRelay(r.ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.redialing = false
	if u == nil {
		return
	}
	if r.closed || len(r.upStreams) > 0 {
		u.release(false, idleKey{})
		return
	}
	old := r.u
	r.startUpstream(u)
	old.release(false, idleKey{})
}

// dry flushes both writers: a reader found no more input at hand.
func (r *relay2) dry() {
	r.mu.Lock()
	r.flush()
	r.mu.Unlock()
}

// preface reads the agent's connection preface and answers it with the
// relay's settings. They go out with what the agent's first frames make
// (the acknowledgement of its settings, most often), when its input runs
// dry (dryReader): a write less per connection.
func (r *relay2) preface() bool {
	b := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(r.ad, b); err != nil || string(b) != http2.ClientPreface {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.aw.note(r.aw.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: orDefault(r.c.d.MaxConcurrentStreams, DefaultMaxConcurrentStreams)},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: relayStreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(r.c.maxHeader)}))
	r.aw.note(r.aw.fr.WriteWindowUpdate(0, relayConnWindow-65535))
	return true
}

// close ends the relay: the agent's connection, every stream's goroutine,
// the recording of the answers still under way, and its use of the
// upstream connection, kept for the identity's next agent connection when
// keep and no stream is under way on it.
func (r *relay2) close(keep bool) {
	r.mu.Lock()
	r.closed = true
	r.cancel()
	for _, s := range r.streams {
		r.recordBody(s)
		if s.inErr == nil {
			s.inErr = io.ErrUnexpectedEOF
		}
		if s.drain != nil {
			s.drain.Stop()
		}
	}
	if r.idleTimer != nil {
		r.idleTimer.Stop()
	}
	r.cond.Broadcast()
	r.aw.flush(closeFlush)
	r.u.release(keep && len(r.upStreams) == 0, r.c.idleKey(true))
	r.u = nil
	eof := r.agentEOF
	r.mu.Unlock()
	if tc, ok := r.agent.(*tls.Conn); ok && eof {
		// The agent closed first: a close_notify would go to a socket it
		// closed (nginx sends none either, once its peer's came).
		tc.NetConn().Close()
	} else {
		r.agent.Close()
	}
	r.wg.Wait()
}

// flush writes what both writers hold; the caller holds mu.
func (r *relay2) flush() {
	r.aw.flush(r.idle)
	if r.u != nil && r.u.w.flush(r.idle) != nil && !r.u.dead {
		r.upFailed(fmt.Errorf("upstream: %w", r.u.w.err))
	}
}

// readAgent reads the agent's frames until it goes, or the relay ends it.
func (r *relay2) readAgent() {
	for {
		f, err := r.ar.ReadFrame()
		r.mu.Lock()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				r.streamError(se.StreamID, se.Code)
				r.mu.Unlock()
				continue
			}
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &ce):
				r.goAway(http2.ErrCode(ce))
			case errors.Is(err, http2.ErrFrameTooLarge):
				r.goAway(http2.ErrCodeFrameSize)
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				r.agentEOF = true
			}
			r.mu.Unlock()
			return
		}
		code := r.agentFrame1(f)
		if code != http2.ErrCodeNo {
			r.goAway(code)
			r.mu.Unlock()
			return
		}
		end := r.closed
		r.mu.Unlock()
		if end {
			return
		}
	}
}

// dryReader reads a connection for a framer, and calls onDry before a
// read that may wait: what the frames read until then made goes out
// together, once no more of the peer's bytes are at hand. Bytes crypto/tls
// holds count as at hand: it hands out a record at a time, and a socket
// read brings it several. A flush whenever the framer's own buffer was
// empty made every record a write (`h2load`, one connection × 10 streams:
// 1.33 writes a request, 0.35 flushing when dry).
//
// With early, what the first record after a wait made goes out at once:
// batching the upstream's answers until dry made the agent get ten at a
// time and send its next ten at a time, each side then waiting on the
// other (`h2load` one connection −15 %, sixteen +25 %). Flushing the first
// early kept both (−1 to −5 % and +20 to +23 %, against flushing every
// record); the agent's side gained nothing from it.
type dryReader struct {
	conn     net.Conn
	onDry    func()
	early    bool
	deadline time.Time // of the reads that wait
	woke     bool      // the last read waited
}

// aLongTimeAgo is a read deadline that has passed: the poller refuses the
// read before any system call.
var aLongTimeAgo = time.Unix(1, 0)

func (d *dryReader) Read(p []byte) (int, error) {
	if d.woke {
		d.woke = false
		d.onDry()
	}
	d.conn.SetReadDeadline(aLongTimeAgo)
	n, err := d.conn.Read(p)
	d.conn.SetReadDeadline(d.deadline)
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return n, err
	}
	d.onDry()
	d.woke = d.early
	return d.conn.Read(p)
}

// agentFrame1 handles one frame from the agent; a code other than
// ErrCodeNo ends the connection with it. The caller holds mu.
func (r *relay2) agentFrame1(f http2.Frame) http2.ErrCode {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return http2.ErrCodeNo
		}
		if err := f.ForeachSetting(r.agentSetting); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return http2.ErrCode(ce)
			}
			return http2.ErrCodeProtocol
		}
		r.aw.note(r.aw.fr.WriteSettingsAck())
	case *http2.PingFrame:
		if !f.IsAck() {
			r.aw.note(r.aw.fr.WritePing(true, f.Data))
		}
	case *http2.WindowUpdateFrame:
		return r.agentWindow(f)
	case *http2.MetaHeadersFrame:
		return r.agentHeaders(f)
	case *http2.DataFrame:
		return r.agentData(f)
	case *http2.RSTStreamFrame:
		r.agentReset(f)
	case *http2.GoAwayFrame:
		// The agent opens no more streams; those under way go on.
	case *http2.PushPromiseFrame:
		return http2.ErrCodeProtocol
	}
	// PRIORITY frames and frames of unknown types are ignored.
	return http2.ErrCodeNo
}

// agentSetting applies one of the agent's settings.
func (r *relay2) agentSetting(s http2.Setting) error {
	if err := s.Valid(); err != nil {
		return err
	}
	switch s.ID {
	case http2.SettingInitialWindowSize:
		delta := int32(s.Val) - r.agentInit
		r.agentInit = int32(s.Val)
		for _, st := range r.streams {
			if int64(st.sendWin)+int64(delta) > 1<<31-1 {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
			st.sendWin += delta
		}
		r.sendAll()
	case http2.SettingMaxFrameSize:
		r.agentFrame = s.Val
	case http2.SettingHeaderTableSize:
		r.aw.encoder().SetMaxDynamicTableSizeLimit(s.Val)
	}
	return nil
}

func (w *frameWriter) encoder() *hpack.Encoder {
	if w.enc == nil {
		w.enc = hpack.NewEncoder(&w.hbuf)
	}
	return w.enc
}

// agentWindow credits what the relay may send the agent.
func (r *relay2) agentWindow(f *http2.WindowUpdateFrame) http2.ErrCode {
	if f.StreamID == 0 {
		if int64(r.agentWin)+int64(f.Increment) > 1<<31-1 {
			return http2.ErrCodeFlowControl
		}
		r.agentWin += int32(f.Increment)
		r.sendAll()
		return http2.ErrCodeNo
	}
	s := r.streams[f.StreamID]
	if s == nil {
		return http2.ErrCodeNo // a stream that ended
	}
	if int64(s.sendWin)+int64(f.Increment) > 1<<31-1 {
		r.resetStream(s, http2.ErrCodeFlowControl)
		return http2.ErrCodeNo
	}
	s.sendWin += int32(f.Increment)
	r.send(s)
	return http2.ErrCodeNo
}

// agentHeaders opens a stream with the agent's request, or ends one with
// its trailers.
func (r *relay2) agentHeaders(f *http2.MetaHeadersFrame) http2.ErrCode {
	id := f.StreamID
	if id%2 == 0 {
		return http2.ErrCodeProtocol
	}
	if s := r.streams[id]; s != nil {
		// Trailers: the end of an exchanged request's body. They are not
		// passed on, as they were not through net/http's server: the
		// request upstream was made before they came.
		if !f.StreamEnded() || s.agentDone {
			r.resetStream(s, http2.ErrCodeProtocol)
			return http2.ErrCodeNo
		}
		r.agentEnded(s)
		return http2.ErrCodeNo
	}
	if id <= r.lastAgent {
		// A stream that ended: its HEADERS are a connection error (RFC
		// 9113, 5.1), its trailers too.
		return http2.ErrCodeStreamClosed
	}
	r.lastAgent = id
	if r.goingAway {
		return http2.ErrCodeNo
	}
	if uint32(len(r.streams)) >= orDefault(r.c.d.MaxConcurrentStreams, DefaultMaxConcurrentStreams) {
		r.aw.note(r.aw.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream))
		return http2.ErrCodeNo
	}
	s := &stream2{id: id, sendWin: r.agentInit, recv: window{left: relayStreamWindow}, agentDone: f.StreamEnded()}
	r.streams[id] = s
	if r.idleTimer != nil {
		r.idleTimer.Stop()
	}
	if f.Truncated {
		r.reply(s, r.c.own(nethttp.StatusRequestHeaderFieldsTooLarge, "request head too large"))
		return http2.ErrCodeNo
	}
	req, code := r.request(f)
	if code != http2.ErrCodeNo {
		r.resetStream(s, code)
		return http2.ErrCodeNo
	}
	s.req = req
	if !s.agentDone {
		s.req.Body = &body2{r: r, s: s}
		if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
			// The agent waits for a go-ahead before it sends the body: it
			// gets one when the body is first read, once the request has
			// been allowed, as net/http's server does.
			req.Header.Del("Expect")
			s.expect = true
		}
	}
	// The decision is the reader's own: it waits for nothing but the
	// policy (a hold's wait is act's, on the stream's goroutine).
	r.mu.Unlock()
	v, own := r.c.decide(r.ctx, s.req)
	r.mu.Lock()
	switch {
	case r.closed:
	case own != nil:
		r.reply(s, own)
	case v.Action == protocol.Allow && s.agentDone && r.fastOK():
		r.forward(s, f)
	default:
		r.exchange(s, v)
	}
	return http2.ErrCodeNo
}

// fastOK reports whether an allowed request may go over the relay's
// upstream connection as it is; the caller holds mu.
func (r *relay2) fastOK() bool {
	u := r.u
	if u.next > 1<<31-1 && u.gone == nil {
		// Stream IDs run out (RFC 9113, 5.1.1).
		u.gone = errors.New("upstream stream IDs used up")
	}
	if u.gone != nil {
		if len(r.upStreams) == 0 && !r.redialing && !r.closed && time.Since(r.redialAt) >= time.Second {
			r.redialing, r.redialAt = true, time.Now()
			r.wg.Add(1)
			go r.redial()
		}
		return false
	}
	if uint32(len(r.upStreams)) >= u.limit {
		return false
	}
	g := r.c.d.Guard
	return g == nil || g.Passes(r.c.s, r.c.target)
}

// request builds the agent's request from its HEADERS as net/http's
// HTTP/2 server does, or returns the code its stream is reset with (RFC
// 9113, 8.1.1: a malformed request).
func (r *relay2) request(f *http2.MetaHeadersFrame) (*nethttp.Request, http2.ErrCode) {
	method, path, authority := f.PseudoValue("method"), f.PseudoValue("path"), f.PseudoValue("authority")
	if method == "" || method == "CONNECT" || path == "" || f.PseudoValue("scheme") == "" || f.PseudoValue("protocol") != "" {
		// CONNECT opens a tunnel, which interception does not relay.
		return nil, http2.ErrCodeProtocol
	}
	regular := f.RegularFields()
	h, values := make(nethttp.Header, len(regular)), make([]string, len(regular))
	for i, hf := range regular {
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			// Connection-specific (RFC 9113, 8.2.2).
			return nil, http2.ErrCodeProtocol
		case "te":
			if hf.Value != "trailers" {
				return nil, http2.ErrCodeProtocol
			}
		}
		addValue(h, values, i, textproto.CanonicalMIMEHeaderKey(hf.Name), hf.Value)
	}
	if cookies := h["Cookie"]; len(cookies) > 1 {
		// Split for HTTP/2's compression; one header to HTTP/1.1 (RFC
		// 9113, 8.2.3).
		h["Cookie"] = []string{strings.Join(cookies, "; ")}
	}
	if authority == "" {
		authority = h.Get("Host")
	}
	h.Del("Host")
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, http2.ErrCodeProtocol
	}
	req := &nethttp.Request{Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, Host: authority,
		RequestURI: path, RemoteAddr: r.agent.RemoteAddr().String(), ContentLength: -1, Body: nethttp.NoBody}
	if f.StreamEnded() {
		req.ContentLength = 0
	}
	if cl := h["Content-Length"]; len(cl) > 0 {
		n, err := strconv.ParseUint(cl[0], 10, 63)
		if err != nil || len(cl) > 1 || f.StreamEnded() && n != 0 {
			return nil, http2.ErrCodeProtocol
		}
		req.ContentLength = int64(n)
	}
	return req, http2.ErrCodeNo
}

// addValue adds v to h[k], in values[i] when k has none yet: the values
// of a head's fields share one array (a slice each was most of what
// building a head allocated).
func addValue(h nethttp.Header, values []string, i int, k, v string) {
	if vs, ok := h[k]; ok {
		h[k] = append(vs, v)
		return
	}
	values[i] = v
	h[k] = values[i : i+1 : i+1]
}

// forward sends a fast stream's HEADERS upstream, encoded anew for the
// upstream's connection: the agent's fields, the scheme the relay speaks,
// no Host (the authority says it).
func (r *relay2) forward(s *stream2, f *http2.MetaHeadersFrame) {
	s.upID = r.u.next
	r.u.next += 2
	s.upRecv = window{left: relayStreamWindow}
	r.upStreams[s.upID] = s
	fields := r.fields[:0]
	if f.PseudoValue("authority") == "" {
		fields = append(fields, hpack.HeaderField{Name: ":authority", Value: s.req.Host})
	}
	for _, hf := range f.Fields {
		switch hf.Name {
		case ":scheme":
			hf.Value = "https"
		case "host", "proxy-authorization", "proxy-authenticate", "trailer":
			// The authority says the host; the others are hop-by-hop.
			continue
		case ":authority":
			hf.Value = s.req.Host
		}
		fields = append(fields, hf)
	}
	r.u.w.headers(s.upID, fields, true, r.u.frame)
	r.fields = fields[:0]
}

// exchange answers a stream through exchange's path (act), on a goroutine
// of its own; the caller holds mu.
func (r *relay2) exchange(s *stream2, v protocol.Verdict) {
	ctx, cancel := context.WithCancel(r.ctx)
	s.cancel = cancel
	s.req = s.req.WithContext(ctx)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer r.c.contain("http/2 exchange")
		resp := r.c.act(s.req.Context(), s.req, v)
		r.respond(s, resp)
		if r.c.ended() != nil {
			// The session must end (an upstream that failed
			// verification): once its streams are answered.
			r.mu.Lock()
			r.goAway(http2.ErrCodeNo)
			r.flush()
			r.mu.Unlock()
		}
	}()
}

// reply answers a stream with interlockd's own small response, queued at
// once; the caller holds mu.
func (r *relay2) reply(s *stream2, resp *nethttp.Response) {
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.ContentLength = int64(len(body))
	s.head = true
	if len(body) == 0 {
		r.queue(s, item2{fields: responseFields(resp, s.req), end: true})
	} else {
		r.queue(s, item2{fields: responseFields(resp, s.req)})
		r.queue(s, item2{data: body, end: true})
	}
	r.answered(s)
}

// respond writes an exchanged stream's answer: its head, its body as the
// agent's window lets it go, its trailers.
func (r *relay2) respond(s *stream2, resp *nethttp.Response) {
	defer resp.Body.Close()
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.sent || r.closed {
		return
	}
	s.head = true
	if resp.ContentLength == 0 && len(resp.Trailer) == 0 {
		// No body (gRPC's trailers-only answer must be one HEADERS frame
		// that ends the stream).
		r.queue(s, item2{fields: responseFields(resp, s.req), end: true})
		r.flush()
		r.answered(s)
		return
	}
	r.queue(s, item2{fields: responseFields(resp, s.req)})
	bp := streamBufs.Get().(*[]byte)
	defer streamBufs.Put(bp)
	for {
		for s.queued >= relayQueued && !s.sent && !r.closed {
			r.flush()
			r.cond.Wait()
		}
		if s.sent || r.closed {
			return
		}
		r.flush()
		r.mu.Unlock()
		n, err := resp.Body.Read(*bp)
		r.mu.Lock()
		if s.sent || r.closed {
			return
		}
		if n > 0 {
			r.sendNow(s, (*bp)[:n], false)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			r.resetStream(s, http2.ErrCodeInternal)
			r.flush()
			return
		}
	}
	if len(resp.Trailer) > 0 {
		fields := make([]hpack.HeaderField, 0, len(resp.Trailer))
		for k, vs := range resp.Trailer {
			for _, v := range vs {
				fields = append(fields, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
			}
		}
		r.queue(s, item2{fields: fields, end: true})
	} else {
		r.queue(s, item2{end: true})
	}
	r.flush()
	r.answered(s)
}

// answered is an exchanged stream whose answer is queued whole: what the
// agent still sends of its body (the answer came first: a denied upload)
// is read and dropped, up to the body cap, as exchange's HTTP/1.1 path
// does, rather than reset, which some clients take for a failed transfer.
func (r *relay2) answered(s *stream2) {
	if s.agentDone {
		return
	}
	s.discard = true
	r.credit(s, s.in.Len())
	s.in.Reset()
	if s.inErr == nil {
		s.inErr = errors.New("the answer came before the request body's end")
	}
	r.cond.Broadcast()
	// An agent that stops sending for as long as exchange's HTTP/1.1 path
	// waits for a read (drainIdle) gets the stream reset.
	s.drain = time.AfterFunc(drainIdle, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.streams[s.id] == s && !s.agentDone {
			// What of the answer still waits for the agent's window goes
			// with it.
			r.dropQueue(s)
			s.sent = true
			r.aw.note(r.aw.fr.WriteRSTStream(s.id, http2.ErrCodeCancel))
			r.agentEnded(s)
			r.flush()
		}
	})
}

// responseFields is resp's head as HTTP/2 fields for the agent: its
// status, its headers but the hop-by-hop ones, and its length when known.
func responseFields(resp *nethttp.Response, req *nethttp.Request) []hpack.HeaderField {
	fields := make([]hpack.HeaderField, 0, len(resp.Header)+2)
	fields = append(fields, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(resp.StatusCode)})
	for k, vs := range resp.Header {
		if isHopHeader(k) || k == "Content-Length" {
			continue
		}
		name := strings.ToLower(k)
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: name, Value: v})
		}
	}
	bodyless := resp.StatusCode == nethttp.StatusNoContent || resp.StatusCode == nethttp.StatusNotModified
	if resp.ContentLength >= 0 && !bodyless && (req == nil || req.Method != nethttp.MethodHead || resp.ContentLength > 0) {
		fields = append(fields, hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(resp.ContentLength, 10)})
	}
	return fields
}

// agentData takes DATA of an exchanged request's body.
func (r *relay2) agentData(f *http2.DataFrame) http2.ErrCode {
	n := int32(f.Length)
	if r.agentRecv.left -= n; r.agentRecv.left < 0 {
		return http2.ErrCodeFlowControl
	}
	s := r.streams[f.StreamID]
	if s == nil || s.agentDone {
		// A stream that ended, or never began: its flow control is the
		// connection's still.
		r.agentRecv.give(n, relayConnWindow, &r.aw, 0)
		if s != nil {
			r.resetStream(s, http2.ErrCodeStreamClosed)
		} else if f.StreamID > r.lastAgent {
			return http2.ErrCodeProtocol
		}
		return http2.ErrCodeNo
	}
	if s.recv.left -= n; s.recv.left < 0 {
		r.resetStream(s, http2.ErrCodeFlowControl)
		return http2.ErrCodeNo
	}
	data := f.Data()
	// Padding is never read: credited now.
	r.credit(s, int(n)-len(data))
	s.inLen += int64(len(data))
	if s.discard || s.req == nil {
		if s.drain != nil {
			s.drain.Reset(drainIdle)
		}
		r.credit(s, len(data))
		if s.inLen > r.c.maxBody {
			r.resetStream(s, http2.ErrCodeCancel)
			return http2.ErrCodeNo
		}
	} else {
		s.in.Write(data)
	}
	if s.req != nil {
		if cl := s.req.ContentLength; cl >= 0 && (s.inLen > cl || f.StreamEnded() && s.inLen != cl) {
			// A body longer or shorter than its Content-Length (RFC 9113,
			// 8.1.1).
			r.resetStream(s, http2.ErrCodeProtocol)
			return http2.ErrCodeNo
		}
	}
	if f.StreamEnded() {
		r.agentEnded(s)
	}
	r.cond.Broadcast()
	return http2.ErrCodeNo
}

// agentEnded is the agent's end of a stream's request: its body's reads
// get io.EOF once it is read, unless the stream was abandoned first.
func (r *relay2) agentEnded(s *stream2) {
	s.agentDone = true
	if s.inErr == nil {
		s.inErr = io.EOF
	}
	r.cond.Broadcast()
	r.finish(s)
}

// agentReset is the agent's RST_STREAM: its stream is abandoned on both
// sides. An agent that resets more streams a second than it may have
// open is opening them to reset them (the "rapid reset" attack), and its
// connection ends.
func (r *relay2) agentReset(f *http2.RSTStreamFrame) {
	if now := time.Now(); now.Sub(r.resetsAt) > time.Second {
		r.resetsAt, r.resets = now, 0
	}
	r.resets++
	if r.resets > int(orDefault(r.c.d.MaxConcurrentStreams, DefaultMaxConcurrentStreams)) {
		r.goAwayNow(http2.ErrCodeEnhanceYourCalm)
		return
	}
	if s := r.streams[f.StreamID]; s != nil {
		s.sent = true // nothing more goes to the agent on it
		r.dropQueue(s)
		r.abandon(s, errors.New("the agent reset the stream"))
		r.agentEnded(s)
	}
}

// resetStream ends a stream on both sides with code; the caller holds mu.
func (r *relay2) resetStream(s *stream2, code http2.ErrCode) {
	if !s.sent {
		r.dropQueue(s)
		r.queue(s, item2{isRST: true, rst: code})
	}
	r.abandon(s, fmt.Errorf("stream reset: %v", code))
	if !s.agentDone {
		r.agentEnded(s)
	}
}

// abandon ends what a stream has under way upstream: its exchange's
// context, or its fast stream (reset upstream).
func (r *relay2) abandon(s *stream2, err error) {
	if s.cancel != nil {
		s.cancel()
	}
	if s.in.Len() > 0 {
		r.credit(s, s.in.Len())
		s.in.Reset()
	}
	if s.inErr == nil {
		s.inErr = err
	}
	if s.upID != 0 && r.upStreams[s.upID] == s {
		delete(r.upStreams, s.upID)
		if r.u != nil && !r.u.dead {
			r.u.w.note(r.u.w.fr.WriteRSTStream(s.upID, http2.ErrCodeCancel))
		}
		r.recordBody(s)
	}
}

// streamError is a stream error the framer found in the agent's frames.
func (r *relay2) streamError(id uint32, code http2.ErrCode) {
	if s := r.streams[id]; s != nil {
		r.resetStream(s, code)
		return
	}
	if id > r.lastAgent {
		r.lastAgent = id
	}
	r.aw.note(r.aw.fr.WriteRSTStream(id, code))
}

// queue adds a frame to what goes to the agent on s, and sends what the
// windows allow; the caller holds mu.
func (r *relay2) queue(s *stream2, it item2) {
	if s.sent {
		return
	}
	s.queue = append(s.queue, it)
	s.queued += len(it.data)
	r.send(s)
}

// dropQueue forgets what waits for the agent on s, and credits the
// upstream for it.
func (r *relay2) dropQueue(s *stream2) {
	if s.upID != 0 {
		r.creditUp(s, s.queued)
	}
	s.queue, s.queued = nil, 0
	r.cond.Broadcast()
}

// sendAll sends what the agent's windows now allow on every stream.
func (r *relay2) sendAll() {
	for _, s := range r.streams {
		if len(s.queue) > 0 {
			r.send(s)
		}
	}
}

// send writes s's queued frames to the agent as its windows allow.
func (r *relay2) send(s *stream2) {
	for len(s.queue) > 0 {
		it := &s.queue[0]
		switch {
		case it.isRST:
			r.aw.note(r.aw.fr.WriteRSTStream(s.id, it.rst))
		case it.fields != nil:
			r.aw.headers(s.id, it.fields, it.end, r.agentFrame)
		default:
			n, ok := r.writeData(s, it.data, it.end)
			if !ok {
				return
			}
			s.queued -= n
			it.data = it.data[n:]
			if len(it.data) > 0 {
				continue
			}
		}
		end := it.end || it.isRST
		s.queue = s.queue[1:]
		if end {
			s.sent = true
			s.queue = nil
			r.finish(s)
		}
	}
	r.cond.Broadcast()
}

// creditUp gives the upstream back n bytes of window on s (nil: the
// connection only), in WINDOW_UPDATEs of half a window at least.
func (r *relay2) creditUp(s *stream2, n int) {
	u := r.u
	if n <= 0 || u == nil || u.dead {
		return
	}
	u.recv.give(int32(n), relayConnWindow, &u.w, 0)
	if s != nil && r.upStreams[s.upID] == s {
		s.upRecv.give(int32(n), relayStreamWindow, &u.w, s.upID)
	}
}

// credit gives the agent back n bytes of window on s, as creditUp.
func (r *relay2) credit(s *stream2, n int) {
	if n <= 0 {
		return
	}
	r.agentRecv.give(int32(n), relayConnWindow, &r.aw, 0)
	if !s.agentDone {
		s.recv.give(int32(n), relayStreamWindow, &r.aw, s.id)
	}
}

// finish forgets a stream both of whose sides ended.
func (r *relay2) finish(s *stream2) {
	if !s.sent || !s.agentDone || r.streams[s.id] != s {
		return
	}
	delete(r.streams, s.id)
	if s.drain != nil {
		s.drain.Stop()
	}
	if s.upID != 0 && r.upStreams[s.upID] == s {
		delete(r.upStreams, s.upID)
	}
	if s.cancel != nil {
		s.cancel()
	}
	if len(r.streams) == 0 {
		if r.goingAway {
			r.flush()
			r.closed = true
			r.agent.Close()
		} else if r.idleTimer != nil {
			r.idleSince = time.Now()
			r.idleTimer.Reset(r.idle)
		}
	}
}

// goAway tells the agent no more streams are taken; the connection ends
// once those under way are answered.
func (r *relay2) goAway(code http2.ErrCode) {
	if r.goingAway {
		return
	}
	r.goingAway = true
	r.aw.note(r.aw.fr.WriteGoAway(r.lastAgent, code, nil))
	if code != http2.ErrCodeNo || len(r.streams) == 0 {
		r.flush()
		r.closed = true
		r.agent.Close()
	}
}

// goAwayNow ends the connection at once with code.
func (r *relay2) goAwayNow(code http2.ErrCode) {
	r.goingAway = false
	r.goAway(code)
}

// idleEnd ends a connection with no stream for its idle time.
func (r *relay2) idleEnd() {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A timer that fired as a stream began, and waited for mu while it
	// ended, is not an idle connection's.
	if len(r.streams) == 0 && !r.closed && time.Since(r.idleSince) >= r.idle {
		r.goAway(http2.ErrCodeNo)
	}
}

// upFrame handles a frame from the upstream connection (or the error
// read instead), which the relay owns; false: the connection ends. The
// caller holds mu.
func (r *relay2) upFrame(f http2.Frame, err error) bool {
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			if s := r.upStreams[se.StreamID]; s != nil {
				r.upstreamFailed(s, fmt.Errorf("upstream: %w", err), http2.ErrCodeInternal)
				r.u.w.note(r.u.w.fr.WriteRSTStream(se.StreamID, se.Code))
			}
			return true
		}
		if !r.closed {
			r.upFailed(fmt.Errorf("upstream: %w", err))
			r.flush()
		}
		return false
	}
	if err := r.upFrame1(f); err != nil {
		r.upFailed(err)
		r.flush()
		return false
	}
	return true
}

// upFrame1 handles one frame from the upstream; an error ends the
// upstream connection. The caller holds mu.
func (r *relay2) upFrame1(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if err := r.u.settings(f); err != nil {
			return fmt.Errorf("upstream settings: %w", err)
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			r.u.w.note(r.u.w.fr.WritePing(true, f.Data))
		}
	case *http2.MetaHeadersFrame:
		r.upHeaders(f)
	case *http2.DataFrame:
		return r.upData(f)
	case *http2.RSTStreamFrame:
		if s := r.upStreams[f.StreamID]; s != nil {
			code := f.ErrCode
			if code == http2.ErrCodeNo {
				code = http2.ErrCodeInternal
			}
			err := fmt.Errorf("upstream reset the stream: %v", f.ErrCode)
			if code == http2.ErrCodeRefusedStream {
				r.upstreamLost(s, err, true)
			} else {
				r.upstreamFailed(s, err, code)
			}
		}
	case *http2.GoAwayFrame:
		// Streams above its last are not taken, and may be sent again:
		// the agent is told so. The others go on; new ones go through
		// the Transport.
		if r.u.gone == nil {
			r.u.gone = fmt.Errorf("upstream: GOAWAY %v", f.ErrCode)
		}
		for id, s := range r.upStreams {
			if id > f.LastStreamID {
				r.upstreamLost(s, r.u.gone, true)
			}
		}
	case *http2.PushPromiseFrame:
		return errors.New("upstream: PUSH_PROMISE, which the relay disabled")
	}
	return nil
}

// upHeaders takes a fast stream's answer head, or its trailers.
func (r *relay2) upHeaders(f *http2.MetaHeadersFrame) {
	s := r.upStreams[f.StreamID]
	if s == nil {
		return // a stream the relay reset
	}
	if f.Truncated {
		r.upstreamFailed(s, fmt.Errorf("upstream: response head over %d bytes", r.c.maxHeader), http2.ErrCodeInternal)
		return
	}
	if s.head {
		// Trailers.
		if !f.StreamEnded() {
			r.upstreamFailed(s, errors.New("upstream: trailers that do not end the stream"), http2.ErrCodeProtocol)
			return
		}
		r.upEnded(s)
		r.headersNow(s, f.RegularFields(), true)
		return
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 {
		r.upstreamFailed(s, errors.New("upstream: a response without a valid :status"), http2.ErrCodeProtocol)
		return
	}
	if status < 200 {
		// Informational answers stay upstream, as the Transport keeps
		// them.
		return
	}
	s.head = true
	regular := f.RegularFields()
	resp := &nethttp.Response{StatusCode: status, Status: strconv.Itoa(status) + " " + nethttp.StatusText(status),
		ProtoMajor: 2, Header: make(nethttp.Header, len(regular))}
	values := make([]string, len(regular))
	fields := append(r.fields[:0], f.PseudoFields()...)
	for i, hf := range regular {
		k := textproto.CanonicalMIMEHeaderKey(hf.Name)
		if isHopHeader(k) {
			continue
		}
		addValue(resp.Header, values, i, k, hf.Value)
		fields = append(fields, hf)
	}
	b := headBuf()
	responseHead(b, resp)
	r.c.recordHead(false, MsgResponse, b)
	if f.StreamEnded() {
		r.upEnded(s)
	}
	r.headersNow(s, fields, f.StreamEnded())
	r.fields = fields[:0]
}

// headersNow sends the agent a header block on s: at once when nothing
// waits before it, else queued (a copy: fields may be r.fields).
func (r *relay2) headersNow(s *stream2, fields []hpack.HeaderField, end bool) {
	if len(s.queue) > 0 {
		r.queue(s, item2{fields: slices.Clone(fields), end: end})
		return
	}
	if s.sent {
		return
	}
	r.aw.headers(s.id, fields, end, r.agentFrame)
	if end {
		s.sent = true
		r.finish(s)
	}
}

// upData takes DATA of a fast stream's answer.
func (r *relay2) upData(f *http2.DataFrame) error {
	n := int32(f.Length)
	if r.u.recv.left -= n; r.u.recv.left < 0 {
		return errors.New("upstream: DATA beyond the connection's window")
	}
	s := r.upStreams[f.StreamID]
	if s == nil {
		r.creditUp(nil, int(n))
		return nil
	}
	if s.upRecv.left -= n; s.upRecv.left < 0 || !s.head {
		r.upstreamFailed(s, errors.New("upstream: DATA beyond the stream's window, or before its head"), http2.ErrCodeFlowControl)
		return nil
	}
	data := f.Data()
	r.creditUp(s, int(n)-len(data))
	switch {
	case f.StreamEnded() && s.bodyN == 0:
		// The whole body in one frame, as most small answers come: recorded
		// from the frame (the recorder copies what it keeps).
		if len(data) > 0 {
			r.c.s.Recorder.Record(protocol.Message{Type: MsgResponseBody, Time: time.Now(), Body: data[:min(len(data), r.c.maxRecorded)]})
		}
		s.bodyN = -1
		r.upEnded(s)
	default:
		if keep := min(len(data), r.c.maxRecorded-len(s.body)); keep > 0 {
			s.body = append(s.body, data[:keep]...)
		}
		s.bodyN += int64(len(data))
		if f.StreamEnded() {
			r.upEnded(s)
		}
	}
	if len(data) == 0 && !f.StreamEnded() {
		return nil
	}
	r.sendNow(s, data, f.StreamEnded())
	return nil
}

// sendNow writes DATA to the agent at once when nothing waits before it,
// as far as the windows allow, and queues a copy of the rest: data is the
// framer's, overwritten by the next frame read.
func (r *relay2) sendNow(s *stream2, data []byte, end bool) {
	if len(s.queue) == 0 && !s.sent {
		for {
			n, ok := r.writeData(s, data, end)
			if !ok {
				break
			}
			if data = data[n:]; len(data) == 0 {
				if end {
					s.sent = true
					r.finish(s)
				}
				return
			}
		}
	}
	r.queue(s, item2{data: bytes.Clone(data), end: end})
}

// writeData writes the agent one DATA frame of the start of data on s, as
// large as its windows and frame size allow, ending the stream when it is
// all of data and end. It returns the bytes written, and false when the
// windows allow none of a data that is not empty.
func (r *relay2) writeData(s *stream2, data []byte, end bool) (int, bool) {
	n := min(int32(len(data)), s.sendWin, r.agentWin, int32(r.agentFrame))
	if n <= 0 {
		if len(data) > 0 {
			return 0, false
		}
		n = 0
	}
	r.aw.note(r.aw.fr.WriteData(s.id, end && int(n) == len(data), data[:n]))
	s.sendWin -= n
	r.agentWin -= n
	if s.upID != 0 {
		r.creditUp(s, int(n))
	}
	return int(n), true
}

// upEnded is the upstream's end of a fast stream: its answer is whole.
func (r *relay2) upEnded(s *stream2) {
	r.recordBody(s)
	// Credit for what it sent and still waits for the agent's window is
	// the connection's alone from now on.
	delete(r.upStreams, s.upID)
}

// recordBody records what a fast stream's answer body was, once.
func (r *relay2) recordBody(s *stream2) {
	if s.upID == 0 || s.bodyN < 0 {
		return
	}
	if s.bodyN > 0 {
		r.c.s.Recorder.Record(protocol.Message{Type: MsgResponseBody, Time: time.Now(), Body: s.body})
	}
	s.bodyN, s.body = -1, nil
}

// upstreamFailed ends a fast stream the upstream failed: a 502 when the
// agent has no answer head yet (or code REFUSED_STREAM: the agent may
// send it again), a reset with code once it has.
func (r *relay2) upstreamFailed(s *stream2, err error, code http2.ErrCode) {
	if r.upStreams[s.upID] == s {
		delete(r.upStreams, s.upID)
	}
	r.recordBody(s)
	switch {
	case s.sent:
	case !s.head && code != http2.ErrCodeRefusedStream:
		r.reply(s, r.c.own(nethttp.StatusBadGateway, err.Error()))
	default:
		r.resetStream(s, code)
	}
}

// upstreamLost is a fast stream the upstream connection lost before its
// answer began: refused by the server (above a GOAWAY's last stream, or
// REFUSED_STREAM), which did not process it, or on a connection that
// failed, when the request is one safe to send twice (replayable). Such a
// stream goes again through the Transport, over a connection of its own,
// as net/http's Transport and idle1 retry: a kept connection the server
// closed as it was taken must not cost the agent its request. Any other
// fails (upstreamFailed).
func (r *relay2) upstreamLost(s *stream2, err error, refused bool) {
	if s.head || s.sent || r.closed || !refused && !replayable(s.req) {
		code := http2.ErrCodeInternal
		if refused {
			code = http2.ErrCodeRefusedStream
		}
		r.upstreamFailed(s, err, code)
		return
	}
	if r.upStreams[s.upID] == s {
		delete(r.upStreams, s.upID)
	}
	s.upID = 0
	r.exchange(s, protocol.Verdict{Action: protocol.Allow})
}

// upFailed is the upstream connection's end: every fast stream under way
// fails, or goes again (upstreamLost), and new streams go through the
// Transport.
func (r *relay2) upFailed(err error) {
	if r.u.gone == nil {
		r.u.gone = err
	}
	r.u.dead = true
	for _, s := range r.upStreams {
		r.upstreamLost(s, err, false)
	}
}

// body2 is an exchanged request's body: the agent's DATA as it comes.
type body2 struct {
	r *relay2
	s *stream2
}

func (b *body2) Read(p []byte) (int, error) {
	r, s := b.r, b.s
	r.mu.Lock()
	defer r.mu.Unlock()
	for s.in.Len() == 0 && s.inErr == nil && !r.closed {
		r.cond.Wait()
	}
	if s.in.Len() == 0 {
		if s.inErr == nil {
			return 0, io.ErrUnexpectedEOF
		}
		return 0, s.inErr
	}
	if s.expect {
		s.expect = false
		r.queue(s, item2{fields: []hpack.HeaderField{{Name: ":status", Value: "100"}}})
	}
	n, _ := s.in.Read(p)
	r.credit(s, n)
	r.flush()
	return n, nil
}

func (b *body2) Close() error {
	r, s := b.r, b.s
	r.mu.Lock()
	defer r.mu.Unlock()
	r.credit(s, s.in.Len())
	s.in.Reset()
	// What the agent still sends is dropped.
	s.discard = true
	r.flush()
	return nil
}
