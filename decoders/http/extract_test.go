package http

import (
	"errors"
	"testing"
)

// TestDecodeRequests: requests of one connection read back with their
// offsets, bodies (by length and chunked) skipped; TLS and cleartext
// HTTP/2 are named, and garbage ends the list with an error.
func TestDecodeRequests(t *testing.T) {
	first := "POST /a?x=1 HTTP/1.1\r\nHost: api.test:8080\r\nContent-Length: 5\r\n\r\nhello"
	second := "PUT /b HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
	third := "GET /c HTTP/1.1\r\nHost: api.test\r\nX-Token: t\r\n\r\n"
	reqs, err := DecodeRequests([]byte(first + second + third))
	if err != nil || len(reqs) != 3 {
		t.Fatalf("%d requests, %v", len(reqs), err)
	}
	for i, want := range []Request{
		{Method: "POST", URI: "/a?x=1", Host: "api.test", Offset: 0},
		{Method: "PUT", URI: "/b", Host: "api.test", Offset: len(first)},
		{Method: "GET", URI: "/c", Host: "api.test", Offset: len(first + second)},
	} {
		if r := reqs[i]; r.Method != want.Method || r.URI != want.URI || r.Host != want.Host || r.Offset != want.Offset {
			t.Errorf("request %d: %+v, want %+v", i, r, want)
		}
	}
	if reqs[2].Header.Get("X-Token") != "t" {
		t.Errorf("headers: %v", reqs[2].Header)
	}
	if _, err := DecodeRequests([]byte{0x16, 3, 1, 0, 5}); !errors.Is(err, ErrTLS) {
		t.Errorf("TLS: %v", err)
	}
	if _, err := DecodeRequests([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); !errors.Is(err, ErrHTTP2) {
		t.Errorf("h2c: %v", err)
	}
	if reqs, err := DecodeRequests([]byte(third + "\x00garbage\r\n\r\n")); err == nil || len(reqs) != 1 {
		t.Errorf("garbage after a request: %d requests, %v", len(reqs), err)
	}
}

// FuzzDecodeRequests: any client bytes give requests at increasing
// offsets inside the input, or an error, never a panic; the wire a
// recording re-frames is read back by the same reader.
func FuzzDecodeRequests(f *testing.F) {
	f.Add([]byte("GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz"))
	f.Add([]byte("PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nq\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		reqs, _ := DecodeRequests(b)
		last := -1
		for _, r := range reqs {
			if r.Offset <= last || r.Offset >= len(b) {
				t.Fatalf("offset %d after %d in %d bytes", r.Offset, last, len(b))
			}
			last = r.Offset
		}
		var w Wire
		c, _ := w.Message(true, MsgRequest, b)
		c2, _ := w.Finish()
		DecodeRequests(append(c, c2...))
	})
}
