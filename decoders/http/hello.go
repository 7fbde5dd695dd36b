package http

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Hello is what an agent's ClientHello says about where it is going.
type Hello struct {
	// ServerName is the SNI, "" when the agent sent none (an IP address).
	ServerName string
	// ALPN lists the application protocols the agent offers.
	ALPN []string
}

// errPeeked stops the handshake peekHello runs once the hello is read.
var errPeeked = errors.New("client hello read")

// maxHelloPeek bounds the bytes peekHello holds for a ClientHello:
// crypto/tls's cap on a handshake message (64 KiB) and the headers of the
// records carrying it at their largest (16 KiB each). A hello split into
// records so small that their headers take it past this is refused.
const maxHelloPeek = 65536 + 4 + 5*5

// peekHello reads a TLS ClientHello from br with crypto/tls itself without
// consuming it: the handshake crypto/tls runs reads br's buffered bytes,
// which stay there for whoever reads br next (interlockd's own TLS
// server, or the relay to the upstream on passthrough). Nothing is written
// to the agent: the aborted handshake's alert is dropped. It returns the
// hello and the reader that holds it: br or, for a hello larger than br's
// buffer, a larger reader that has taken in all br held. A hello
// crypto/tls cannot parse is an error.
func peekHello(br *bufio.Reader) (Hello, *bufio.Reader, error) {
	pc := &peekConn{br: br}
	var h Hello
	seen := false
	cfg := &tls.Config{GetConfigForClient: func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
		h = Hello{ServerName: ch.ServerName, ALPN: append([]string(nil), ch.SupportedProtos...)}
		seen = true
		return nil, errPeeked
	}}
	err := tls.Server(pc, cfg).Handshake()
	if !seen {
		if err == nil {
			err = errors.New("handshake ended without a ClientHello")
		}
		return Hello{}, pc.br, err
	}
	return h, pc.br, nil
}

// peekConn is the connection peekHello's handshake runs on: reads come
// from br's buffer past off, waiting for more of the agent's bytes only
// when crypto/tls has read all br holds; writes are dropped.
type peekConn struct {
	br  *bufio.Reader
	off int
}

func (c *peekConn) Read(p []byte) (int, error) {
	if c.off == c.br.Buffered() {
		if c.off == c.br.Size() {
			if c.off >= maxHelloPeek {
				return 0, fmt.Errorf("ClientHello over %d bytes", maxHelloPeek)
			}
			// Its first read takes in all br holds.
			c.br = bufio.NewReaderSize(c.br, maxHelloPeek)
		}
		if _, err := c.br.Peek(c.off + 1); err != nil {
			return 0, err
		}
	}
	b, _ := c.br.Peek(c.br.Buffered())
	n := copy(p, b[c.off:])
	c.off += n
	return n, nil
}

func (c *peekConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *peekConn) Close() error                     { return nil }
func (c *peekConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *peekConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *peekConn) SetDeadline(time.Time) error      { return nil }
func (c *peekConn) SetReadDeadline(time.Time) error  { return nil }
func (c *peekConn) SetWriteDeadline(time.Time) error { return nil }

// A fatal alert record (RFC 8446, 6): its content type, its level, and
// the descriptions a refused handshake ends with.
const (
	recordTypeAlert    = 21
	alertLevelFatal    = 2
	alertAccessDenied  = 49 // the policy refused the server name
	alertInternalError = 80 // interlockd cannot serve it
)

// refuseTLS answers the agent's ClientHello, already read whole (peekHello),
// with a fatal alert, so a refusal reads as a TLS failure, not a hang-up,
// and says which: crypto/tls answers any refusal of GetConfigForClient
// with internal_error, which told an agent's user nothing of a policy. The
// record is the plaintext alert TLS 1.2 and 1.3 clients take before a
// server's hello. What the agent sends until it hangs up, within a
// second, is read and dropped: a socket closed with bytes unread resets
// the connection, and the reset can reach the agent before the alert.
func refuseTLS(agent net.Conn, alert byte) {
	agent.SetDeadline(time.Now().Add(time.Second))
	if _, err := agent.Write([]byte{recordTypeAlert, 3, 3, 0, 2, alertLevelFatal, alert}); err == nil {
		io.Copy(io.Discard, io.LimitReader(agent, refuseDrain))
	}
}

// refuseDrain bounds what refuseTLS reads after its alert.
const refuseDrain = 64 << 10
