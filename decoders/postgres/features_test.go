package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/policy/mask"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// redactColumns is what interlockd gives the relay for a policy's mask rule
// that redacts the named columns: policy/mask's plan through MaskText.
func redactColumns(names ...string) ColumnMasker {
	rules := make([]mask.ColumnRule, len(names))
	for i, n := range names {
		rules[i] = mask.ColumnRule{Pattern: n, Method: mask.Redact}
	}
	m, err := mask.New("test", rules, nil, nil)
	if err != nil {
		panic(err)
	}
	return MaskText(func(columns []string) TextMasker {
		if p := m.Plan(columns); p.Active() {
			return p
		}
		return nil
	})
}

// maskOn masks columns email and id of statements that mention "people".
func maskOn(_ context.Context, sql string) Verdict {
	if strings.Contains(sql, "people") {
		return Verdict{Rule: "mask-pii", Mask: redactColumns("email", "id")}
	}
	return Verdict{}
}

// rowRecorder keeps the DataRows the agent received.
type rowRecorder struct {
	mu   sync.Mutex
	rows [][]byte
}

func (r *rowRecorder) Record(m *Message) {
	if !m.FromClient && m.Type == 'D' {
		r.mu.Lock()
		r.rows = append(r.rows, bytes.Clone(m.Body))
		r.mu.Unlock()
	}
}

func TestRelayMask(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE TABLE people (id int, name text, email text); INSERT INTO people VALUES (1, 'ann', 'ann@example.com'), (2, 'bob', NULL)")
	rec := &rowRecorder{}
	p := startProxy(t, pg, func() RelayConfig {
		return RelayConfig{Enforcer: EnforcerFunc(maskOn), Recorder: rec}
	})
	c := connect(t, p)
	ctx := context.Background()

	// Text format, simple protocol.
	res, err := c.PgConn().Exec(ctx, "SELECT 7 AS n; SELECT id, name, email FROM people ORDER BY name").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "7" {
		t.Fatalf("unmasked statement in the same message: %q", got)
	}
	r := res[1].Rows
	if string(r[0][0]) != "[redacted]" || string(r[0][1]) != "ann" || string(r[0][2]) != "[redacted]" || r[1][2] != nil {
		t.Fatalf("masked text rows: %q", r)
	}
	// Binary format, extended protocol, statement cached and reused, and
	// pipelined with statements that are not masked. A binary int cannot
	// carry the masked text: it arrives as NULL; text types carry it.
	for range 3 {
		b := &pgx.Batch{}
		b.Queue("SELECT $1::int AS id", 5)
		b.Queue("SELECT id, name, email FROM people WHERE name = $1", "ann")
		b.Queue("SELECT $1::text AS email", "plain")
		br := c.SendBatch(ctx, b)
		var id int
		var id2 *int
		var name, email, plain string
		if err := br.QueryRow().Scan(&id); err != nil || id != 5 {
			t.Fatalf("unmasked before: %d %v", id, err)
		}
		if err := br.QueryRow().Scan(&id2, &name, &email); err != nil || id2 != nil || name != "ann" || email != "[redacted]" {
			t.Fatalf("masked binary row: %v %q %q %v", id2, name, email, err)
		}
		if err := br.QueryRow().Scan(&plain); err != nil || plain != "plain" {
			t.Fatalf("unmasked after: %q %v", plain, err)
		}
		if err := br.Close(); err != nil {
			t.Fatal(err)
		}
	}
	// A named statement, a portal read in chunks (PortalSuspended): the
	// relay's own Describe answers never reach the agent.
	_, fe := rawAgent(t, p)
	fe.SendParse(&pgproto3.Parse{Name: "s2", Query: "SELECT email FROM people ORDER BY name"})
	fe.SendBind(&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s2"})
	fe.SendExecute(&pgproto3.Execute{Portal: "p", MaxRows: 1})
	fe.SendExecute(&pgproto3.Execute{Portal: "p", MaxRows: 1})
	fe.SendSync(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			seen = append(seen, "D:"+string(m.Values[0]))
		default:
			seen = append(seen, strings.TrimPrefix(strings.TrimPrefix(fmtType(m), "*pgproto3."), "pgproto3."))
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if got := strings.Join(seen, " "); got != "ParseComplete BindComplete D:[redacted] PortalSuspended D: PortalSuspended ReadyForQuery" {
		t.Fatalf("chunked masked portal: %s", got)
	}
	// psql sees the masked values too.
	if got := strings.TrimSpace(string(mustPsql(t, p, "SELECT name, email FROM people ORDER BY name"))); got != "ann|[redacted]\nbob|" {
		t.Fatalf("psql through the masking relay: %q", got)
	}

	// COPY out of a masked statement cannot be masked: the session ends
	// before any row leaves.
	var copied bytes.Buffer
	c2 := connect(t, p)
	_, err = c2.PgConn().CopyTo(ctx, &copied, "COPY people TO STDOUT")
	wantPgError(t, err, "42501", "COPY")
	if bytes.Contains(copied.Bytes(), []byte("example.com")) {
		t.Fatalf("masked COPY leaked %q", copied.Bytes())
	}

	// The recording shows the rows as the agent saw them.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, row := range rec.rows {
		if bytes.Contains(row, []byte("ann@example.com")) {
			t.Fatalf("recorded row holds the unmasked value: %q", row)
		}
	}
	if len(rec.rows) == 0 {
		t.Fatal("no rows recorded")
	}
}

func fmtType(v any) string { return fmt.Sprintf("%T", v) }

func drainPipeline(t *testing.T, pl *pgconn.Pipeline) []error {
	t.Helper()
	var errs []error
	for {
		r, err := pl.GetResults()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if r == nil {
			break
		}
		if rr, ok := r.(*pgconn.ResultReader); ok {
			if _, err := rr.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := pl.Close(); err != nil {
		errs = append(errs, err)
	}
	return errs
}

func TestRelayHold(t *testing.T) {
	pg := testenv.StartPostgres(t)
	decisions := make(chan bool)
	p := startProxy(t, pg, func() RelayConfig {
		return RelayConfig{Enforcer: EnforcerFunc(func(_ context.Context, sql string) Verdict {
			if !strings.Contains(sql, "held") {
				return Verdict{}
			}
			return Verdict{Action: Hold, Rule: "review-writes", ApprovalID: "apr-17", Wait: func(ctx context.Context) (bool, string) {
				select {
				case ok := <-decisions:
					return ok, "reviewer said no"
				case <-ctx.Done():
					return false, "session ended"
				}
			}}
		})}
	})
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(p.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	notices := make(chan string, 4)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices <- n.Message }
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	other := connect(t, p)

	for _, approve := range []bool{true, false} {
		done := make(chan error, 1)
		var got string
		go func() { done <- c.QueryRow(ctx, "SELECT 'held'").Scan(&got) }()
		select {
		case n := <-notices:
			if !strings.Contains(n, "apr-17") {
				t.Fatalf("hold notice %q does not name the approval", n)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no hold notice")
		}
		// Other sessions are not held.
		var one int
		if err := other.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			t.Fatalf("held statement finished before a decision: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		decisions <- approve
		err := <-done
		if approve {
			if err != nil || got != "held" {
				t.Fatalf("approved statement: %q %v", got, err)
			}
		} else {
			wantPgError(t, err, "42501", "reviewer said no")
		}
	}
}

func TestRelayCopyNotifyCancel(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE TABLE c (i int, s text)")
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll} })
	c := connect(t, p)
	ctx := context.Background()

	// COPY FROM STDIN (binary, via pgx) with more data than the buffers.
	var rows [][]any
	for i := range 20000 {
		rows = append(rows, []any{i, strings.Repeat("v", 50)})
	}
	n, err := c.CopyFrom(ctx, pgx.Identifier{"c"}, []string{"i", "s"}, pgx.CopyFromRows(rows))
	if err != nil || n != 20000 {
		t.Fatalf("copy from: %d %v", n, err)
	}
	// COPY TO STDOUT.
	var buf bytes.Buffer
	tag, err := c.PgConn().CopyTo(ctx, &buf, "COPY c TO STDOUT")
	if err != nil || tag.RowsAffected() != 20000 || bytes.Count(buf.Bytes(), []byte("\n")) != 20000 {
		t.Fatalf("copy to: %v %v", tag, err)
	}
	// Notifications.
	if _, err := c.Exec(ctx, "LISTEN ch"); err != nil {
		t.Fatal(err)
	}
	pg.Psql(t, "NOTIFY ch, 'hello'")
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	nt, err := c.WaitForNotification(wctx)
	cancel()
	if err != nil || nt.Payload != "hello" {
		t.Fatalf("notification: %+v %v", nt, err)
	}
	// Cancel goes through the proxy's key to the upstream backend. A cancel
	// that arrives before the query starts does nothing, so repeat it.
	errc := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(30)")
		errc <- err
	}()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case err := <-errc:
			wantPgError(t, err, "57014", "")
			break wait
		case <-tick.C:
			if err := c.PgConn().CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("cancel did not interrupt the query")
		}
	}
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// rawAgent opens a session through the proxy speaking the protocol by hand.
func rawAgent(t *testing.T, p *testProxy) (net.Conn, *pgproto3.Frontend) {
	t.Helper()
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "agent", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return conn, fe
		}
	}
}

func TestRelayMalformedAgentInput(t *testing.T) {
	pg := testenv.StartPostgres(t)
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll, MaxMessageSize: 1 << 20} })
	for name, input := range map[string][]byte{
		"oversized":       {'Q', 0x7f, 0xff, 0xff, 0xff},
		"short length":    {'Q', 0, 0, 0, 2},
		"unterminated":    append([]byte{'Q', 0, 0, 0, 8}, "SELE"...),
		"bad parse":       append([]byte{'P', 0, 0, 0, 9}, "s\x00x\x00\x00"...),
		"bad execute":     append([]byte{'E', 0, 0, 0, 6}, "p\x00"...),
		"bad close":       append([]byte{'C', 0, 0, 0, 5}, 'Z'),
		"above the limit": binary.BigEndian.AppendUint32([]byte{'d'}, 2<<20),
	} {
		t.Run(name, func(t *testing.T) {
			before := len(p.Errors())
			conn, fe := rawAgent(t, p)
			if _, err := conn.Write(input); err != nil {
				t.Fatal(err)
			}
			m, err := fe.Receive()
			if err != nil {
				t.Fatalf("want an ErrorResponse, got %v", err)
			}
			e, ok := m.(*pgproto3.ErrorResponse)
			if !ok || e.Code != "08P01" {
				t.Fatalf("want protocol violation, got %#v", m)
			}
			if _, err := fe.Receive(); !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Fatalf("session not ended: %v", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for len(p.Errors()) == before && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			errs := p.Errors()
			var pe *ProtocolError
			if len(errs) == before || !errors.As(errs[len(errs)-1], &pe) {
				t.Fatalf("relay returned %v, want a ProtocolError", errs[before:])
			}
		})
	}
	// Other sessions are unaffected.
	c := connect(t, p)
	var one int
	if err := c.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

func TestRelayFunctionCall(t *testing.T) {
	pg := testenv.StartPostgres(t)
	for _, allow := range []bool{false, true} {
		p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll, AllowFunctionCall: allow} })
		_, fe := rawAgent(t, p)
		// pg_backend_pid() is OID 2026.
		fe.Send(&pgproto3.FunctionCall{Function: 2026, ResultFormatCode: 0})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); allow == ok || (ok && e.Code != "42501") {
			t.Fatalf("allow=%v: got %#v", allow, m)
		}
		if z, err := fe.Receive(); err != nil || fmtType(z) != "*pgproto3.ReadyForQuery" {
			t.Fatalf("allow=%v: want ReadyForQuery, got %#v %v", allow, z, err)
		}
	}
}
