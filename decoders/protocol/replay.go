package protocol

import (
	"io"
	"net"
)

// ReplayConn is a connection whose reads come from R: a decoder that read
// the start of a stream to decide (a ClientHello, an SSLRequest, an SSH key
// exchange) hands the library a reader of those bytes followed by the rest.
type ReplayConn struct {
	net.Conn
	R io.Reader
}

func (c *ReplayConn) Read(p []byte) (int, error) { return c.R.Read(p) }
