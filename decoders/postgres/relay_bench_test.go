package postgres

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// fakeServer answers every Query with one row, like pgbench -S, without
// allocating, so a benchmark measures the relay.
func fakeServer(b *testing.B, ln net.Listener) {
	var answer []byte
	answer, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4}}}).Encode(answer)
	answer, _ = (&pgproto3.DataRow{Values: [][]byte{[]byte("0")}}).Encode(answer)
	answer, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(answer)
	answer, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(answer)
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			hdr := make([]byte, 5)
			body := make([]byte, 1<<16)
			for {
				if _, err := io.ReadFull(c, hdr); err != nil {
					return
				}
				n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
				if n > len(body) {
					return
				}
				if _, err := io.ReadFull(c, body[:n]); err != nil {
					return
				}
				if hdr[0] == 'Q' {
					if _, err := c.Write(answer); err != nil {
						return
					}
				}
			}
		}()
	}
}

// roundTrips sends b.N pgbench-like queries on c and waits for each answer.
func roundTrips(b *testing.B, c net.Conn) {
	q, _ := (&pgproto3.Query{String: "SELECT abalance FROM pgbench_accounts WHERE aid = 42;"}).Encode(nil)
	buf := make([]byte, 4096)
	b.ReportAllocs()
	b.ResetTimer()
	before := testenv.CPUTime()
	defer func() { b.ReportMetric(float64((testenv.CPUTime()-before).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(q); err != nil {
			b.Fatal(err)
		}
		// Read until ReadyForQuery, the answer's last 6 bytes.
		got := 0
		for got < 6 || buf[got-6] != 'Z' {
			n, err := c.Read(buf[got:])
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
	}
}

// BenchmarkRoundTrip measures one query round trip over loopback TCP,
// directly to a fake server and through the relay, and the allocations per
// round trip of the whole process (the relay's share: the SQL string the
// enforcer gets).
func BenchmarkRoundTrip(b *testing.B) {
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	go fakeServer(b, srv)
	b.Run("direct", func(b *testing.B) {
		c, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrips(b, c)
	})
	b.Run("relay", func(b *testing.B) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		done := make(chan error, 1)
		go func() {
			a, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			up, err := net.Dial("tcp", srv.Addr().String())
			if err != nil {
				done <- err
				return
			}
			done <- Relay(context.Background(), a, up, RelayConfig{Enforcer: allowAll, Recorder: nopRecorder{}})
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		roundTrips(b, c)
		c.Close()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	})
}
