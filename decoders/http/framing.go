package http

import (
	"bufio"
	"bytes"
	"errors"
	"net/textproto"
	"strings"
)

// errHeadTooLarge is a request head longer than the decoder's cap.
var errHeadTooLarge = errors.New("request head too large")

// peekHead returns the next request head (through its empty line) without
// consuming it. A head that does not fit br's buffer is errHeadTooLarge.
func peekHead(br *bufio.Reader) ([]byte, error) {
	for {
		b, _ := br.Peek(br.Buffered())
		if end := headEnd(b); end > 0 {
			return b[:end], nil
		}
		if len(b) >= br.Size() {
			return nil, errHeadTooLarge
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return nil, err
		}
	}
}

// headEnd returns the length of the head at the start of b, through the
// first empty line (ended by CRLF or a bare LF, which ambiguous then
// refuses), or 0 when b holds no empty line yet.
func headEnd(b []byte) int {
	for i := 0; i < len(b); i++ {
		if b[i] != '\n' || i == 0 {
			continue
		}
		switch {
		case b[i-1] == '\n':
			return i + 1
		case b[i-1] == '\r' && i >= 2 && b[i-2] == '\n':
			return i + 1
		}
	}
	return 0
}

// ambiguous says why a request head could be framed two ways by two
// parsers, or "" when it cannot. It checks only what net/http accepts and
// normalises away before a handler sees the request: it drops a
// Content-Length sent with Transfer-Encoding, merges identical repeated
// Content-Length lines, unfolds obsolete line folding, takes a bare LF for
// a line end and keeps white space before a header's colon in its name. An upstream or another hop that frames such a request
// otherwise would see a different request than the one decided.
func ambiguous(head []byte) string {
	for i, c := range head {
		if c != '\n' {
			continue
		}
		if i == 0 || head[i-1] != '\r' {
			return "a line ends with a bare LF"
		}
		if i+1 < len(head) && (head[i+1] == ' ' || head[i+1] == '\t') {
			return "obsolete line folding"
		}
	}
	// A reader the head's size: bufio's default of 4 KiB per request was
	// most of what a request allocated.
	tp := textproto.NewReader(bufio.NewReaderSize(bytes.NewReader(head), len(head)))
	if _, err := tp.ReadLine(); err != nil {
		return "no request line"
	}
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return "malformed header: " + err.Error()
	}
	for k := range h {
		if strings.ContainsAny(k, " \t") {
			return "white space in a header name"
		}
	}
	switch {
	case len(h["Content-Length"]) > 1:
		return "repeated Content-Length"
	case len(h["Content-Length"]) > 0 && len(h["Transfer-Encoding"]) > 0:
		return "Content-Length with Transfer-Encoding"
	case len(h["Transfer-Encoding"]) > 1:
		return "repeated Transfer-Encoding"
	}
	return ""
}
