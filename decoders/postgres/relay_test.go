package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func connect(t *testing.T, p *testProxy) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, p.DSN(""))
	if err != nil {
		t.Fatalf("connect through proxy: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func wantPgError(t *testing.T, err error, code, contains string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want PostgreSQL error %s, got %v", code, err)
	}
	if pe.Code != code || !strings.Contains(pe.Message, contains) {
		t.Fatalf("want error %s containing %q, got %s %q", code, contains, pe.Code, pe.Message)
	}
}

func TestRelayQueries(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE TABLE t (i int PRIMARY KEY, s text); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g")
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll} })
	c := connect(t, p)
	ctx := context.Background()

	// Simple protocol, several statements in one message.
	res, err := c.PgConn().Exec(ctx, "SELECT 1; SELECT count(*) FROM t").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || string(res[1].Rows[0][0]) != "5000" {
		t.Fatalf("multi-statement results: %+v", res)
	}
	// Extended protocol with parameters, binary results, a large result.
	var s string
	if err := c.QueryRow(ctx, "SELECT s FROM t WHERE i = $1", 42).Scan(&s); err != nil || s != "row 42" {
		t.Fatalf("extended query: %q, %v", s, err)
	}
	rows, _ := c.Query(ctx, "SELECT i, s FROM t ORDER BY i")
	n := 0
	for rows.Next() {
		n++
	}
	if rows.Err() != nil || n != 5000 {
		t.Fatalf("large result: %d rows, %v", n, rows.Err())
	}
	// Pipelined batch.
	b := &pgx.Batch{}
	b.Queue("SELECT 1")
	b.Queue("SELECT s FROM t WHERE i = $1", 7)
	b.Queue("SELECT count(*) FROM t WHERE i < $1", 10)
	br := c.SendBatch(ctx, b)
	var one, cnt int
	if err := br.QueryRow().Scan(&one); err != nil || one != 1 {
		t.Fatalf("batch 1: %v", err)
	}
	if err := br.QueryRow().Scan(&s); err != nil || s != "row 7" {
		t.Fatalf("batch 2: %v", err)
	}
	if err := br.QueryRow().Scan(&cnt); err != nil || cnt != 9 {
		t.Fatalf("batch 3: %v", err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	// A value larger than the relay's buffers, both ways.
	big := strings.Repeat("x", 3<<20)
	var got string
	if err := c.QueryRow(ctx, "SELECT $1::text", big).Scan(&got); err != nil || got != big {
		t.Fatalf("large value round trip: len %d, %v", len(got), err)
	}
}

func TestRelayDeny(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE TABLE t (i int PRIMARY KEY)")
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: denyContaining("secret", "no-secrets")} })
	c := connect(t, p)
	ctx := context.Background()
	pc := c.PgConn()

	// Simple protocol: the whole message is denied, the session goes on.
	_, err := pc.Exec(ctx, "SELECT 1; SELECT 'secret'").ReadAll()
	wantPgError(t, err, "42501", `"no-secrets"`)
	if pc.TxStatus() != 'I' {
		t.Fatalf("tx status after deny outside a transaction: %q", pc.TxStatus())
	}
	// Extended protocol: Parse is denied.
	_, err = c.Exec(ctx, "SELECT $1::text || 'secret'", "x")
	wantPgError(t, err, "42501", `"no-secrets"`)
	var one int
	if err := c.QueryRow(ctx, "SELECT $1::int", 1).Scan(&one); err != nil || one != 1 {
		t.Fatalf("query after deny: %v", err)
	}

	// Inside a transaction block the deny fails the block, as a server does.
	if _, err := pc.Exec(ctx, "BEGIN; INSERT INTO t VALUES (1)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err = pc.Exec(ctx, "SELECT 'secret'").ReadAll()
	wantPgError(t, err, "42501", "no-secrets")
	if pc.TxStatus() != 'E' {
		t.Fatalf("tx status after deny in a transaction: %q, want E", pc.TxStatus())
	}
	_, err = pc.Exec(ctx, "SELECT 1").ReadAll()
	wantPgError(t, err, "25P02", "")
	if _, err := pc.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// Extended protocol inside a transaction.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "INSERT INTO t VALUES ($1) -- secret", 2)
	wantPgError(t, err, "42501", "no-secrets")
	if pc.TxStatus() != 'E' {
		t.Fatalf("tx status after extended deny in a transaction: %q, want E", pc.TxStatus())
	}
	tx.Rollback(ctx)

	// Pipelined: a denied statement in the middle of an implicit transaction
	// rolls back what came before and skips what follows, as a server error
	// does.
	pl := pc.StartPipeline(ctx)
	pl.SendQueryParams("INSERT INTO t VALUES (10)", nil, nil, nil, nil)
	pl.SendQueryParams("SELECT 'secret'", nil, nil, nil, nil)
	pl.SendQueryParams("INSERT INTO t VALUES (11)", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("INSERT INTO t VALUES (12)", nil, nil, nil, nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
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
	if len(errs) != 1 {
		t.Fatalf("pipeline errors: %q", errs)
	}
	wantPgError(t, errs[0], "42501", "no-secrets")
	if got := pg.Psql(t, "SELECT string_agg(i::text, ',' ORDER BY i) FROM t"); got != "12" {
		t.Fatalf("rows after pipelined deny: %q, want 12", got)
	}

	// psql sees the relay's error text.
	out, err := exec.Command("psql", "-X", "-d", p.DSN(""), "-c", "SELECT 'secret'").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `permission denied by rule "no-secrets"`) {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(mustPsql(t, p, "SELECT 40 + 2"))); got != "42" {
		t.Fatalf("psql through proxy: %q", got)
	}
}

// A denial that stands for a server error (a statement that does not
// parse) reaches the agent as that error, simple and extended protocol, with
// the transaction state a server error leaves.
func TestRelayDenyAsServerError(t *testing.T) {
	pg := testenv.StartPostgres(t)
	const msg = `syntax error at or near "FRM"`
	p := startProxy(t, pg, func() RelayConfig {
		return RelayConfig{Enforcer: EnforcerFunc(func(_ context.Context, sql string) Verdict {
			if i := strings.Index(sql, "FRM"); i >= 0 {
				return Verdict{Action: Deny, Rule: "unparseable", Message: msg, Code: "42601", Position: int32(i + 1)}
			}
			return Verdict{}
		})}
	})
	c := connect(t, p)
	ctx := context.Background()
	pc := c.PgConn()
	wantSyntax := func(err error, pos int32) {
		t.Helper()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42601" || pe.Message != msg || pe.Position != pos || pe.Severity != "ERROR" {
			t.Fatalf("want 42601 %q at %d, got %#v", msg, pos, err)
		}
	}
	_, err := pc.Exec(ctx, "SELECT * FRM t").ReadAll()
	wantSyntax(err, 10)
	_, err = c.Exec(ctx, "SELECT $1::int FRM t", 1)
	wantSyntax(err, 16)
	if _, err := pc.Exec(ctx, "BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err = pc.Exec(ctx, "SELECT FRM").ReadAll()
	wantSyntax(err, 8)
	if pc.TxStatus() != 'E' {
		t.Fatalf("tx status after a syntax error in a transaction: %q, want E", pc.TxStatus())
	}
	if _, err := pc.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT $1::int", 5).Scan(&n); err != nil || n != 5 {
		t.Fatalf("session after the errors: %d %v", n, err)
	}
	// psql places its caret from the position, as it does for the server.
	out, _ := exec.Command("psql", "-X", "-d", p.DSN(""), "-c", "SELECT * FRM t").CombinedOutput()
	if !strings.Contains(string(out), "ERROR:  "+msg) || !strings.Contains(string(out), "LINE 1: SELECT * FRM t\n                 ^") {
		t.Fatalf("psql:\n%s", out)
	}
}

// A policy change applies to statements prepared before it.
func TestRelayDenyPreparedAfterPolicyChange(t *testing.T) {
	pg := testenv.StartPostgres(t)
	var denied atomic.Bool
	p := startProxy(t, pg, func() RelayConfig {
		return RelayConfig{Enforcer: EnforcerFunc(func(context.Context, string) Verdict {
			if denied.Load() {
				return Verdict{Action: Deny, Rule: "revoked"}
			}
			return Verdict{}
		})}
	})
	c := connect(t, p)
	ctx := context.Background()
	var n int
	for range 2 {
		if err := c.QueryRow(ctx, "SELECT $1::int", 3).Scan(&n); err != nil || n != 3 {
			t.Fatalf("allowed prepared statement: %v", err)
		}
	}
	denied.Store(true)
	err := c.QueryRow(ctx, "SELECT $1::int", 3).Scan(&n)
	wantPgError(t, err, "42501", "revoked")
	denied.Store(false)
	if err := c.QueryRow(ctx, "SELECT $1::int", 4).Scan(&n); err != nil || n != 4 {
		t.Fatalf("prepared statement after the policy allows again: %v", err)
	}
	// The same with a Bind too large for the relay's buffer, which is
	// decided on its names and streamed (or dropped).
	big := strings.Repeat("b", 1<<20)
	if err := c.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n); err != nil || n != len(big) {
		t.Fatalf("large bind: %d %v", n, err)
	}
	denied.Store(true)
	err = c.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n)
	wantPgError(t, err, "42501", "revoked")
	denied.Store(false)
	if err := c.QueryRow(ctx, "SELECT length($1::text)", big+"b").Scan(&n); err != nil || n != len(big)+1 {
		t.Fatalf("large bind after a dropped one: %d %v", n, err)
	}
}

func mustPsql(t *testing.T, p *testProxy, sql string) []byte {
	t.Helper()
	out, err := exec.Command("psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", p.DSN(""), "-c", sql).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return out
}

// TestRelayContainsDefects: a defect that panics on either side of a
// session (here the policy's verdict, then a masker on the server's
// rows) ends that session with the defect, not the process; the next
// session is served.
func TestRelayContainsDefects(t *testing.T) {
	pg := testenv.StartPostgres(t)
	p := startProxy(t, pg, func() RelayConfig {
		return RelayConfig{Enforcer: EnforcerFunc(func(_ context.Context, sql string) Verdict {
			switch {
			case strings.Contains(sql, "client-defect"):
				panic("enforcer defect")
			case strings.Contains(sql, "server-defect"):
				return Verdict{Mask: defectiveMasker{}}
			}
			return Verdict{}
		})}
	})
	ctx := context.Background()
	for i, tc := range []struct{ sql, where string }{
		{"SELECT 'client-defect'", "postgres client side"},
		{"SELECT 'server-defect'", "postgres server side"},
	} {
		c := connect(t, p)
		if _, err := c.Exec(ctx, tc.sql); err == nil {
			t.Errorf("%s: answered", tc.sql)
		}
		// pgx cancels the failed query on a connection of its own: the
		// sessions' ends are told apart by their errors.
		var defects []*protocol.InternalError
		for deadline := time.Now().Add(5 * time.Second); len(defects) <= i && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			defects = defects[:0]
			for _, err := range p.Errors() {
				var ie *protocol.InternalError
				if errors.As(err, &ie) {
					defects = append(defects, ie)
				}
			}
		}
		if len(defects) != i+1 || defects[i].Where != tc.where {
			t.Fatalf("%s: sessions ended with %v, want the defect in the %s", tc.sql, p.Errors(), tc.where)
		}
	}
	var one int
	if err := connect(t, p).QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Errorf("a session after the defects: %d, %v", one, err)
	}
}

type defectiveMasker struct{}

func (defectiveMasker) Plan([]Column) RowMasker { panic("masker defect") }

// The server side's read that a kept session's end interrupts with a
// deadline fails with an error the relay drops: it must still be the
// deadline's (serverLoop tells it by that), print as an upstream read, and
// cost no formatting until printed.
func TestServerReadErrorFormatsOnlyWhenPrinted(t *testing.T) {
	deadline := &net.OpError{Op: "read", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
		Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5432}, Err: os.ErrDeadlineExceeded}
	err := serverEOF(deadline)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("%v is not the deadline's error", err)
	}
	if want := "read upstream: " + deadline.Error(); err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if n := testing.AllocsPerRun(100, func() { serverEOF(deadline) }); n > 1 {
		t.Fatalf("%v allocations to make the error, want at most 1", n)
	}
	if serverEOF(io.EOF) != nil || serverEOF(fmt.Errorf("read: %w", net.ErrClosed)) != nil {
		t.Fatal("the server's end or a closed socket is not an error")
	}
}
