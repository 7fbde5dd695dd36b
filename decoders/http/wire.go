package http

import (
	"bufio"
	"bytes"
	"fmt"
	nethttp "net/http"
	"strconv"
)

// DissectorPort is the port Wireshark's HTTP dissector decodes without
// options.
const DissectorPort = 80

// Wire re-frames the messages of one recorded HTTP session as HTTP/1.1 on
// the wire, for a packet capture (`interlock export --pcap`): each head,
// HTTP/1 or HTTP/2 as recorded, becomes an HTTP/1.1 head whose
// Content-Length is that of the body the recording kept (bodies are kept
// up to a cap, so a long one is cut short), interlockd's own answers are
// the server's, and WebSocket messages follow their upgrade as recorded.
// HTTP/2 streams are written one exchange after the other in the order
// their heads were recorded; a body recorded after the other side has
// spoken again (a streaming upload) is left out. A Wire holds one
// session's state: it is not safe for concurrent use.
type Wire struct {
	// head is each side's head waiting for its body: [0] the server's,
	// [1] the client's.
	head [2][]byte
}

// Message returns what the client and the server send once the recorded
// message typ with body is known.
func (w *Wire) Message(fromClient bool, typ byte, body []byte) (client, server []byte) {
	var out [2][]byte
	side, other := 0, 1
	if fromClient {
		side, other = 1, 0
	}
	// Whatever this side says next, the other side's message is complete.
	out[other] = w.flush(other)
	switch typ {
	case MsgRequest, MsgResponse:
		out[side] = w.flush(side)
		w.head[side] = bytes.Clone(body)
	case MsgRequestBody, MsgResponseBody:
		if w.head[side] != nil {
			out[side] = appendHTTP1(nil, w.head[side], body)
			w.head[side] = nil
		}
	case MsgInterlock:
		out[side] = w.flush(side)
		head, rest, _ := bytes.Cut(body, []byte("\r\n\r\n"))
		out[side] = appendHTTP1(out[side], append(head, "\r\n"...), rest)
	case MsgWebSocketUp, MsgWebSocketDown:
		out[side] = append(w.flush(side), body...)
	}
	return out[1], out[0]
}

// Finish returns the heads still waiting for a body, which had none.
func (w *Wire) Finish() (client, server []byte) {
	return w.flush(1), w.flush(0)
}

func (w *Wire) flush(side int) []byte {
	if w.head[side] == nil {
		return nil
	}
	b := appendHTTP1(nil, w.head[side], nil)
	w.head[side] = nil
	return b
}

// appendHTTP1 appends the recorded head and body as one HTTP/1.1 message,
// framed by Content-Length. A head that does not parse is written as
// recorded.
func appendHTTP1(dst, head, body []byte) []byte {
	rd := bufio.NewReader(bytes.NewReader(append(bytes.Clone(head), "\r\n"...)))
	var h nethttp.Header
	if bytes.HasPrefix(head, []byte("HTTP/")) {
		resp, err := nethttp.ReadResponse(rd, nil)
		if err != nil {
			return append(append(dst, head...), body...)
		}
		dst = fmt.Appendf(dst, "HTTP/1.1 %s\r\n", resp.Status)
		h = resp.Header
		// An upgrade's body is the upgraded protocol, and these have none.
		if resp.StatusCode < 200 || resp.StatusCode == nethttp.StatusNoContent || resp.StatusCode == nethttp.StatusNotModified {
			return append(writeHeader(dst, h, -1), body...)
		}
	} else {
		req, err := nethttp.ReadRequest(rd)
		if err != nil {
			return append(append(dst, head...), body...)
		}
		dst = fmt.Appendf(dst, "%s %s HTTP/1.1\r\nHost: %s\r\n", req.Method, req.RequestURI, req.Host)
		h = req.Header
		if len(body) == 0 {
			return writeHeader(dst, h, -1)
		}
	}
	return append(writeHeader(dst, h, len(body)), body...)
}

// writeHeader appends h without its framing headers, then Content-Length
// n unless n < 0, and the blank line.
func writeHeader(dst []byte, h nethttp.Header, n int) []byte {
	h = h.Clone()
	for _, k := range []string{"Content-Length", "Transfer-Encoding", "Trailer"} {
		h.Del(k)
	}
	if n >= 0 {
		h.Set("Content-Length", strconv.Itoa(n))
	}
	var b bytes.Buffer
	h.Write(&b)
	return append(append(dst, b.Bytes()...), "\r\n"...)
}
