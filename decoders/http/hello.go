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

// errRefused is what refuseTLS's handshake fails with.
var errRefused = errors.New("server name refused")

// refuseTLS answers the agent's ClientHello with crypto/tls's own alert,
// so a refused server name reads as a TLS failure, not a hang-up.
func refuseTLS(agent net.Conn) {
	agent.SetDeadline(time.Now().Add(time.Second))
	tls.Server(agent, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return nil, errRefused
	}}).Handshake()
}
