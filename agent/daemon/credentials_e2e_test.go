package daemon_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// sessionRoles lists the roles the embedded issuer created.
func sessionRoles(t *testing.T, pg *testenv.Postgres) []string {
	out := pg.Psql(t, "SELECT rolname FROM pg_roles WHERE rolname LIKE 'interlock\\_%' ORDER BY 1")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// execPIDs returns the processes of the daemon's exec cgroups.
func execPIDs(d *daemontest.Daemon) []int {
	var pids []int
	dirs, _ := filepath.Glob(filepath.Join(d.Root, "interlock-exec", "*", "cgroup.procs"))
	for _, p := range dirs {
		data, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(f); err == nil {
				pids = append(pids, n)
			}
		}
	}
	return pids
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCredentialNeverReachesAgent uses a static credential whose password
// the test knows, and looks for it everywhere the agent could: its
// environment, its memory, and the traffic it exchanged (the recording).
func TestCredentialNeverReachesAgent(t *testing.T) {
	testenv.Privileged(t)
	const password = "Static-Upstream-Secret-7f3a9c"
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE legacy_app LOGIN PASSWORD '"+password+"'; GRANT pg_read_all_data TO legacy_app")
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1], port: %d, credential: {source: legacy}}
rules:
  - {name: read, identity: ci-bot, target: appdb, sql: {class: [read, session]}, action: allow}
`, pg.Port)), 0o644)
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte(password+"\n"), 0o600)
	cfg := filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("credentials:\n  static:\n    legacy: {username: legacy_app, password_file: %s}\n", pwFile)), 0o600)
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})

	// psql reads its statements from a pipe, so its session stays open
	// until the test closes it.
	cmd := d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-h", "127.0.0.1",
		"-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, "SELECT current_user;")
	var pids []int
	waitFor(t, "the agent's session", func() bool {
		pids = execPIDs(d)
		return len(pids) > 0 && pg.Psql(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'legacy_app'") == "1"
	})
	for _, pid := range pids {
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if bytes.Contains(env, []byte(password)) {
			t.Errorf("password in the environment of agent pid %d", pid)
		}
		if n, found := scanMemory(pid, []byte(password)); found {
			t.Errorf("password in the memory of agent pid %d", pid)
		} else if n == 0 {
			t.Errorf("could not read any memory of agent pid %d", pid)
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil || !strings.HasPrefix(out.String(), "legacy_app") {
		t.Fatalf("psql with the static credential: %v\n%s", err, out.String())
	}
	// The recordings hold every byte the agent sent and received.
	recs := d.Recordings(t)
	if len(recs) == 0 {
		t.Fatal("no recording written")
	}
	for id, data := range recs {
		if bytes.Contains(data, []byte(password)) {
			t.Errorf("password in the agent's traffic (session %s)", id)
		}
	}
}

// scanMemory reads every readable mapping of pid and reports how many bytes
// it read and whether needle was among them.
func scanMemory(pid int, needle []byte) (int, bool) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, false
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, false
	}
	defer mem.Close()
	total := 0
	for _, line := range strings.Split(string(maps), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[1][0] != 'r' {
			continue
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err != nil || hi-lo > 1<<30 {
			continue
		}
		buf := make([]byte, hi-lo)
		n, _ := mem.ReadAt(buf, int64(lo))
		total += n
		if bytes.Contains(buf[:n], needle) {
			return total, true
		}
	}
	return total, false
}

// holdSession starts psql under `interlock exec` as ci-bot, sends one
// statement and keeps the session open until the test ends, and waits
// until the session's role exists.
func (f *pgFixture) holdSession(t *testing.T) {
	t.Helper()
	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-h", "127.0.0.1",
		"-p", strconv.Itoa(f.pg.Port), "-U", "agent", "-d", "postgres")
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	fmt.Fprintln(stdin, "SELECT 1;")
	waitFor(t, "the session's role", func() bool { return len(sessionRoles(t, f.pg)) == 1 })
}

func TestOrphanedRoleRevokedAfterCrash(t *testing.T) {
	f := startPG(t)
	f.holdSession(t)
	role := sessionRoles(t, f.pg)[0]
	f.d.Kill()
	if got := sessionRoles(t, f.pg); len(got) != 1 {
		t.Fatalf("roles after SIGKILL: %v (the daemon had no chance to drop %s)", got, role)
	}
	f.d.Restart()
	// Recovery runs before the daemon serves, so the role is gone by now.
	if got := sessionRoles(t, f.pg); len(got) != 0 {
		t.Fatalf("orphaned role %v survived the restart\n%s", got, f.d.Logs())
	}
}

func TestSessionOutlivesCredentialTTL(t *testing.T) {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE agent_rw NOLOGIN")
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1], port: %d, credential: {source: embedded, template: agent_rw}}
rules:
  - {name: read, identity: ci-bot, target: appdb, sql: {class: [read, session]}, action: allow}
`, pg.Port)), 0o644)
	cfg := filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("credentials:\n  embedded:\n    embedded: {admin_dsn: %q, ttl: 2s}\n", pg.AdminDSN())), 0o600)
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	// Three TTLs long; the second statement runs after the first VALID
	// UNTIL has passed, so it works only if the credential was renewed.
	cmd := d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
		"-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres",
		"-c", "SELECT 1", "-c", `\! sleep 6`, "-c", "SELECT rolvaliduntil > now() FROM pg_roles WHERE rolname = current_user")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "t") {
		t.Fatalf("session past its TTL: %v\n%s\n%s", err, out, d.Logs())
	}
}

// TestVaultUnreachable runs interlockd against the in-tree
// Vault-API-compatible test server: sessions get database/creds leases;
// with the server stopped a new session gets a clear PostgreSQL error while
// the one already open goes on.
func TestVaultUnreachable(t *testing.T) {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE agent_ro NOLOGIN")
	vault, err := vaultcompat.New(vaultcompat.Config{Database: &vaultcompat.Database{
		AdminDSN: pg.AdminDSN(),
		Roles:    map[string]vaultcompat.DatabaseRole{"readonly": {Grants: []string{"agent_ro"}, DefaultTTL: time.Minute}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := vault.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vault.Close() })
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1], port: %d, credential: {source: vault, kind: database, role: readonly}}
rules:
  - {name: read, identity: ci-bot, target: appdb, sql: {class: [read, session]}, action: allow}
`, pg.Port)), 0o644)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte(vault.RootToken()), 0o600)
	cfg := filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("credentials:\n  vault:\n    address: %s\n    timeout: 3s\n    auth: {method: token, token_file: %s}\n", vault.URL(), tokenFile)), 0o600)
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})

	psql := func() (*daemontest.Buffer, func(string), func() error) {
		cmd := d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-h", "127.0.0.1",
			"-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres")
		out := &daemontest.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
		stdin, _ := cmd.StdinPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return out, func(sql string) { fmt.Fprintln(stdin, sql) }, func() error { stdin.Close(); return cmd.Wait() }
	}
	openOut, send, closeOpen := psql()
	send("SELECT 'first ' || current_user;")
	waitFor(t, "the open session's first answer", func() bool { return strings.Contains(openOut.String(), "first ") })
	if len(vault.Leases()) != 1 {
		t.Fatalf("leases while a session is open: %v", vault.Leases())
	}

	vault.Stop()
	out, err := d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-h", "127.0.0.1",
		"-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres", "-c", "SELECT 1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "could not be issued") {
		t.Fatalf("new session with Vault down: err=%v\n%s", err, out)
	}
	send("SELECT 'still ' || 'open';")
	if err := closeOpen(); err != nil || !strings.Contains(openOut.String(), "still open") {
		t.Fatalf("open session with Vault down: %v\n%s", err, openOut.String())
	}
}

// Without any credential source, a PostgreSQL target's sessions are refused
// with 08004 saying so (asking again will not help), and the daemon's start
// names the target in a warning.
func TestPostgresWithoutCredentialSource(t *testing.T) {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(pgPolicy, pg.Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol})
	warned := false
	for _, line := range strings.Split(d.Logs(), "\n") {
		warned = warned || strings.Contains(line, `"target":"appdb"`) && strings.Contains(line, `"message":"no credential source is configured`)
	}
	if !warned {
		t.Error("no warning naming the target at start")
	}
	out, err := d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-h", "127.0.0.1",
		"-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres", "-c", "SELECT 1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `no credential source is configured for target "appdb"`) ||
		strings.Contains(string(out), "try again later") {
		t.Fatalf("psql without a credential source: err=%v\n%s", err, out)
	}
}
