package http

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"strings"

	"golang.org/x/net/http2"
)

// ErrTLS ends DecodeRequests on a connection that begins with a TLS
// handshake: its requests are encrypted.
var ErrTLS = errors.New("the connection is TLS: its requests are encrypted")

// ErrHTTP2 ends DecodeRequests on cleartext HTTP/2 (prior knowledge).
var ErrHTTP2 = errors.New("cleartext HTTP/2 is not decoded")

// Request is one request read back from the bytes a client sent.
type Request struct {
	Method string
	// URI is the request target as the policy decides it (DecidedTarget):
	// the decoded path and the query.
	URI string
	// Host is the Host header without its port.
	Host   string
	Header nethttp.Header
	// Offset is where the request starts in the client's bytes, to find
	// when it was sent.
	Offset int
	// Refused says why interlockd would answer it 400 before any rule
	// decided it (NonCanonical), "" when a rule decides it.
	Refused string
}

// RecordedRequest reads back a request head the decoder recorded
// (MsgRequest, written by requestHead in HTTP/1.1 form whichever version
// carried it): the method, target, host and headers the policy decided the
// request on. Its URI is the decoded path and the query, as the decoder
// gives the policy. Credentials' values read as the recording redacted
// them; their headers are there.
func RecordedRequest(head []byte) (Request, error) {
	// The recorded head ends with its last header line: the empty line
	// that ends it on the wire is not kept.
	rd := bufio.NewReader(io.MultiReader(bytes.NewReader(head), strings.NewReader("\r\n")))
	req, err := nethttp.ReadRequest(rd)
	if err != nil {
		return Request{}, fmt.Errorf("recorded request head: %w", err)
	}
	return Request{Method: req.Method, URI: DecidedTarget(req.URL), Host: hostOf(req.Host), Header: req.Header}, nil
}

// DecodeRequests returns the HTTP/1.x requests in the bytes a client sent
// on one connection (a capture's stream), in order, with net/http's own
// reader; bodies are skipped by their framing. A request that does not
// parse ends the list with an error, as does a connection that is TLS or
// cleartext HTTP/2. A connection upgraded (WebSocket) ends after its
// upgrade request.
func DecodeRequests(client []byte) ([]Request, error) {
	if len(client) > 0 && client[0] == 0x16 {
		return nil, ErrTLS
	}
	if bytes.HasPrefix(client, []byte(http2.ClientPreface)) {
		return nil, ErrHTTP2
	}
	src := bytes.NewReader(client)
	rd := bufio.NewReader(src)
	var out []Request
	for {
		offset := len(client) - src.Len() - rd.Buffered()
		if _, err := rd.Peek(1); err == io.EOF {
			return out, nil
		}
		req, err := nethttp.ReadRequest(rd)
		if err != nil {
			return out, fmt.Errorf("request at byte %d: %w", offset, err)
		}
		out = append(out, Request{Method: req.Method, URI: DecidedTarget(req.URL), Host: hostOf(req.Host), Header: req.Header, Offset: offset,
			Refused: NonCanonical(req.URL.Path)})
		if isWebSocket(req) {
			return out, nil
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return out, fmt.Errorf("body of the request at byte %d: %w", offset, err)
		}
	}
}
