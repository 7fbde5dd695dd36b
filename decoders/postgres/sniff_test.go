package postgres

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestSniff(t *testing.T) {
	enc := func(m pgproto3.FrontendMessage) []byte {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	startup := enc(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "u"}})
	query := enc(&pgproto3.Query{String: "SELECT 1"})
	for _, tc := range []struct {
		name           string
		b              []byte
		startup, query bool
	}{
		{"startup", startup, true, false},
		{"startup header only", startup[:8], true, false},
		{"ssl request", enc(&pgproto3.SSLRequest{}), true, false},
		{"gss request", enc(&pgproto3.GSSEncRequest{}), true, false},
		{"protocol 2", []byte{0, 0, 0, 9, 0, 2, 0, 0, 0}, false, false},
		{"query", query, false, true},
		{"query and more", append(query, 'X', 0, 0, 0, 4), false, true},
		{"query cut short", query[:len(query)-1], false, false},
		{"query without its NUL", []byte{'Q', 0, 0, 0, 6, 'x', 'y'}, false, false},
		{"http", []byte("GET / HTTP/1.1\r\n"), false, false},
		{"tls", []byte{0x16, 3, 1, 0, 0xc8, 1, 0, 0, 0xc4}, false, false},
		{"empty", nil, false, false},
	} {
		if got := LooksLikeStartup(tc.b); got != tc.startup {
			t.Errorf("%s: LooksLikeStartup = %v", tc.name, got)
		}
		if got := LooksLikeQuery(tc.b); got != tc.query {
			t.Errorf("%s: LooksLikeQuery = %v", tc.name, got)
		}
	}
}
