package http

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	nethttp "net/http"
	"net/textproto"
	"strings"
	"testing"
)

// clientHello returns a real ClientHello for serverName, as crypto/tls's
// client writes it.
func clientHello(t testing.TB, serverName string) []byte {
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: serverName, NextProtos: []string{"h2", "http/1.1"}}).Handshake()
		a.Close()
	}()
	// The client sends nothing more until it has an answer.
	hello, br, err := peekHello(bufio.NewReader(b))
	var raw []byte
	if err == nil {
		raw, err = br.Peek(br.Buffered())
	}
	b.Close()
	if err != nil || hello.ServerName != serverName {
		t.Fatalf("peek: %+v %v", hello, err)
	}
	return bytes.Clone(raw)
}

// TestPeekHello: the hello is parsed and left unread, with what follows
// it, in a reader of the head buffer's size, and in a larger one when it
// does not fit (a reader of 16 bytes here). The reader handed back holds
// every byte, in order.
func TestPeekHello(t *testing.T) {
	raw := clientHello(t, "api.example.com")
	for _, size := range []int{headBuffer, 16} {
		in := append(bytes.Clone(raw), "GET / HTTP/1.1\r\n"...)
		h, br, err := peekHello(bufio.NewReaderSize(bytes.NewReader(in), size))
		if err != nil || h.ServerName != "api.example.com" || len(h.ALPN) != 2 {
			t.Fatalf("buffer %d: peekHello: %+v, %v", size, h, err)
		}
		rest, err := io.ReadAll(br)
		if err != nil || !bytes.Equal(rest, in) {
			t.Fatalf("buffer %d: the reader holds %d bytes, want the %d sent (%v)", size, len(rest), len(in), err)
		}
	}
}

// TestPeekHelloBounded: a hello whose records add up to more than a
// handshake message can take is refused once its bytes pass that, not read
// on.
func TestPeekHelloBounded(t *testing.T) {
	// A ClientHello message of 64 KiB, crypto/tls's most, in one-byte
	// records: crypto/tls reads on, six bytes a byte of the message.
	var in []byte
	msg := append([]byte{1, 0x01, 0x00, 0x00}, make([]byte, 1<<16)...)
	for _, b := range msg {
		in = append(in, 0x16, 0x03, 0x01, 0x00, 0x01, b)
	}
	_, _, err := peekHello(bufio.NewReaderSize(bytes.NewReader(in), headBuffer))
	if err == nil || !strings.Contains(err.Error(), "ClientHello over") {
		t.Fatalf("a hello over the bound: %v", err)
	}
}

// FuzzPeekHello: any bytes either fail or give a hello read from a prefix
// of the input, left unread, never a panic. The seed corpus (testdata)
// holds a ClientHello crypto/tls wrote, with server name and ALPN.
func FuzzPeekHello(f *testing.F) {
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		_, br, err := peekHello(bufio.NewReaderSize(bytes.NewReader(data), headBuffer))
		if err != nil {
			return
		}
		rest, rerr := io.ReadAll(br)
		if rerr != nil || !bytes.Equal(rest, data) {
			t.Fatalf("the reader holds %d bytes of %d after the hello (%v)", len(rest), len(data), rerr)
		}
	})
}

// FuzzNextRequest: a request nextRequest lets through has one unambiguous
// framing: at most one Content-Length, never with Transfer-Encoding, no
// folded lines.
func FuzzNextRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"GET / HTTP/1.1\r\nHost: a\r\nX: one\r\n two\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		req, _, err := nextRequest(bufio.NewReaderSize(bytes.NewReader(data), 4096))
		if err != nil {
			return
		}
		head := data[:headEnd(data)]
		if bytes.Contains(head, []byte("\n ")) || bytes.Contains(head, []byte("\n\t")) {
			t.Fatalf("folded head let through: %q", head)
		}
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(head)))
		tp.ReadLine()
		h, _ := tp.ReadMIMEHeader()
		if len(h["Content-Length"]) > 1 || (len(h["Content-Length"]) > 0 && len(h["Transfer-Encoding"]) > 0) {
			t.Fatalf("ambiguous framing let through: %q", head)
		}
		req.Body.Close()
	})
}

// FuzzRecordedRequest: a request the decoder would record reads back from
// its recorded head as what the policy decided it on (method, decoded path
// with query, host as the decoder names it), and any other head (a
// recording is read back from disk) reads back or fails.
func FuzzRecordedRequest(f *testing.F) {
	f.Add([]byte("GET /a?b=1 HTTP/1.1\r\nHost: API.test:443\r\nAuthorization: Bearer x\r\nX-Amz-Target: S.Op\r\n\r\n"))
	f.Add([]byte("POST http://[::1]:8080/x HTTP/1.1\r\nHost: other\r\nContent-Length: 3\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		RecordedRequest(data)
		req, err := nethttp.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil || !strings.HasPrefix(req.URL.Path, "/") {
			return // refused before it is recorded
		}
		var b bytes.Buffer
		requestHead(&b, req)
		r, err := RecordedRequest(b.Bytes())
		if err != nil || r.Method != req.Method || r.URI != DecidedTarget(req.URL) || r.Host != hostOf(req.Host) {
			t.Fatalf("%s %s (host %q) recorded as %q reads back as %+v, %v", req.Method, DecidedTarget(req.URL), req.Host, b.Bytes(), r, err)
		}
	})
}

// FuzzMaskJSON: any document either fails or comes out as valid JSON.
func FuzzMaskJSON(f *testing.F) {
	f.Add([]byte(maskableDoc))
	f.Add([]byte(`[{"email":1},{"x":{"email":null}}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := maskJSON(emailMasker{}, data)
		if err == nil && !json.Valid(out) {
			t.Fatalf("masked %q into invalid JSON %q", data, out)
		}
	})
}
