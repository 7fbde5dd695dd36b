package http

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"syscall"
)

// upstream1 is the HTTP/1.1 connection upstream of an agent's HTTP/1.1
// connection, for its requests without a body. The agent's requests come
// one at a time, so one connection serves them in order, and the goroutine
// serving the agent writes each request and reads its answer itself:
// net/http's Transport hands a request to a writer goroutine and its answer
// back from a reader goroutine (HTTP/2: from its reader goroutine), and
// those switches cost a small request more than the rest of its path.
//
// Requests with a body still go through the Transport, which writes the
// body while it reads an answer that may come before the body's end; so do
// an HTTP/2 agent's, and everything on a session whose server does not
// speak HTTP/1.1.
type upstream1 struct {
	c    *conn
	nc   net.Conn // nil: none open
	br   *bufio.Reader
	bw   *bufio.Writer
	stop func() bool
	off  bool // the server does not speak HTTP/1.1
}

// direct reports whether out goes through u rather than the Transport.
func (u *upstream1) direct(agent *nethttp.Request, out *nethttp.Request) bool {
	return !u.off && agent.ProtoMajor == 1 && out.Body == nethttp.NoBody && !isWebSocket(agent)
}

// roundTrip sends out and reads its answer. A connection the server closed
// while idle is found when the request fails before any answer: a request
// safe to repeat is then sent once more, over a new connection.
func (u *upstream1) roundTrip(ctx context.Context, out *nethttp.Request) (*nethttp.Response, error) {
	// An open connection has answered before (a failure closes it), so
	// the server may since have closed it idle. A connection an earlier
	// session kept is taken only for a request that may be sent again.
	reused := u.nc != nil
	if !reused && replayable(out) {
		reused = u.takeIdle(ctx)
	}
	resp, err := u.try(ctx, out)
	if err != nil && reused && ctx.Err() == nil && replayable(out) && staleConn(err) {
		u.close()
		resp, err = u.try(ctx, out)
	}
	return resp, err
}

func (u *upstream1) try(ctx context.Context, out *nethttp.Request) (*nethttp.Response, error) {
	if u.nc == nil {
		if err := u.dial(ctx); err != nil {
			return nil, err
		}
	}
	if err := out.Write(u.bw); err != nil {
		u.close()
		return nil, err
	}
	if err := u.bw.Flush(); err != nil {
		u.close()
		return nil, err
	}
	for informational := 0; ; informational++ {
		// The head must fit the reader's buffer, as the Transport bounds
		// it with MaxResponseHeaderBytes.
		if _, err := peekHead(u.br); err != nil {
			u.close()
			if errors.Is(err, errHeadTooLarge) {
				return nil, fmt.Errorf("response head over %d bytes", u.br.Size())
			}
			return nil, err
		}
		resp, err := nethttp.ReadResponse(u.br, out)
		if err != nil {
			u.close()
			return nil, err
		}
		switch {
		case resp.StatusCode == nethttp.StatusSwitchingProtocols:
			// Only a WebSocket is upgraded, and it goes through the
			// Transport.
			u.close()
			return nil, errors.New("the server switched protocols unasked")
		case resp.StatusCode >= 100 && resp.StatusCode < 200 && informational < maxInformational:
			// 1xx (103 Early Hints): the answer follows.
			continue
		case resp.StatusCode < 200:
			u.close()
			return nil, errors.New("too many informational (1xx) answers")
		}
		resp.Body = &body1{ReadCloser: resp.Body, u: u, keep: !resp.Close, done: resp.Body == nethttp.NoBody}
		return resp, nil
	}
}

// dial opens the connection: TLS when intercepting, with the Transport's
// configuration (verified for the agent's server name, resumed from the
// target's earlier connections) but offering HTTP/1.1 alone.
func (u *upstream1) dial(ctx context.Context) error {
	c := u.c
	nc, err := c.s.Upstream.Dial(ctx)
	if err != nil {
		return err
	}
	if c.t.Mode == Intercept {
		cfg := c.upTLS.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(nc, cfg)
		hctx, cancel := context.WithTimeout(ctx, c.s.Handshake)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			nc.Close()
			var verr *tls.CertificateVerificationError
			if errors.As(err, &verr) || ctx.Err() != nil {
				return err
			}
			// A server that refuses a client offering HTTP/1.1 alone (an
			// HTTP/2-only server answers with a no_application_protocol
			// alert): the Transport, which offers both, serves the
			// session, and reports its own failure if it fails too.
			u.off = true
			return errNoHTTP1
		}
		nc = tc
	}
	// Closed with the session, which ends a read waiting on the server.
	u.stop = context.AfterFunc(ctx, func() { nc.Close() })
	u.nc = nc
	u.br, u.bw = bufio.NewReaderSize(nc, c.maxHeader), bufio.NewWriterSize(nc, 4<<10)
	return nil
}

// maxInformational bounds the 1xx answers before the answer, as net/http's
// Transport does.
const maxInformational = 5

// errNoHTTP1 sends a request to the Transport: see dial.
var errNoHTTP1 = errors.New("the server does not speak HTTP/1.1")

// takeIdle takes a connection an earlier session of the identity kept
// (idle1), and reports whether it got one.
func (u *upstream1) takeIdle(ctx context.Context) bool {
	ic := u.c.d.idle.take(u.c.idleKey(false))
	if ic == nil {
		return false
	}
	u.nc, u.br, u.bw = ic.nc, ic.br, ic.bw
	u.stop = context.AfterFunc(ctx, func() { ic.nc.Close() })
	return true
}

// keep ends the session's use of the connection: one still open is in
// step with its server (body1.Close closes it otherwise, as does every
// failure and a server's close) and is kept for the identity's next
// session.
func (u *upstream1) keep() {
	if u.nc == nil || !u.stop() {
		// stop false: the session's context closed it.
		u.close()
		return
	}
	u.c.d.idle.put(u.c.idleKey(false), &idleConn{nc: u.nc, br: u.br, bw: u.bw})
	u.nc = nil
}

// idleKey is what the session's upstream connections may be reused for:
// HTTP/1.1 ones, or the HTTP/2 relay's (h2).
func (c *conn) idleKey(h2 bool) idleKey {
	k := idleKey{identity: c.s.Identity, target: c.target, serverName: c.serverName, addr: c.s.Upstream.Addr(), mode: c.t.Mode, h2: h2}
	if c.t.Mode == Intercept {
		k.verified = c.d.upstreamOf(c.target, c.t.RootCAs)
	}
	return k
}

// close drops the connection; the next request opens another.
func (u *upstream1) close() {
	if u.nc == nil {
		return
	}
	u.stop()
	u.nc.Close()
	u.nc = nil
}

// body1 is an answer's body: the connection serves the next request only
// once the body was read to its end and the server did not close it.
type body1 struct {
	io.ReadCloser
	u    *upstream1
	keep bool
	done bool
}

func (b *body1) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done = true
	}
	return n, err
}

func (b *body1) Close() error {
	err := b.ReadCloser.Close()
	// Bytes already past the answer would be read as the next request's:
	// the server is out of step, and the connection is not used again.
	if !b.done || !b.keep || b.u.br.Buffered() > 0 {
		b.u.close()
	}
	return err
}

// replayable reports whether out may be sent again after its first try
// failed before any answer: no body, and a method that is safe to repeat
// (or a key the server dedupes by), as net/http's Transport decides.
func replayable(out *nethttp.Request) bool {
	switch out.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	_, key := out.Header["Idempotency-Key"]
	_, xkey := out.Header["X-Idempotency-Key"]
	return key || xkey
}

// staleConn reports whether err is a connection the server had closed:
// the request failed to go, or the connection ended before an answer.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE)
}
