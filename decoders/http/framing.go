package http

import (
	"bufio"
	"bytes"
	"errors"
)

var crlf = []byte("\r\n")

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
// a line end and keeps white space before a header's colon in its name.
// An upstream or another hop that frames such a request otherwise would
// see a different request than the one decided.
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
	// Every line ends with CRLF now and none is folded: the header lines
	// are counted by name, case-insensitively, as they are, instead of
	// parsing the head twice (net/http parses it next, and refuses what
	// its parser cannot read, so only heads it accepts matter here).
	line, rest, _ := bytes.Cut(head, crlf)
	if len(line) == 0 {
		return "no request line"
	}
	var contentLength, transferEncoding int
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, crlf)
		if len(line) == 0 {
			break // the empty line that ends the head
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		switch {
		case !ok:
			return "a header line without a colon"
		case bytes.ContainsAny(name, " \t"):
			return "white space in a header name"
		case bytes.EqualFold(name, []byte("Content-Length")):
			contentLength++
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			transferEncoding++
		}
	}
	switch {
	case contentLength > 1:
		return "repeated Content-Length"
	case contentLength > 0 && transferEncoding > 0:
		return "Content-Length with Transfer-Encoding"
	case transferEncoding > 1:
		return "repeated Transfer-Encoding"
	}
	return ""
}
