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
