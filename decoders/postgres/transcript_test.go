package postgres

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestTranscript describes a short session: each message's lines, a
// result's row count on its command tag, rows beyond the first five cut,
// plumbing left out and a broken body reported.
func TestTranscript(t *testing.T) {
	type msg struct {
		fromClient bool
		m          pgproto3.Message
	}
	script := []msg{
		{true, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u", "database": "d"}}},
		{false, &pgproto3.AuthenticationOk{}},
		{false, &pgproto3.ParameterStatus{Name: "server_version", Value: "17.2"}},
		{false, &pgproto3.ReadyForQuery{TxStatus: 'I'}},
		{true, &pgproto3.Query{String: "SELECT n\nFROM t"}},
		{false, &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("n")}, {Name: []byte("b")}}}},
	}
	for range 7 {
		script = append(script, msg{false, &pgproto3.DataRow{Values: [][]byte{[]byte("1"), nil}}})
	}
	script = append(script,
		msg{false, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 7")}},
		msg{true, &pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("x"), {0xff}}, ParameterFormatCodes: []int16{0, 1}}},
		msg{true, &pgproto3.Sync{}},
		msg{false, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42501", Message: "denied"}},
	)
	var tr Transcript
	var got []string
	for _, s := range script {
		b, err := s.m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		typ, body := b[0], b[5:]
		if _, ok := s.m.(*pgproto3.StartupMessage); ok {
			typ, body = 0, b[4:]
		}
		got = append(got, tr.Describe(s.fromClient, typ, body)...)
	}
	got = append(got, tr.Describe(false, 'C', []byte("no terminator"))...)
	want := []string{
		"startup protocol 3.0 database=d user=u",
		"authentication ok",
		"server version 17.2",
		"query: SELECT n FROM t",
		"columns: n, b",
		"row: 1 | NULL", "row: 1 | NULL", "row: 1 | NULL", "row: 1 | NULL", "row: 1 | NULL",
		"... 2 more rows",
		"SELECT 7, 7 rows",
		"bind s ($1=x, $2=\\xff)",
		"ERROR 42501: denied",
		"malformed 'C' message (13 bytes): CommandComplete body is invalid unterminated string",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("transcript:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if fin := tr.Finish(); fin != nil {
		t.Errorf("finished with %q after a complete result", fin)
	}
}
