package postgres

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

func FuzzDecodeQueries(f *testing.F) {
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u"}}).Encode(nil)
	ssl, _ := (&pgproto3.SSLRequest{}).Encode(nil)
	msgs := frontendScript()
	f.Add(append(startup, msgs...), []byte{})
	f.Add(append(append(ssl, startup...), msgs...), []byte("N"))
	f.Add(ssl, []byte("S"))
	f.Add(msgs, []byte{})
	f.Add([]byte{0, 0, 0, 3, 0, 3, 0, 0}, []byte{})
	f.Fuzz(func(t *testing.T, client, server []byte) {
		qs, _ := DecodeQueries(client, server)
		total, last := 0, -1
		for _, q := range qs {
			total += len(q.SQL)
			if q.Offset <= last || q.Offset+len(q.SQL) > len(client) {
				t.Fatalf("query %q at offset %d after %d in %d bytes", q.SQL, q.Offset, last, len(client))
			}
			last = q.Offset
		}
		if total > len(client) {
			t.Fatalf("extracted %d bytes of SQL from %d bytes", total, len(client))
		}
	})
}

// frontendScript is a session's worth of client messages after startup.
func frontendScript() []byte {
	var b []byte
	b, _ = (&pgproto3.Query{String: "SELECT 1; SELECT 'y'"}).Encode(b)
	b, _ = (&pgproto3.Parse{Name: "s", Query: "SELECT y FROM t"}).Encode(b)
	b, _ = (&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s", ResultFormatCodes: []int16{1}}).Encode(b)
	b, _ = (&pgproto3.Describe{ObjectType: 'P', Name: "p"}).Encode(b)
	b, _ = (&pgproto3.Execute{Portal: "p", MaxRows: 1}).Encode(b)
	b, _ = (&pgproto3.Parse{Name: "", Query: "SELECT x"}).Encode(b)
	b, _ = (&pgproto3.Sync{}).Encode(b)
	b, _ = (&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s"}).Encode(b)
	b, _ = (&pgproto3.Execute{Portal: "p"}).Encode(b)
	b, _ = (&pgproto3.Close{ObjectType: 'S', Name: "s"}).Encode(b)
	b, _ = (&pgproto3.Sync{}).Encode(b)
	b, _ = (&pgproto3.FunctionCall{Function: 1}).Encode(b)
	b, _ = (&pgproto3.Query{String: "COPY t FROM STDIN"}).Encode(b)
	b, _ = (&pgproto3.CopyData{Data: []byte("1\n")}).Encode(b)
	b, _ = (&pgproto3.CopyDone{}).Encode(b)
	b, _ = (&pgproto3.Query{String: "SELECT 'z'"}).Encode(b)
	b, _ = (&pgproto3.Terminate{}).Encode(b)
	return b
}

// backendScript is a server's worth of answers.
func backendScript() []byte {
	var b []byte
	rd := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("y"), DataTypeOID: 25, Format: 0},
		{Name: []byte("n"), DataTypeOID: 23, DataTypeSize: 4, Format: 1},
	}}
	b, _ = rd.Encode(b)
	b, _ = (&pgproto3.DataRow{Values: [][]byte{[]byte("secret"), {0, 0, 0, 1}}}).Encode(b)
	b, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(b)
	b, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(b)
	b, _ = (&pgproto3.ParseComplete{}).Encode(b)
	b, _ = (&pgproto3.BindComplete{}).Encode(b)
	b, _ = rd.Encode(b)
	b, _ = rd.Encode(b)
	b, _ = (&pgproto3.DataRow{Values: [][]byte{nil, {0, 0, 0, 2}}}).Encode(b)
	b, _ = (&pgproto3.PortalSuspended{}).Encode(b)
	b, _ = (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: "syntax error at or near \"" + deniedSQL + "\""}).Encode(b)
	b, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(b)
	b, _ = (&pgproto3.NoData{}).Encode(b)
	b, _ = (&pgproto3.NoticeResponse{Severity: "NOTICE", Message: "hi"}).Encode(b)
	b, _ = (&pgproto3.NotificationResponse{Channel: "c", Payload: "p"}).Encode(b)
	b, _ = (&pgproto3.CopyInResponse{}).Encode(b)
	b, _ = (&pgproto3.CopyOutResponse{}).Encode(b)
	b, _ = (&pgproto3.CopyData{Data: []byte("row\n")}).Encode(b)
	b, _ = (&pgproto3.CopyDone{}).Encode(b)
	b, _ = (&pgproto3.CommandComplete{CommandTag: []byte("COPY 1")}).Encode(b)
	b, _ = (&pgproto3.ReadyForQuery{TxStatus: 'T'}).Encode(b)
	return b
}

// fuzzEnforcer exercises every verdict: deny on x, mask on y, hold on z.
var fuzzEnforcer = EnforcerFunc(func(_ context.Context, sql string) Verdict {
	switch {
	case strings.Contains(sql, "x"):
		return Verdict{Action: Deny, Rule: "x"}
	case strings.Contains(sql, "y"):
		return Verdict{Mask: redactColumns("y", "n")}
	case strings.Contains(sql, "z"):
		return Verdict{Action: Hold, ApprovalID: "a", Wait: func(context.Context) (bool, string) { return false, "no" }}
	}
	return Verdict{}
})

// relayOnce runs a relay between two in-memory pipes fed with the given
// bytes and drains whatever it writes; it fails when the relay does not end.
func relayOnce(t *testing.T, fromAgent, fromServer []byte) {
	agentSide, agentRelay := net.Pipe()
	serverSide, serverRelay := net.Pipe()
	go func() { agentSide.Write(fromAgent); agentSide.Close() }()
	go func() { serverSide.Write(fromServer) }()
	go io.Copy(io.Discard, agentSide)
	go io.Copy(io.Discard, serverSide)
	done := make(chan error, 1)
	go func() {
		done <- Relay(context.Background(), agentRelay, serverRelay, RelayConfig{
			Enforcer: fuzzEnforcer, Recorder: nopRecorder{}, MaxMessageSize: 1 << 16,
		})
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not end")
	}
	serverSide.Close()
}

// FuzzRelayClient feeds arbitrary agent input to the relay.
func FuzzRelayClient(f *testing.F) {
	f.Add(frontendScript())
	f.Add([]byte{'Q', 0x7f, 0xff, 0xff, 0xff})
	f.Add([]byte{'B', 0, 0, 0, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		relayOnce(t, data, backendScript())
	})
}

// FuzzRelayServer feeds arbitrary server input to the relay while the agent
// runs a script with masked, denied and held statements.
func FuzzRelayServer(f *testing.F) {
	f.Add(backendScript())
	f.Add([]byte{'D', 0, 0, 0, 6, 0, 1})
	f.Add([]byte{'T', 0, 0, 0, 6, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		relayOnce(t, frontendScript(), data)
	})
}
