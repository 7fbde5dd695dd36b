package credentials

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/jackc/pgx/v5"
)

// startPG starts a throwaway cluster with a template role agent_readonly
// that may read table orders, and a role agent_writer that may create
// tables in schema public.
func startPG(t *testing.T) *testenv.Postgres {
	t.Helper()
	pg := testenv.StartPostgres(t)
	pg.Psql(t, `CREATE TABLE orders (id int primary key, item text);
		INSERT INTO orders VALUES (1, 'book'), (2, 'lamp');
		CREATE ROLE agent_readonly NOLOGIN;
		GRANT SELECT ON orders TO agent_readonly;
		CREATE ROLE agent_writer NOLOGIN;
		GRANT CREATE ON SCHEMA public TO agent_writer;`)
	return pg
}

// TestWithPostgres runs every test that needs PostgreSQL as a subtest
// against one throwaway cluster: starting a cluster takes seconds, more on
// a loaded machine. Each subtest cleans up the roles it creates.
func TestWithPostgres(t *testing.T) {
	pg := startPG(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *testenv.Postgres)
	}{
		{"EmbeddedLeaseLifecycle", testEmbeddedLeaseLifecycle},
		{"EmbeddedRenewalOutlivesTTL", testEmbeddedRenewalOutlivesTTL},
		{"EmbeddedRevokeOwnedObjects", testEmbeddedRevokeOwnedObjects},
		{"EmbeddedBadTemplate", testEmbeddedBadTemplate},
		{"EmbeddedCreateroleAdmin", testEmbeddedCreateroleAdmin},
		{"AdminWithoutCreaterole", testAdminWithoutCreaterole},
		{"RevokeRetried", testRevokeRetried},
		{"RecoverAfterCrash", testRecoverAfterCrash},
		{"VaultDatabaseLease", testVaultDatabaseLease},
		{"VaultRenewalOutlivesTTL", testVaultRenewalOutlivesTTL},
		{"VaultUnreachable", testVaultUnreachable},
		{"VaultRenewalRetriesWhileDown", testVaultRenewalRetriesWhileDown},
		{"VaultRecoverAfterCrash", testVaultRecoverAfterCrash},
		{"VaultAppRole", testVaultAppRole},
		{"VaultCertLogin", testVaultCertLogin},
		{"VaultSSHCertificate", testVaultSSHCertificate},
		{"VaultKV", testVaultKV},
		{"PoolHandsOutEachCredentialOnce", testPoolHandsOutEachCredentialOnce},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, pg) })
	}
}

func embeddedManager(t *testing.T, pg *testenv.Postgres, stateDir string, pool map[string]int) *Manager {
	t.Helper()
	m, err := NewManager(Config{
		Pool: pool,
		Embedded: map[string]EmbeddedConfig{
			"embedded": {AdminDSN: pg.AdminDSN(), Template: "agent_readonly", TTL: time.Minute},
		},
	}, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func roleExists(t *testing.T, pg *testenv.Postgres, name string) bool {
	t.Helper()
	return pg.Psql(t, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", name)) == "1"
}

// login connects as cred and counts the orders it can read.
func login(ctx context.Context, pg *testenv.Postgres, cred Credential) (*pgx.Conn, int, error) {
	c, err := pgx.Connect(ctx, pg.DSN(cred.Username, cred.Password, "postgres"))
	if err != nil {
		return nil, 0, err
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil {
		c.Close(ctx)
		return nil, 0, err
	}
	return c, n, nil
}

func testEmbeddedLeaseLifecycle(t *testing.T, pg *testenv.Postgres) {
	m := embeddedManager(t, pg, t.TempDir(), nil)
	ctx := t.Context()
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := m.Issue(ctx, Request{Ref: Ref{Source: "embedded"}, Target: "orders-db", Session: "s1", Identity: "ci/deploy-bot"})
	if err != nil {
		t.Fatal(err)
	}
	cred := l.Credential()
	if !strings.HasPrefix(cred.Username, "interlock_ci_deploy_bot_") {
		t.Errorf("username %q does not name the identity", cred.Username)
	}
	if !roleExists(t, pg, cred.Username) {
		t.Fatalf("role %s does not exist while the lease is open", cred.Username)
	}
	if until := time.Until(cred.Expires); until < 50*time.Second || until > time.Minute {
		t.Errorf("expires in %v, want about the 1m TTL", until)
	}
	// The stored secret is a SCRAM verifier; the password never reached
	// the server.
	if got := pg.Psql(t, "SELECT rolpassword FROM pg_authid WHERE rolname = '"+cred.Username+"'"); !strings.HasPrefix(got, "SCRAM-SHA-256$") || strings.Contains(got, cred.Password) {
		t.Errorf("stored secret %q is not a SCRAM verifier", got)
	}
	conn, n, err := login(ctx, pg, cred)
	if err != nil {
		t.Fatalf("log in with the issued credential: %v", err)
	}
	if n != 2 {
		t.Errorf("read %d orders through the template role, want 2", n)
	}
	// The journal holds the role name, never the password.
	j, err := os.ReadFile(m.journal.f.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(j), cred.Username) || strings.Contains(string(j), cred.Password) {
		t.Errorf("journal %q: want the role name and no password", j)
	}

	// The session's context is typically done when it closes its lease.
	done, cancel := context.WithCancel(ctx)
	cancel()
	start := time.Now()
	if err := l.Close(done); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("revocation took %v", took)
	}
	if roleExists(t, pg, cred.Username) {
		t.Fatalf("role %s still exists after Close", cred.Username)
	}
	// The open session was terminated with its role.
	if err := conn.Ping(ctx); err == nil {
		t.Error("a session of the revoked role still works")
	}
	if _, _, err := login(ctx, pg, cred); err == nil {
		t.Error("logged in with a revoked credential")
	}
	if err := l.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func testEmbeddedRenewalOutlivesTTL(t *testing.T, pg *testenv.Postgres) {
	m := embeddedManager(t, pg, t.TempDir(), nil)
	ctx := t.Context()
	const ttl = 2 * time.Second
	l, err := m.Issue(ctx, Request{Ref: Ref{TTL: ttl}, Target: "orders-db", Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx)
	first := l.Credential().Expires
	time.Sleep(3 * ttl)
	cred := l.Credential()
	if !cred.Expires.After(first.Add(ttl)) {
		t.Errorf("expiry moved from %v to %v only", first, cred.Expires)
	}
	conn, _, err := login(ctx, pg, cred)
	if err != nil {
		t.Fatalf("log in after 3x TTL: %v", err)
	}
	conn.Close(ctx)
	valid := pg.Psql(t, "SELECT rolvaliduntil > now() FROM pg_roles WHERE rolname = '"+cred.Username+"'")
	if valid != "t" {
		t.Errorf("VALID UNTIL is in the past after renewals")
	}
}

func testEmbeddedRevokeOwnedObjects(t *testing.T, pg *testenv.Postgres) {
	pg.Psql(t, "CREATE DATABASE other")
	pg.Psql(t, "GRANT CREATE ON DATABASE other TO agent_writer")
	m := embeddedManager(t, pg, t.TempDir(), nil)
	ctx := t.Context()
	l, err := m.Issue(ctx, Request{Ref: Ref{Template: "agent_writer"}, Target: "orders-db", Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	cred := l.Credential()
	for _, db := range []string{"postgres", "other"} {
		c, err := pgx.Connect(ctx, pg.DSN(cred.Username, cred.Password, db))
		if err != nil {
			t.Fatal(err)
		}
		stmt := "CREATE TABLE scratch (x int)"
		if db == "other" {
			stmt = "CREATE SCHEMA scratch_schema"
		}
		if _, err := c.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", db, err)
		}
		c.Close(ctx)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if roleExists(t, pg, cred.Username) {
		t.Fatal("role survived revocation")
	}
	if owner := pg.Psql(t, "SELECT tableowner FROM pg_tables WHERE tablename = 'scratch'"); owner != "postgres" {
		t.Errorf("scratch owned by %q after revocation, want postgres", owner)
	}
}

func testEmbeddedBadTemplate(t *testing.T, pg *testenv.Postgres) {
	m := embeddedManager(t, pg, t.TempDir(), nil)
	_, err := m.Issue(t.Context(), Request{Ref: Ref{Template: "no_such_role"}, Target: "orders-db"})
	if !errors.Is(err, ErrNotIssued) {
		t.Fatalf("Issue with a missing template: %v, want ErrNotIssued", err)
	}
	if got := pg.Psql(t, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'interlock_%'"); got != "0" {
		t.Errorf("%s roles left behind by a failed issue", got)
	}
	if m.Outstanding() != 0 {
		t.Errorf("outstanding leases after failed issue")
	}
}

// TestRecoverAfterCrash issues a credential in a child process, kills it
// with SIGKILL and checks that a new Manager on the same state dir drops the
// orphaned role.
func testRecoverAfterCrash(t *testing.T, pg *testenv.Postgres) {
	cfg := Config{Embedded: map[string]EmbeddedConfig{
		"embedded": {AdminDSN: pg.AdminDSN(), Template: "agent_readonly"},
	}}
	state := t.TempDir()
	user := issueAndCrash(t, cfg, state, Ref{})
	if !roleExists(t, pg, user) {
		t.Fatalf("role %s missing before the crash", user)
	}
	m, err := NewManager(cfg, state)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if n := m.Outstanding(); n != 1 {
		t.Fatalf("%d outstanding leases after the crash, want 1", n)
	}
	if err := m.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	if roleExists(t, pg, user) {
		t.Fatalf("orphaned role %s survived Recover", user)
	}
	if n := m.Outstanding(); n != 0 {
		t.Errorf("%d outstanding after Recover", n)
	}
	m.Close()
	// A third start finds nothing left to do.
	if orphans, err := readJournal(filepath.Join(state, journalName)); err != nil || len(orphans) != 0 {
		t.Errorf("journal after recovery: %v outstanding, err %v", orphans, err)
	}
}

// issueAndCrash runs TestCrashHelper in a child process that builds a
// Manager from cfg on state, issues ref's credential, reports its username
// and is then killed with SIGKILL.
func issueAndCrash(t *testing.T, cfg Config, state string, ref Ref) string {
	t.Helper()
	spec, err := json.Marshal(crashSpec{Config: cfg, State: state, Ref: ref})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), "CRED_CRASH_HELPER="+string(spec))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var user string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "ISSUED "); ok {
			user = u
			break
		}
	}
	if user == "" {
		t.Fatal("helper did not issue a credential")
	}
	cmd.Process.Signal(os.Kill)
	cmd.Wait()
	return user
}

type crashSpec struct {
	Config Config
	State  string
	Ref    Ref
}

// TestCrashHelper is the child of issueAndCrash; it does nothing unless
// started by it.
func TestCrashHelper(t *testing.T) {
	env := os.Getenv("CRED_CRASH_HELPER")
	if env == "" {
		return
	}
	var spec crashSpec
	if err := json.Unmarshal([]byte(env), &spec); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(spec.Config, spec.State)
	if err != nil {
		t.Fatal(err)
	}
	l, err := m.Issue(t.Context(), Request{Ref: spec.Ref, Target: "orders-db", Session: "doomed"})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("ISSUED %s\n", l.Credential().Username)
	time.Sleep(time.Minute) // killed long before
}
