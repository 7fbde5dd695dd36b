package credentials

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/jackc/pgx/v5"
)

// createroleAdmin sets up the README's least-privileged admin role, name,
// for template roles templates on pg, and returns its DSN: LOGIN CREATEROLE
// and, on PostgreSQL 16 and later, ADMIN OPTION on each template.
func createroleAdmin(t *testing.T, pg *testenv.Postgres, name string, templates ...string) string {
	t.Helper()
	const password = "interlock-admin-test"
	pg.Psql(t, fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s'", name, password))
	t.Cleanup(func() { pg.Psql(t, "DROP OWNED BY "+name+"; DROP ROLE "+name) })
	major, err := strconv.Atoi(pg.Psql(t, "SELECT current_setting('server_version_num')::int / 10000"))
	if err != nil {
		t.Fatal(err)
	}
	if major >= 16 {
		for _, tpl := range templates {
			pg.Psql(t, fmt.Sprintf("GRANT %s TO %s WITH ADMIN OPTION", tpl, name))
		}
	}
	return pg.DSN(name, password, "postgres")
}

// testEmbeddedCreateroleAdmin: with an admin that has CREATEROLE and is not
// a superuser, the session's role (owning objects in two databases, with a
// connection still open) is gone within a second of Close.
func testEmbeddedCreateroleAdmin(t *testing.T, pg *testenv.Postgres) {
	dsn := createroleAdmin(t, pg, "interlock_admin", "agent_writer")
	pg.Psql(t, "CREATE DATABASE other_cr")
	t.Cleanup(func() { pg.Psql(t, "DROP DATABASE other_cr") })
	pg.Psql(t, "GRANT CREATE ON DATABASE other_cr TO agent_writer")
	m, err := NewManager(Config{Embedded: map[string]EmbeddedConfig{
		"pg": {AdminDSN: dsn, Template: "agent_writer", TTL: time.Minute},
	}}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := t.Context()
	if err := m.CheckAccess(ctx, []Ref{{}}); err != nil {
		t.Fatalf("the README's admin refused: %v", err)
	}
	l, err := m.Issue(ctx, Request{Target: "orders-db", Session: "s1", Identity: "ci"})
	if err != nil {
		t.Fatal(err)
	}
	cred := l.Credential()
	var open *pgx.Conn
	for _, db := range []string{"postgres", "other_cr"} {
		c, err := pgx.Connect(ctx, pg.DSN(cred.Username, cred.Password, db))
		if err != nil {
			t.Fatal(err)
		}
		stmt := "CREATE TABLE scratch_cr (x int)"
		if db == "other_cr" {
			stmt = "CREATE SCHEMA scratch_cr"
		}
		if _, err := c.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", db, err)
		}
		if db == "postgres" {
			open = c
			continue
		}
		c.Close(ctx)
	}
	start := time.Now()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("revoke with a CREATEROLE admin: %v", err)
	}
	took := time.Since(start)
	if took > time.Second {
		t.Errorf("revocation took %v", took)
	}
	t.Logf("revocation by a CREATEROLE admin (two databases, one open connection) took %v", took)
	if roleExists(t, pg, cred.Username) {
		t.Fatal("role survived revocation")
	}
	if err := open.Ping(ctx); err == nil {
		t.Error("the revoked role's open connection still works")
	}
	if owner := pg.Psql(t, "SELECT tableowner FROM pg_tables WHERE tablename = 'scratch_cr'"); owner != "interlock_admin" {
		t.Errorf("scratch_cr owned by %q, want the admin", owner)
	}
	pg.Psql(t, "DROP TABLE scratch_cr")
	if m.Pending() != 0 {
		t.Errorf("%d revocations pending", m.Pending())
	}
}

// testAdminWithoutCreaterole: an admin that cannot create and drop roles
// is found out before any session, with what it lacks named.
func testAdminWithoutCreaterole(t *testing.T, pg *testenv.Postgres) {
	pg.Psql(t, "CREATE ROLE weak_admin LOGIN PASSWORD 'weak'")
	t.Cleanup(func() { pg.Psql(t, "DROP ROLE weak_admin") })
	m, err := NewManager(Config{Embedded: map[string]EmbeddedConfig{
		"pg": {AdminDSN: pg.DSN("weak_admin", "weak", "postgres"), Template: "agent_readonly"},
	}}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	err = m.CheckAccess(t.Context(), []Ref{{}, {Template: "no_such_template"}})
	if !errors.Is(err, ErrPrivileges) {
		t.Fatalf("CheckAccess: %v, want ErrPrivileges", err)
	}
	for _, want := range []string{`credential source "pg"`, `admin role "weak_admin" lacks CREATEROLE (ALTER ROLE "weak_admin" CREATEROLE)`, `template role "no_such_template" does not exist`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// Unreachable is not a privilege problem.
	m2, err := NewManager(Config{Embedded: map[string]EmbeddedConfig{
		"pg": {AdminDSN: "postgres://x:y@127.0.0.1:1/postgres?connect_timeout=2", Template: "agent_readonly"},
	}}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.CheckAccess(t.Context(), []Ref{{}}); err == nil || errors.Is(err, ErrPrivileges) {
		t.Errorf("CheckAccess of an unreachable server: %v", err)
	}
}

// pgCtl runs pg_ctl action on pg's cluster as the cluster's owner.
func pgCtl(t *testing.T, pg *testenv.Postgres, action string) {
	t.Helper()
	args := []string{filepath.Join(testenv.PGBin(t), "pg_ctl"), "-D", pg.Dir, "-w", "-m", "fast",
		"-l", filepath.Join(filepath.Dir(pg.Dir), "server.log"), action}
	if os.Geteuid() == 0 {
		args = append([]string{"runuser", "-u", "postgres", "--"}, args...)
	}
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl %s: %v\n%s", action, err, out)
	}
}

// testRevokeRetried: a revocation that fails because the server is down
// is retried while the Manager runs, and the role is dropped once the
// server is back, with no restart of interlockd.
func testRevokeRetried(t *testing.T, pg *testenv.Postgres) {
	var mu sync.Mutex
	var failed, retried []RevokeFailure
	state := t.TempDir()
	m, err := NewManager(Config{Embedded: map[string]EmbeddedConfig{
		"embedded": {AdminDSN: pg.AdminDSN(), Template: "agent_readonly", TTL: time.Minute},
	}}, state,
		OnRevokeFailure(func(f RevokeFailure) { mu.Lock(); failed = append(failed, f); mu.Unlock() }),
		OnRevokeRetried(func(f RevokeFailure) { mu.Lock(); retried = append(retried, f); mu.Unlock() }))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l, err := m.Issue(t.Context(), Request{Target: "orders-db", Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	user := l.Credential().Username
	pgCtl(t, pg, "stop")
	restarted := false
	defer func() {
		if !restarted {
			pgCtl(t, pg, "start")
		}
	}()
	if err := l.Close(t.Context()); err == nil {
		t.Fatal("revocation with the server down succeeded")
	}
	mu.Lock()
	if len(failed) != 1 || failed[0].Source != "embedded" || failed[0].Handle != user || failed[0].Err == nil {
		t.Errorf("failures reported: %+v", failed)
	}
	mu.Unlock()
	if m.Pending() != 1 {
		t.Fatalf("%d revocations pending, want 1", m.Pending())
	}
	pgCtl(t, pg, "start")
	restarted = true
	if !roleExists(t, pg, user) {
		t.Fatal("role gone before the retry; the test proves nothing")
	}
	// The retry is reported after the journal says it is done: wait for
	// the report too. mu is not held past here, since the report is made
	// on the goroutine m.Close waits for.
	retriedN := func() int { mu.Lock(); defer mu.Unlock(); return len(retried) }
	deadline := time.Now().Add(20 * time.Second)
	for roleExists(t, pg, user) || m.Pending() != 0 || retriedN() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("role %s not dropped by a retry within 20s (pending %d)", user, m.Pending())
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	if len(retried) != 1 || retried[0].Handle != user {
		t.Errorf("retried: %+v", retried)
	}
	mu.Unlock()
	// The journal says it is revoked: nothing is left for the next start.
	m.Close()
	if orphans, err := readJournal(filepath.Join(state, journalName)); err != nil || len(orphans) != 0 {
		t.Errorf("journal after the retry: %v outstanding, err %v", orphans, err)
	}
}
