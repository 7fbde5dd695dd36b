package postgres

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestIdleRelayHoldsNoBuffers: a session that ran a statement with a large
// result and then waits for the agent's next holds none of the buffers it
// used: idle sessions are most of a pooled client's, and each held 32 KiB
// and more.
func TestIdleRelayHoldsNoBuffers(t *testing.T) {
	const sessions = 50
	type ends struct{ agent, server net.Conn }
	var all []ends
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < sessions; i++ {
		agent, agentSide := testenv.TCPPair(t)
		upSide, server := testenv.TCPPair(t)
		all = append(all, ends{agent, server})
		go Relay(ctx, rawsock.Wrap(agentSide), rawsock.Wrap(upSide), RelayConfig{Enforcer: allowAll})
	}
	// A result of 64 KiB in 1 KiB rows.
	var result []byte
	result, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("v"), DataTypeOID: 25, DataTypeSize: -1, Format: 0}}}).Encode(result)
	row := make([]byte, 1024)
	for i := 0; i < 64; i++ {
		result, _ = (&pgproto3.DataRow{Values: [][]byte{row}}).Encode(result)
	}
	result, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 64")}).Encode(result)
	result, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(result)
	query, _ := (&pgproto3.Query{String: "SELECT v FROM t"}).Encode(nil)
	run := func() {
		for _, e := range all {
			e.agent.Write(query)
			got := make([]byte, len(query))
			if _, err := io.ReadFull(e.server, got); err != nil || string(got) != string(query) {
				t.Fatalf("server got %q, %v", got, err)
			}
			e.server.Write(result)
			got = make([]byte, len(result))
			if _, err := io.ReadFull(e.agent, got); err != nil || string(got) != string(result) {
				t.Fatalf("agent got %d bytes, %v", len(got), err)
			}
		}
	}
	// The relays' own structures are allocated as they start.
	time.Sleep(100 * time.Millisecond)
	before := testenv.LiveHeap()
	run()
	after := testenv.LiveHeap()
	if grew := after - before; grew > sessions*1<<10 {
		t.Fatalf("heap grew by %d bytes for %d idle sessions (%d each): they hold their buffers", grew, sessions, grew/sessions)
	}
}
