package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgxProbeEnv makes the test binary a pgx agent: run under `interlock
// exec`, it runs pgxProbe on the DSN given as its last argument and prints
// the report as JSON. It is checked in init, before TestMain, so that this
// file needs nothing from the other agent modes.
const pgxProbeEnv = "INTERLOCK_E2E_PGX"

func init() {
	if os.Getenv(pgxProbeEnv) == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	json.NewEncoder(os.Stdout).Encode(pgxProbe(ctx, os.Args[len(os.Args)-1]))
	os.Exit(0)
}

// probeError is what a client sees of an error.
type probeError struct {
	Code, Message string
	Position      int32
}

func (e probeError) String() string {
	return fmt.Sprintf("%s at %d: %s", e.Code, e.Position, e.Message)
}

func toProbeError(err error) probeError {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return probeError{pe.Code, pe.Message, pe.Position}
	}
	if err == nil {
		return probeError{Code: "none"}
	}
	return probeError{Code: "not a server error", Message: err.Error()}
}

// probeReport is what pgxProbe saw.
type probeReport struct {
	// Errors of statements the server refuses before running them, each by
	// the simple and then the extended protocol.
	Errors []probeError
	// KeyPID is the process ID in BackendKeyData; BackendPID is
	// pg_backend_pid(); InActivity counts pg_stat_activity rows with KeyPID.
	KeyPID, BackendPID uint32
	InActivity         int
	SearchPath         string
	// Cancel is the SQLSTATE of a query cancelled with CancelRequest;
	// Terminate of the session ended by pg_terminate_backend(pg_backend_pid()).
	Cancel, Terminate string
	Err               string
}

// badStatements are refused by the server's parser (or its encoding check)
// before anything runs.
var badStatements = []string{
	"SELEC 1",
	"SELECT 'é' FRM t",
	"SELECT 1; SELEC 2",
	"SELECT 'unterminated",
	"DELETE FROM",
	"SELECT \xf0\x28\x8c\x28 FROM t",
}

// pgxProbe connects with pgx and records what a client can see of errors,
// of its backend's process ID, of cancellation and of termination.
func pgxProbe(ctx context.Context, dsn string) (r probeReport) {
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		r.Err = "connect: " + err.Error()
		return r
	}
	defer c.Close(context.Background())
	pc := c.PgConn()
	for _, sql := range badStatements {
		_, err := pc.Exec(ctx, sql).ReadAll()
		r.Errors = append(r.Errors, toProbeError(err))
		err = pc.ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err
		r.Errors = append(r.Errors, toProbeError(err))
		if _, err := pc.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			r.Err = "session after an error: " + err.Error()
			return r
		}
	}
	r.KeyPID = pc.PID()
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&r.BackendPID); err != nil {
		r.Err = "pg_backend_pid: " + err.Error()
		return r
	}
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", r.KeyPID).Scan(&r.InActivity); err != nil {
		r.Err = "pg_stat_activity: " + err.Error()
		return r
	}
	if err := c.QueryRow(ctx, "SHOW search_path").Scan(&r.SearchPath); err != nil {
		r.Err = "show search_path: " + err.Error()
		return r
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		pc.CancelRequest(ctx)
	}()
	var n int64
	err = c.QueryRow(ctx, "SELECT count(*) FROM generate_series(1, 100000000000)").Scan(&n)
	r.Cancel = toProbeError(err).Code
	_, err = pc.Exec(ctx, "SELECT pg_terminate_backend(pg_backend_pid())").ReadAll()
	r.Terminate = toProbeError(err).Code
	return r
}

const pgwirePolicy = `version: 1
identities:
  - name: full
  - name: reader
targets:
  - name: appdb
    protocol: postgres
    addresses: [127.0.0.1]
    port: %d
    credential: {source: embedded, template: agent_rw}
rules:
  - name: everything
    identity: full
    target: appdb
    sql: {class: [read, session, transaction, write, ddl, dcl, admin]}
    action: allow
  - name: read
    identity: reader
    target: appdb
    sql: {class: [read, session, transaction]}
    action: allow
`

// runProbe runs pgxProbe as an unprivileged agent of identity through
// interlockd, connecting with the DSN's extra parameters.
func (f *pgFixture) runProbe(t *testing.T, agent, identity, extra string) probeReport {
	t.Helper()
	dsn := fmt.Sprintf("postgres://agent@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=10%s", f.pg.Port, extra)
	cmd := f.d.Command(t.Context(), "exec", "--identity", identity, "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", agent, dsn)
	cmd.Env = append(os.Environ(), pgxProbeEnv+"=1")
	out, err := cmd.Output()
	var r probeReport
	if jerr := json.Unmarshal(out, &r); err != nil || jerr != nil {
		t.Fatalf("pgx agent: %v %v\n%s\n%s", err, jerr, out, f.d.Logs())
	}
	return r
}

// TestPgxSeesTheServer: what pgx sees through interlockd under a policy
// that allows everything is what it sees from the server itself (issue 12):
// a statement that does not parse gets the server's 42601 (or 22021) with
// its message and position, not 42501; BackendKeyData carries the real
// backend PID, so pg_backend_pid() and pg_stat_activity agree with it, and
// CancelRequest still works through interlockd; a session can terminate
// itself; search_path in the startup packet is decided as SET search_path.
func TestPgxSeesTheServer(t *testing.T) {
	f := startPGWith(t, pgwirePolicy)
	agent := agentBinary(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	direct := pgxProbe(ctx, f.pg.AdminDSN()+"&search_path=public,pg_catalog")
	if direct.Err != "" || direct.KeyPID != direct.BackendPID {
		t.Fatalf("probe against the server itself: %+v", direct)
	}
	got := f.runProbe(t, agent, "full", "&search_path=public,pg_catalog")
	if got.Err != "" {
		t.Fatalf("probe through interlockd: %s\n%s", got.Err, f.d.Logs())
	}
	for i, want := range direct.Errors {
		if got.Errors[i] != want {
			t.Errorf("%q (%s protocol): got %s, the server says %s", badStatements[i/2],
				[]string{"simple", "extended"}[i%2], got.Errors[i], want)
		}
	}
	if got.KeyPID != got.BackendPID || got.KeyPID == 0 || got.InActivity != 1 {
		t.Errorf("BackendKeyData pid %d, pg_backend_pid() %d, %d pg_stat_activity rows", got.KeyPID, got.BackendPID, got.InActivity)
	}
	if got.SearchPath != direct.SearchPath {
		t.Errorf("search_path from the startup packet: %q", got.SearchPath)
	}
	if got.Cancel != "57014" || got.Terminate != "57P01" {
		t.Errorf("cancel: %s (want 57014), terminate: %s (want 57P01)", got.Cancel, got.Terminate)
	}

	// A policy that does not allow SET search_path refuses it at connect,
	// naming the rule; session settings still pass.
	_, err := f.psqlAsIdentity(t, "reader", "SELECT 1", "search_path=public")
	if err == nil {
		t.Fatal("search_path in the startup packet was allowed without a rule allowing SET search_path")
	}
	out, err := f.psqlAsIdentity(t, "reader", "SHOW statement_timeout", "statement_timeout=7s")
	if err != nil || out != "7s" {
		t.Fatalf("statement_timeout under a read-only policy: %v\n%s", err, out)
	}
	r := f.runProbe(t, agent, "reader", "&search_path=public")
	if !strings.Contains(r.Err, `startup parameter "search_path" denied by policy rule "default-deny"`) {
		t.Fatalf("search_path under a read-only policy: %q", r.Err)
	}
}

// psqlAsIdentity runs psql as identity, unprivileged, with the settings
// given as "name=value" sent in the startup packet's options.
func (f *pgFixture) psqlAsIdentity(t *testing.T, identity, sql string, conninfo ...string) (string, error) {
	t.Helper()
	dsn := "host=127.0.0.1 port=" + strconv.Itoa(f.pg.Port) + " user=agent dbname=postgres connect_timeout=10"
	for _, kv := range conninfo {
		name, value, _ := strings.Cut(kv, "=")
		dsn += " options='-c " + name + "=" + value + "'"
	}
	cmd := f.d.Command(t.Context(), "exec", "--identity", identity, "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql)
	cmd.Env = append(os.Environ(), "HOME=/tmp")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
