package daemon_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const reusePolicy = `version: 1
identities:
  - name: ci-bot
  - name: nightly
targets:
  - name: appdb
    protocol: postgres
    addresses: [127.0.0.1]
    port: %d
    credential: {source: embedded, template: agent_rw}
rules:
  - name: no-ddl
    target: appdb
    sql: {class: ddl}
    action: deny
  - name: read
    target: appdb
    sql: {class: [read, session, transaction]}
    action: allow
`

// With credentials.reuse, a session's server connection serves the next
// session of the same identity (same backend, same role), reset and under
// the same policy; another identity never gets it; and once idle it is
// closed and its role revoked, as a session's would be at its end.
func TestServerConnectionsReusedPerIdentity(t *testing.T) {
	f := startPG(t, "  reuse: {appdb: {servers: 2, idle: 2s}}\n")
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(reusePolicy, f.pg.Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.d.Policy = pol
	f.d.Stop()
	f.d.Restart()

	psql := func(identity string, sql ...string) (string, error) {
		t.Helper()
		args := []string{"exec", "--identity", identity, "--", "psql", "-X", "-Atq", "-h", "127.0.0.1",
			"-p", strconv.Itoa(f.pg.Port), "-U", "agent", "-d", "postgres"}
		for _, s := range sql {
			args = append(args, "-c", s)
		}
		cmd := f.d.Command(t.Context(), args...)
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	const who = "SELECT pg_backend_pid() || ' ' || current_user || ' ' || current_setting('work_mem')"
	// A session's end is audited once its connection is parked (or
	// closed): the next session can find it from then on.
	closedSessions := func() int { return len(auditEvents(f.d, "connection_close")) }

	first, err := psql("ci-bot", "SET work_mem = '7MB'", who)
	if err != nil {
		t.Fatalf("psql: %v\n%s\n%s", err, first, f.d.Logs())
	}
	var pid, user string
	fmt.Sscan(first, &pid, &user)
	waitEvent(t, f.d, "connection_close", func(map[string]any) bool { return true })

	second, err := psql("ci-bot", who)
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, second)
	}
	if want := pid + " " + user + " 4MB"; second != want {
		t.Fatalf("second session of the identity: %q, want the first's backend and role, reset: %q", second, want)
	}
	firstSession := waitEvent(t, f.d, "credential_issued", func(m map[string]any) bool { return m["reused_from"] == nil })["conn"]
	waitEvent(t, f.d, "credential_issued", func(m map[string]any) bool {
		return m["reused_from"] == firstSession && m["username"] == user
	})
	for closedSessions() < 2 {
		time.Sleep(10 * time.Millisecond)
	}

	// The policy decides a resumed session's statements as any other's.
	if out, err := psql("ci-bot", "CREATE TABLE x (a int)"); err == nil || !strings.Contains(out, "no-ddl") {
		t.Fatalf("DDL on a resumed session: err=%v\n%s", err, out)
	}
	for closedSessions() < 3 {
		time.Sleep(10 * time.Millisecond)
	}

	other, err := psql("nightly", who)
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, other)
	}
	var otherPID, otherUser string
	fmt.Sscan(other, &otherPID, &otherUser)
	if otherPID == pid || otherUser == user {
		t.Fatalf("another identity got %q, the first identity's backend or role (%s)", other, first)
	}

	// Idle past 2s: the connections close and their roles are dropped.
	deadline := time.Now().Add(15 * time.Second)
	for {
		n := f.pg.Psql(t, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'interlock_%'")
		if n == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s session roles left 15 s after their sessions ended; log:\n%s", n, f.d.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitEvent(t, f.d, "credential_revoked", func(m map[string]any) bool { return m["username"] == user })
}
