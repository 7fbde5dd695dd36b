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

// TestQueueReleasedWhenEmpty: an idle session lets its queue's ring go
// (suspendServer), but only an empty one, and the next statement's entries
// go through a new one in order.
func TestQueueReleasedWhenEmpty(t *testing.T) {
	var q queue
	q.room.L = &q.mu
	for i := range 6 {
		q.push(entry{kind: uint8(i)})
	}
	q.release()
	q.mu.Lock()
	for i := range 6 {
		if e := q.peek(0); e == nil || e.kind != uint8(i) {
			t.Fatalf("entry %d after a release with entries pending: %+v", i, e)
		}
		q.pop()
	}
	q.mu.Unlock()
	q.release()
	if q.buf != nil {
		t.Fatalf("an empty queue kept its ring of %d", len(q.buf))
	}
	for i := range 9 {
		q.push(entry{kind: uint8(i)})
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := range 9 {
		if e := q.peek(0); e == nil || e.kind != uint8(i) {
			t.Fatalf("entry %d after the ring was let go: %+v", i, e)
		}
		q.pop()
	}
	if q.n != 0 || q.peek(0) != nil {
		t.Fatalf("%d entries left after every entry was popped", q.n)
	}
}
