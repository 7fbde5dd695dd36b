package postgres

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/decoders/protocol"
)

// keepingUpstream is a target that keeps every server session parked with
// it, by key, as the pipeline does for one identity (agent/session).
type keepingUpstream struct {
	pg     *testenv.Postgres
	mu     sync.Mutex
	parked map[string][]io.Closer
	parks  int
}

func (u *keepingUpstream) Addr() string { return u.pg.Addr() }
func (u *keepingUpstream) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.pg.Addr())
	if err != nil {
		return nil, err
	}
	return rawsock.Wrap(c), nil
}
func (u *keepingUpstream) Credential(context.Context, protocol.CredentialRequest) (protocol.Credential, error) {
	return protocol.Credential{Username: u.pg.Superuser, Password: u.pg.Password}, nil
}
func (u *keepingUpstream) Resume(key string) (io.Closer, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	list := u.parked[key]
	if len(list) == 0 {
		return nil, true
	}
	u.parked[key] = list[:len(list)-1]
	return list[len(list)-1], true
}
func (u *keepingUpstream) Parking(key string) func(io.Closer) bool {
	return func(c io.Closer) bool {
		if c == nil {
			return false
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		u.parked[key] = append(u.parked[key], c)
		u.parks++
		return true
	}
}

func (u *keepingUpstream) parkCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.parks
}

type allowEverything struct{}

func (allowEverything) Decide(context.Context, protocol.Request) protocol.Verdict {
	return protocol.Verdict{Action: protocol.Allow}
}

// serveKeeping serves every connection to the returned address with a
// Decoder whose sessions share up.
func serveKeeping(t *testing.T, up *keepingUpstream) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var d Decoder
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				d.Serve(context.Background(), &protocol.Session{ID: "s", Identity: "agent", Agent: rawsock.Wrap(c),
					Connect: protocol.Verdict{Action: protocol.Allow}, Handshake: 10 * time.Second,
					Upstream: up, Enforcer: allowEverything{}, Recorder: &messages{}})
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, list := range up.parked {
			for _, c := range list {
				c.Close()
			}
		}
	})
	return ln.Addr().String()
}

// waitParks waits until up has parked n sessions in all.
func waitParks(t *testing.T, up *keepingUpstream, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for up.parkCount() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions parked, want %d", up.parkCount(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pgConnect(t *testing.T, addr, extra string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, "postgres://agent@"+addr+"/postgres?sslmode=disable"+extra)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	return c
}

func backendPID(t *testing.T, c *pgx.Conn) int {
	t.Helper()
	var pid int
	if err := c.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// A session the agent left idle serves the next one, reset: nothing the
// first one did to its session (settings, temporary tables, prepared
// statements, advisory locks, LISTEN, the role) reaches the second.
func TestServerSessionReusedReset(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE other NOLOGIN")
	up := &keepingUpstream{pg: pg, parked: map[string][]io.Closer{}}
	addr := serveKeeping(t, up)
	ctx := context.Background()

	a := pgConnect(t, addr, "")
	pid := backendPID(t, a)
	for _, sql := range []string{"SET work_mem = '7MB'", "CREATE TEMP TABLE scratch (i int)", "PREPARE leftover AS SELECT 1",
		"SELECT pg_advisory_lock(42)", "LISTEN channel", "SET ROLE other"} {
		if _, err := a.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	a.Close(ctx)
	waitParks(t, up, 1)

	b := pgConnect(t, addr, "")
	defer b.Close(ctx)
	if got := backendPID(t, b); got != pid {
		t.Fatalf("second session on backend %d, want the parked %d", got, pid)
	}
	var workMem, role string
	var temp, prepared, locks, listening int
	err := b.QueryRow(ctx, `SELECT current_setting('work_mem'), current_user,
		(SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'),
		(SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover'),
		(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
		(SELECT count(*) FROM pg_listening_channels())`).Scan(&workMem, &role, &temp, &prepared, &locks, &listening)
	if err != nil {
		t.Fatal(err)
	}
	if workMem != "4MB" || role != pg.Superuser || temp+prepared+locks+listening != 0 {
		t.Fatalf("second session inherited work_mem %s, role %s, %d temp tables, %d prepared, %d advisory locks, %d channels",
			workMem, role, temp, prepared, locks, listening)
	}
}

// Only a session left between statements and outside a transaction is
// kept; one left inside a transaction, or by an agent that vanished in the
// middle of a result, is closed, and a session with other startup settings
// gets a server session of its own.
func TestServerSessionKeptOnlyWhenIdle(t *testing.T) {
	pg := testenv.StartPostgres(t)
	up := &keepingUpstream{pg: pg, parked: map[string][]io.Closer{}}
	addr := serveKeeping(t, up)
	ctx := context.Background()

	a := pgConnect(t, addr, "")
	if _, err := a.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	pid := backendPID(t, a)
	a.Close(ctx) // Terminate, in a transaction
	// An agent that leaves in the middle of a large result.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "agent", "database": "postgres"}}).Encode(nil)
	c.Write(startup)
	buf := make([]byte, 4096)
	for !strings.Contains(string(buf), "Z\x00\x00\x00\x05I") {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("greeting: %v", err)
		}
	}
	q, _ := (&pgproto3.Query{String: "SELECT repeat('x', 1000) FROM generate_series(1, 100000)"}).Encode(nil)
	c.Write(q)
	c.Read(buf)
	c.Close()

	time.Sleep(200 * time.Millisecond)
	if n := up.parkCount(); n != 0 {
		t.Fatalf("%d sessions parked; none was idle", n)
	}
	b := pgConnect(t, addr, "")
	if got := backendPID(t, b); got == pid {
		t.Fatalf("a session left in a transaction was reused")
	}
	b.Close(ctx)
	waitParks(t, up, 1)
	other := pgConnect(t, addr, "&application_name=other")
	defer other.Close(ctx)
	if got := backendPID(t, other); got == pid {
		t.Fatalf("a session with other startup settings got the parked one")
	}
}

// A server session that ended while parked (terminated by an
// administrator) is not handed to an agent: the next session logs in anew.
func TestParkedServerSessionThatEndedIsNotResumed(t *testing.T) {
	pg := testenv.StartPostgres(t)
	up := &keepingUpstream{pg: pg, parked: map[string][]io.Closer{}}
	addr := serveKeeping(t, up)
	ctx := context.Background()

	a := pgConnect(t, addr, "")
	pid := backendPID(t, a)
	a.Close(ctx)
	waitParks(t, up, 1)
	pg.Psql(t, "SELECT pg_terminate_backend("+strconv.Itoa(pid)+", 5000)")

	b := pgConnect(t, addr, "")
	defer b.Close(ctx)
	if got := backendPID(t, b); got == pid {
		t.Fatalf("the terminated backend %d was handed out", pid)
	}
	var one int
	if err := b.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// reset keeps a session only when the server answers DISCARD ALL with
// nothing but its completion, reported settings and notices, ending
// outside a transaction with nothing after.
func TestResetAnswers(t *testing.T) {
	enc := func(msgs ...pgproto3.BackendMessage) []byte {
		var b []byte
		for _, m := range msgs {
			b, _ = m.Encode(b)
		}
		return b
	}
	ok := &pgproto3.CommandComplete{CommandTag: []byte("DISCARD ALL")}
	idle := &pgproto3.ReadyForQuery{TxStatus: 'I'}
	for _, tc := range []struct {
		name   string
		answer []byte
		split  int // the answer comes in two writes, split here (0: one)
		ok     bool
	}{
		{"clean", enc(ok, idle), 0, true},
		{"clean, byte by byte", enc(ok, idle), 3, true},
		{"settings and a notice", enc(&pgproto3.ParameterStatus{Name: "application_name", Value: "psql"},
			&pgproto3.NoticeResponse{Message: "x"}, ok, idle), 20, true},
		{"error", enc(&pgproto3.ErrorResponse{Severity: "ERROR", Code: "25001", Message: "no"}, idle), 0, false},
		{"in a transaction", enc(ok, &pgproto3.ReadyForQuery{TxStatus: 'T'}), 0, false},
		{"no completion", enc(idle), 0, false},
		{"more after", enc(ok, idle, &pgproto3.NoticeResponse{Message: "late"}), 0, false},
		{"bad length", []byte{'C', 0, 0, 0, 1}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy, server := net.Pipe()
			defer proxy.Close()
			go func() {
				defer server.Close()
				q := make([]byte, 17)
				if _, err := io.ReadFull(server, q); err != nil || string(q[5:16]) != "DISCARD ALL" {
					return
				}
				if tc.split > 0 {
					server.Write(tc.answer[:tc.split])
					time.Sleep(10 * time.Millisecond)
					server.Write(tc.answer[tc.split:])
				} else {
					server.Write(tc.answer)
				}
			}()
			up := &Upstream{Conn: proxy, Parameters: []Param{NewParam("application_name", "pgbench")}}
			err := up.reset()
			if (err == nil) != tc.ok {
				t.Fatalf("reset: %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && tc.split == 20 && up.Parameters[0].Value() != "psql" {
				t.Fatalf("application_name after reset: %q", up.Parameters[0].Value())
			}
		})
	}
}

// TestServerParametersShared: two sessions of one server hold one copy
// of the parameters it reported at their logins (an idle session keeps
// them for the next that takes its server over), and a value that differs
// stays each session's own.
func TestServerParametersShared(t *testing.T) {
	login := func(role string) *Upstream {
		t.Helper()
		proxy, server := net.Pipe()
		t.Cleanup(func() { proxy.Close() })
		go func() {
			defer server.Close()
			var n [4]byte
			if _, err := io.ReadFull(server, n[:]); err != nil {
				return
			}
			if _, err := io.ReadFull(server, make([]byte, binary.BigEndian.Uint32(n[:])-4)); err != nil {
				return
			}
			var b []byte
			for _, m := range []pgproto3.BackendMessage{
				&pgproto3.AuthenticationOk{},
				&pgproto3.ParameterStatus{Name: "server_version", Value: "15.14 (Debian 15.14-0+deb12u1)"},
				&pgproto3.ParameterStatus{Name: "TimeZone", Value: "Etc/UTC"},
				&pgproto3.ParameterStatus{Name: "session_authorization", Value: role},
				&pgproto3.BackendKeyData{ProcessID: 7, SecretKey: []byte{1, 2, 3, 4}},
				&pgproto3.ReadyForQuery{TxStatus: 'I'},
			} {
				b, _ = m.Encode(b)
			}
			server.Write(b)
			io.Copy(io.Discard, server)
		}()
		up, err := ConnectUpstream(t.Context(), proxy, UpstreamConfig{User: role, Database: "postgres"})
		if err != nil {
			t.Fatal(err)
		}
		return up
	}
	a, b := login("interlock_a"), login("interlock_b")
	if len(a.Parameters) != 3 || len(b.Parameters) != 3 {
		t.Fatalf("parameters %d and %d, want 3", len(a.Parameters), len(b.Parameters))
	}
	for i := range a.Parameters {
		pa, pb := a.Parameters[i], b.Parameters[i]
		if pa.Name() != pb.Name() || unsafe.StringData(pa.Name()) != unsafe.StringData(pb.Name()) {
			t.Errorf("parameter %d: names %q and %q not one copy", i, pa.Name(), pb.Name())
		}
		same := pa.Value() == pb.Value()
		if shared := unsafe.StringData(pa.Value()) == unsafe.StringData(pb.Value()); same != shared {
			t.Errorf("%s: values %q and %q, one copy %v", pa.Name(), pa.Value(), pb.Value(), shared)
		}
	}
	if got := b.Parameters[2].Value(); got != "interlock_b" {
		t.Errorf("session_authorization %q", got)
	}
}
