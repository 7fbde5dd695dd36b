package http

import (
	"bufio"
	"errors"
	"io"
	nethttp "net/http"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// Message types of a WebSocket's relay in the recording: the bytes each
// way, as they crossed, up to MaxRecordedBody per direction.
const (
	MsgWebSocketUp   = 'w'
	MsgWebSocketDown = 'W'
)

// isWebSocket reports whether req asks for an HTTP/1.1 upgrade to a
// WebSocket, the one upgrade interlockd passes on (once the request is
// allowed; a rule may match its Upgrade header).
func isWebSocket(req *nethttp.Request) bool {
	if req.ProtoMajor != 1 || !strings.EqualFold(req.Header.Get("Upgrade"), "websocket") {
		return false
	}
	for _, v := range req.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return true
			}
		}
	}
	return false
}

// upgraded tells the agent its WebSocket is open and relays it both ways
// until either side ends: from then on the connection is the WebSocket's.
// What the agent sent past the request, still in br, goes first.
func (c *conn) upgraded(resp *nethttp.Response, br *bufio.Reader) error {
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return errors.New("upstream switched protocols without a connection to relay")
	}
	defer up.Close()
	head := *resp
	head.Body = nethttp.NoBody
	head.Header = resp.Header.Clone()
	head.Header.Set("Connection", "Upgrade")
	head.Header.Set("Upgrade", "websocket")
	head.Proto, head.ProtoMajor, head.ProtoMinor = "HTTP/1.1", 1, 1
	if err := head.Write(c.agent); err != nil {
		return nil
	}
	done := make(chan struct{}, 2)
	go func() {
		defer func() { up.Close(); done <- struct{}{} }()
		defer c.contain("websocket up")
		c.wsCopy(up, br, MsgWebSocketUp)
	}()
	go func() {
		defer func() { c.agent.Close(); done <- struct{}{} }()
		defer c.contain("websocket down")
		c.wsCopy(c.agent, up, MsgWebSocketDown)
	}()
	<-done
	<-done
	return c.ended()
}

// wsCopy copies one direction of a WebSocket, recording its first
// MaxRecordedBody bytes in the chunks they crossed in.
func (c *conn) wsCopy(dst io.Writer, src io.Reader, typ byte) {
	buf := make([]byte, 32<<10)
	recorded := 0
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if keep := min(n, c.maxRecorded-recorded); keep > 0 {
				recorded += keep
				m := protocol.Message{FromClient: typ == MsgWebSocketUp, Type: typ, Time: time.Now(), Body: buf[:keep]}
				if m.FromClient {
					c.mu.Lock()
					c.s.Recorder.Record(m)
					c.mu.Unlock()
				} else {
					c.s.Recorder.Record(m)
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
