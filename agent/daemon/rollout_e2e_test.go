package daemon_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/daemontest"
)

// modePolicy is pgPolicy's rules with the ci-bot identity in a given mode.
func modePolicy(port int, mode string) string {
	return strings.Replace(fmt.Sprintf(pgPolicy, port), "  - name: ci-bot\n", "  - name: ci-bot\n    mode: "+mode+"\n", 1)
}

func TestAuditModeThenEnforce(t *testing.T) {
	f := startPG(t)
	f.pg.Psql(t, "GRANT CREATE ON SCHEMA public TO agent_rw")
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(modePolicy(f.pg.Port, "audit")), 0o644); err != nil {
		t.Fatal(err)
	}
	f.d.Policy = pol
	f.d.Stop()
	f.d.Restart()
	if out, _, _ := f.d.CLI("status"); !strings.Contains(out, "ci-bot audit") {
		t.Fatalf("status does not show ci-bot audited:\n%s", out)
	}

	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-h", "127.0.0.1",
		"-p", fmt.Sprint(f.pg.Port), "-U", "agent", "-d", "postgres")
	out := &daemontest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	// Denied by no-ddl and by no-destructive, masked by read-masked: in
	// audit mode all run untouched.
	fmt.Fprintln(stdin, "CREATE TABLE audited (a int);")
	fmt.Fprintln(stdin, "SELECT email FROM customers WHERE id = 1;")
	fmt.Fprintln(stdin, "SELECT 'marker-1';")
	waitFor(t, "the audited statements", func() bool { return strings.Contains(out.String(), "marker-1") })
	if !strings.Contains(out.String(), "ada@example.com") {
		t.Fatalf("audit mode masked a value:\n%s", out.String())
	}
	if got := f.pg.Psql(t, "SELECT count(*) FROM pg_tables WHERE tablename = 'audited'"); got != "1" {
		t.Fatalf("audit mode blocked CREATE TABLE:\n%s", out.String())
	}
	waitEvent(t, f.d, "decision", func(m map[string]any) bool { return m["action"] == "would deny" && m["rule"] == "no-ddl" })
	waitEvent(t, f.d, "decision", func(m map[string]any) bool { return m["action"] == "would mask" && m["rule"] == "read-masked" })

	// Switch ci-bot to enforce; the same session's next statement is denied.
	if err := os.WriteFile(pol, []byte(modePolicy(f.pg.Port, "enforce")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := f.d.CLI("policy", "reload"); err != nil {
		t.Fatalf("policy reload: %v %s", err, stderr)
	}
	fmt.Fprintln(stdin, "CREATE TABLE enforced (a int);")
	fmt.Fprintln(stdin, "SELECT 'marker-2';")
	waitFor(t, "the enforced statements", func() bool { return strings.Contains(out.String(), "marker-2") })
	if !strings.Contains(out.String(), "no-ddl") {
		t.Fatalf("enforced CREATE TABLE was not denied:\n%s", out.String())
	}
	if got := f.pg.Psql(t, "SELECT count(*) FROM pg_tables WHERE tablename = 'enforced'"); got != "0" {
		t.Fatal("CREATE TABLE ran after the switch to enforce")
	}
	stdin.Close()
	cmd.Wait()

	// The recording says what audit mode let through.
	id := endedSessions(t, f.d, "ci-bot", 1)[0].ID
	transcript, _, err := f.d.CLI("replay", id)
	if err != nil || !strings.Contains(transcript, "would deny") {
		t.Fatalf("replay %s: %v\n%s", id, err, transcript)
	}
}

func TestPolicyReplayOfRecordedSession(t *testing.T) {
	f := startPG(t)
	for _, sql := range []string{
		"SELECT name FROM customers WHERE id = 2",
		"UPDATE customers SET name = 'Bob B.' WHERE id = 2",
		"INSERT INTO customers VALUES (3, 'Cy', 'cy@example.com', 'none')",
	} {
		if out, err := f.psql(t, sql); err != nil {
			t.Fatalf("%s: %v\n%s", sql, err, out)
		}
	}
	// A stricter policy: no writes at all.
	stricter := filepath.Join(t.TempDir(), "stricter.yaml")
	p := strings.Replace(fmt.Sprintf(pgPolicy, f.pg.Port), "    sql: {class: write}\n    action: allow", "    sql: {class: write}\n    action: deny", 1)
	if err := os.WriteFile(stricter, []byte(p), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, err := f.d.CLI("policy", "replay", "--policy", stricter, "--since", "1h")
	if err != nil {
		t.Fatalf("policy replay: %v\n%s%s", err, out, stderr)
	}
	for _, want := range []string{"UPDATE customers", "INSERT INTO customers"} {
		if !strings.Contains(out, want) {
			t.Errorf("replay does not list %q as newly denied:\n%s", want, out)
		}
	}
	if strings.Contains(out, "SELECT name FROM customers") {
		t.Errorf("replay lists an unchanged SELECT:\n%s", out)
	}
}
