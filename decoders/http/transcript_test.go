package http

import (
	"strings"
	"testing"
)

func TestTranscript(t *testing.T) {
	var d Transcript
	cases := []struct {
		typ  byte
		body string
		want string
	}{
		{MsgRequest, "GET /x?y=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n", "GET /x?y=1 HTTP/1.1|  Host: a|  Accept: */*"},
		{MsgResponse, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", "HTTP/1.1 200 OK|  Content-Type: text/plain"},
		{MsgInterlock, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n\r\n{\"rule\":\"r\"}",
			`interlock: HTTP/1.1 403 Forbidden|  Content-Type: application/json|  {\"rule\":\"r\"}`},
		{MsgResponseBody, "hello\n", `body (first 6 bytes): hello\n`},
		{MsgPassthrough, "TLS passthrough to a, ALPN h2: not decrypted", "TLS passthrough to a, ALPN h2: not decrypted"},
	}
	for _, c := range cases {
		if got := strings.Join(d.Describe(false, c.typ, []byte(c.body)), "|"); got != c.want {
			t.Errorf("%c:\n got %s\nwant %s", c.typ, got, c.want)
		}
	}
}
