package postgres

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/rawsock"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestIdleRelayHoldsNoBuffers: a session that ran a statement with a large
// result and then waits for the agent's next holds none of the buffers it
// used: idle sessions are most of a pooled client's, and each held 32 KiB
// and more.
func TestIdleRelayHoldsNoBuffers(t *testing.T) {
	const sessions = 50
	heap := func() uint64 {
		// Two collections empty the pools (their victim caches survive one).
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	type ends struct{ agent, server net.Conn }
	var all []ends
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < sessions; i++ {
		agent, agentSide := tcpPair(t)
		upSide, server := tcpPair(t)
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
	before := heap()
	run()
	after := heap()
	if grew := int64(after) - int64(before); grew > sessions*1<<10 {
		t.Fatalf("heap grew by %d bytes for %d idle sessions (%d each): they hold their buffers", grew, sessions, grew/sessions)
	}
}
