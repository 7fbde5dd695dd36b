package http

import (
	"bytes"
	"crypto/tls"
	"errors"
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

// peekHello reads a TLS ClientHello from r with crypto/tls itself and
// returns it with every byte it read, which the caller hands on so the
// hello can be read again (by interlockd's own TLS server, or by the
// upstream on passthrough). Nothing is written to the agent: the aborted
// handshake's alert is dropped. crypto/tls bounds what it reads (a
// handshake message is at most 64 KiB); a hello it cannot parse is an
// error.
func peekHello(r io.Reader) (Hello, []byte, error) {
	rc := &recordingConn{r: r}
	var h Hello
	seen := false
	cfg := &tls.Config{GetConfigForClient: func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
		h = Hello{ServerName: ch.ServerName, ALPN: append([]string(nil), ch.SupportedProtos...)}
		seen = true
		return nil, errPeeked
	}}
	err := tls.Server(rc, cfg).Handshake()
	if !seen {
		if err == nil {
			err = errors.New("handshake ended without a ClientHello")
		}
		return Hello{}, nil, err
	}
	return h, rc.read.Bytes(), nil
}

// recordingConn is the connection peekHello's handshake runs on: reads
// come from r and are kept, writes are dropped.
type recordingConn struct {
	r    io.Reader
	read bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read.Write(p[:n])
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *recordingConn) Close() error                     { return nil }
func (c *recordingConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *recordingConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *recordingConn) SetDeadline(time.Time) error      { return nil }
func (c *recordingConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordingConn) SetWriteDeadline(time.Time) error { return nil }

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
