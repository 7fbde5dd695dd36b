package http

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/textproto"
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
	hello, raw, err := peekHello(b)
	b.Close()
	if err != nil || hello.ServerName != serverName {
		t.Fatalf("peek: %+v %v", hello, err)
	}
	return raw
}

func TestPeekHello(t *testing.T) {
	raw := clientHello(t, "api.example.com")
	in := append(raw, "GET / HTTP/1.1\r\n"...)
	h, read, err := peekHello(bytes.NewReader(in))
	// crypto/tls may read past the hello; all it read is handed on.
	if err != nil || h.ServerName != "api.example.com" || len(h.ALPN) != 2 || !bytes.HasPrefix(in, read) || len(read) < len(raw) {
		t.Fatalf("peekHello: %+v, read %d of %d bytes, %v", h, len(read), len(raw), err)
	}
}

// FuzzPeekHello: any bytes either fail or give a hello whose bytes are a
// prefix of the input, never a panic. The seed corpus (testdata) holds a
// ClientHello crypto/tls wrote, with server name and ALPN.
func FuzzPeekHello(f *testing.F) {
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		_, read, err := peekHello(bytes.NewReader(data))
		if err == nil && !bytes.HasPrefix(data, read) {
			t.Fatalf("read %q is not a prefix of the input", read)
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
