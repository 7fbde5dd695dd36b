package postgres

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

func TestStartupSettings(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		want   []string // nil with ok false: refused
		ok     bool
	}{
		{map[string]string{"user": "a", "database": "b", "application_name": "psql", "client_encoding": "UTF8", "DateStyle": "ISO"},
			[]string{"DateStyle", "application_name", "client_encoding"}, true},
		{map[string]string{"options": "-c statement_timeout=5s --lock-timeout=1s -csearch_path=evil"},
			[]string{"statement_timeout", "lock_timeout", "search_path"}, true},
		{map[string]string{"_pq_.command_batching": "on", "search_path": "x"}, []string{"search_path"}, true},
		{map[string]string{"options": "-B 100"}, nil, false},
		{map[string]string{"options": "-c role"}, nil, false},
		{map[string]string{"replication": "database"}, nil, false},
	} {
		got, err := startupSettings(tc.params)
		if (err == nil) != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("%v: %q, %v; want %q ok=%v", tc.params, got, err, tc.want, tc.ok)
		}
	}
}

type messages []protocol.Message

func (m *messages) Start(context.Context) error { return nil }
func (m *messages) Ready() error                { return nil }
func (m *messages) Record(msg protocol.Message) {
	msg.Body = bytes.Clone(msg.Body)
	*m = append(*m, msg)
}

// Relayed is never called: PostgreSQL sessions record every message.
func (m *messages) Relayed(int64, int64) {}

// The agent's password (or SCRAM proof) never lands in a recording.
func TestPasswordNotRecorded(t *testing.T) {
	var got messages
	r := recorder{&got}
	r.Record(&Message{FromClient: true, Type: 'p', Body: []byte("hunter2\x00")})
	r.Record(&Message{FromClient: true, Type: 'Q', Body: []byte("SELECT 1\x00")})
	if len(got) != 2 || got[0].Body != nil || string(got[1].Body) != "SELECT 1\x00" {
		t.Fatalf("recorded %+v; want the password message without its body, the query whole", got)
	}
}
