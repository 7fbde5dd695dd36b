package http

import (
	"bufio"
	"bytes"
	"errors"
	nethttp "net/http"
	"strings"
	"testing"
)

// TestDecodeRequests: requests of one connection read back with their
// offsets, bodies (by length and chunked) skipped; TLS and cleartext
// HTTP/2 are named, and garbage ends the list with an error.
func TestDecodeRequests(t *testing.T) {
	first := "POST /a?x=1 HTTP/1.1\r\nHost: api.test:8080\r\nContent-Length: 5\r\n\r\nhello"
	second := "PUT /b HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
	third := "GET /%63 HTTP/1.1\r\nHost: api.test\r\nX-Token: t\r\n\r\n" // decided as /c
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

// TestRecordedRequest: a head as the decoder records it, from HTTP/2 and
// HTTP/1.1, reads back as the request the policy decided: method, decoded
// path with its query, host without its port, and every header,
// credentials present though their values are redacted. A path whose
// escapes decode to a line break or a space is recorded escaped: the
// agent writes no line of its own into its recording.
func TestRecordedRequest(t *testing.T) {
	for _, c := range []struct {
		major, minor int
		host         string
		target       string // as sent
		uri          string // as decided
	}{
		{2, 0, "API.test", "/v1/items/7?dry=1", "/v1/items/7?dry=1"},
		{1, 1, "api.test:8443", "/v1/items/7?dry=1", "/v1/items/7?dry=1"},
		{1, 1, "api.test", "/a%0d%0aX-Forged:%201?q=1", "/a\r\nX-Forged: 1?q=1"},
		{1, 1, "api.test", "/my%20doc", "/my doc"},
	} {
		req, err := nethttp.ReadRequest(bufio.NewReader(strings.NewReader("PATCH " + c.target + " HTTP/1.1\r\nHost: " + c.host +
			"\r\nAuthorization: Bearer s3cret\r\nX-Amz-Target: DynamoDB_20120810.Scan\r\nContent-Length: 2\r\n\r\n")))
		if err != nil {
			t.Fatal(err)
		}
		req.ProtoMajor, req.ProtoMinor = c.major, c.minor
		var b bytes.Buffer
		requestHead(&b, req)
		if lines := strings.Split(b.String(), "\r\n"); len(lines) != 6 || strings.Contains(b.String(), "\r\nX-Forged") {
			t.Errorf("%s: recorded head %q", c.target, b.String())
		}
		got, err := RecordedRequest(b.Bytes())
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.target, err, b.Bytes())
		}
		if got.Method != "PATCH" || got.URI != c.uri || got.URI != DecidedTarget(req.URL) || got.Host != "api.test" {
			t.Errorf("%s: %+v", c.target, got)
		}
		if got.Header.Get("X-Amz-Target") != "DynamoDB_20120810.Scan" || got.Header.Get("Authorization") != "[redacted, 13 bytes]" {
			t.Errorf("%s headers: %v", c.target, got.Header)
		}
	}
	if _, err := RecordedRequest([]byte("not a head")); err == nil {
		t.Error("garbage read back as a request")
	}
}
