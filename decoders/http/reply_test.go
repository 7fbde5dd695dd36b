package http

import (
	"bufio"
	"bytes"
	"io"
	nethttp "net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// writes records each write that reaches the connection.
type writes struct {
	mu  sync.Mutex
	got []string
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.got = append(w.got, string(p))
	return len(p), nil
}

func (w *writes) all() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.got, "")
}

// TestWriteResponseOneWrite: a small answer of known length reaches the
// agent in one write (one TLS record), not a write per header line.
func TestWriteResponseOneWrite(t *testing.T) {
	var w writes
	resp := errorResponseBody(nethttp.StatusOK, []byte("hello from nginx\n"))
	resp.Header.Set("Server", "nginx")
	resp.Header.Set("Date", "Tue, 01 Dec 2026 10:00:00 GMT")
	if err := writeResponse(bufio.NewWriterSize(&w, replyBuffer), resp); err != nil {
		t.Fatal(err)
	}
	if len(w.got) != 1 {
		t.Fatalf("%d writes, want 1: %q", len(w.got), w.got)
	}
	if !strings.HasSuffix(w.got[0], "\r\n\r\nhello from nginx\n") {
		t.Fatalf("wrote %q", w.got[0])
	}
}

// TestWriteResponsePieces: a body of known length that arrives in pieces
// reaches the agent whole and in order.
func TestWriteResponsePieces(t *testing.T) {
	var w writes
	body := strings.Repeat("<Contents>0123456789</Contents>\n", 40)
	resp := errorResponseBody(nethttp.StatusOK, nil)
	resp.ContentLength, resp.Body = int64(len(body)), io.NopCloser(iotest.HalfReader(strings.NewReader(body)))
	if err := writeResponse(bufio.NewWriterSize(&w, replyBuffer), resp); err != nil {
		t.Fatal(err)
	}
	got, err := nethttp.ReadResponse(bufio.NewReader(strings.NewReader(w.all())), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(got.Body)
	if string(b) != body {
		t.Fatalf("body %q, want %q", b, body)
	}
}

// TestWriteResponseStreams: a streamed body of unknown length is not held
// back by the buffer: its head goes out before the first byte of the body
// exists, and each piece before the next is waited for.
func TestWriteResponseStreams(t *testing.T) {
	var w writes
	pr, pw := io.Pipe()
	resp := errorResponseBody(nethttp.StatusOK, nil)
	resp.Header.Set("Content-Type", "text/event-stream")
	resp.ContentLength, resp.TransferEncoding, resp.Body = -1, []string{"chunked"}, pr
	done := make(chan error, 1)
	go func() { done <- writeResponse(bufio.NewWriterSize(&w, replyBuffer), resp) }()
	waitFor := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(w.all(), want); {
			if time.Now().After(deadline) {
				t.Fatalf("%q not written; so far %q", want, w.all())
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("text/event-stream\r\n")
	for _, ev := range []string{"data: one\n\n", "data: two\n\n"} {
		pw.Write([]byte(ev))
		waitFor(ev)
	}
	pw.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, err := nethttp.ReadResponse(bufio.NewReader(bytes.NewReader([]byte(w.all()))), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(got.Body)
	if string(body) != "data: one\n\ndata: two\n\n" {
		t.Fatalf("body %q", body)
	}
}

// TestRemoveHopHeaders: the hop-by-hop headers, and those the Connection
// header names, never go on; the others do.
func TestRemoveHopHeaders(t *testing.T) {
	h := nethttp.Header{}
	for _, k := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "X-Named", "Host", "Accept", "Authorization"} {
		h.Set(k, "v")
	}
	h.Set("Connection", "x-named , keep-alive")
	removeHopHeaders(h)
	var left []string
	for k := range h {
		left = append(left, k)
	}
	slices.Sort(left)
	if got := strings.Join(left, " "); got != "Accept Authorization Host" {
		t.Fatalf("headers passed on: %s, want Accept Authorization Host", got)
	}
}
