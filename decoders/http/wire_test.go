package http

import (
	"bufio"
	"bytes"
	"io"
	nethttp "net/http"
	"testing"
)

// TestWire: a recorded HTTP/2 exchange, a request interlockd denied and a
// POST whose body came before the answer read back as HTTP/1.1 that
// net/http parses, each body framed by its recorded length.
func TestWire(t *testing.T) {
	var w Wire
	var client, server []byte
	for _, m := range []struct {
		fromClient bool
		typ        byte
		body       string
	}{
		{true, MsgRequest, "GET /admin HTTP/2.0\r\nHost: api.test\r\nAccept: */*\r\n"},
		{false, MsgInterlock, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\r\n{\"rule\":\"no-admin\"}"},
		{true, MsgRequest, "POST /issues HTTP/2.0\r\nHost: api.test\r\nContent-Length: 11\r\n"},
		{true, MsgRequestBody, `{"title":1}`},
		{false, MsgResponse, "HTTP/2.0 200 OK\r\nTransfer-Encoding: chunked\r\n"},
		{false, MsgResponseBody, "created"},
		{true, MsgRequest, "GET /last HTTP/2.0\r\nHost: api.test\r\n"},
	} {
		c, s := w.Message(m.fromClient, m.typ, []byte(m.body))
		client, server = append(client, c...), append(server, s...)
	}
	c, s := w.Finish()
	client, server = append(client, c...), append(server, s...)

	cr, sr := bufio.NewReader(bytes.NewReader(client)), bufio.NewReader(bytes.NewReader(server))
	for _, want := range []struct{ method, uri, body string }{{"GET", "/admin", ""}, {"POST", "/issues", `{"title":1}`}, {"GET", "/last", ""}} {
		req, err := nethttp.ReadRequest(cr)
		if err != nil {
			t.Fatalf("request %s: %v\n%s", want.uri, err, client)
		}
		body, _ := io.ReadAll(req.Body)
		if req.Method != want.method || req.RequestURI != want.uri || req.Proto != "HTTP/1.1" || req.Host != "api.test" || string(body) != want.body {
			t.Errorf("request %s %s %s %s %q", req.Method, req.RequestURI, req.Proto, req.Host, body)
		}
	}
	for _, want := range []struct {
		code int
		body string
	}{{403, `{"rule":"no-admin"}`}, {200, "created"}} {
		resp, err := nethttp.ReadResponse(sr, nil)
		if err != nil {
			t.Fatalf("response %d: %v\n%s", want.code, err, server)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want.code || string(body) != want.body || len(resp.TransferEncoding) != 0 {
			t.Errorf("response %d %v %q", resp.StatusCode, resp.TransferEncoding, body)
		}
	}
	if cr.Buffered() != 0 || sr.Buffered() != 0 {
		t.Errorf("bytes left over: client %d, server %d", cr.Buffered(), sr.Buffered())
	}
}
