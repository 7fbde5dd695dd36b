package postgres

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// AppendWire gives back the bytes pgproto3 encodes for a message from what a
// recording keeps of it: direction, type byte and body.
func TestAppendWire(t *testing.T) {
	for _, tc := range []struct {
		fromClient bool
		m          pgproto3.Message
	}{
		{true, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u"}}},
		{true, &pgproto3.SSLRequest{}},
		{true, &pgproto3.Query{String: "SELECT 1"}},
		{false, &pgproto3.DataRow{Values: [][]byte{[]byte("x"), nil}}},
		{false, &pgproto3.ReadyForQuery{TxStatus: 'I'}},
	} {
		want, err := tc.m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		typ, body := want[0], want[5:]
		switch tc.m.(type) {
		case *pgproto3.StartupMessage, *pgproto3.SSLRequest:
			typ, body = 0, want[4:]
		}
		if got := AppendWire([]byte("prefix"), tc.fromClient, typ, body); !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("%T: got %q, want %q", tc.m, got, want)
		}
	}
	if got := AppendWire(nil, false, 0, []byte("S")); string(got) != "S" {
		t.Errorf("SSL answer: got %q", got)
	}
}
