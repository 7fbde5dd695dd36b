package daemon_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestAuditVerifyOffline: `interlock audit verify` prints each chain's head
// hash, and verifies the store or an export file with interlockd down,
// reaching the same head.
func TestAuditVerifyOffline(t *testing.T) {
	f := startPG(t)
	if out, err := f.psql(t, "DROP TABLE customers"); err == nil {
		t.Fatalf("DROP TABLE was not denied:\n%s", out)
	}
	// psql is gone once its exec returns, but its session's end (the
	// credential's revocation, then the close) is recorded after: the
	// chain verified online must have it, as the one verified offline will.
	waitEvent(t, f.d, "connection_close", func(map[string]any) bool { return true })
	online, errOut, err := f.d.CLI("audit", "verify")
	head := regexp.MustCompile(`: ok, \d+ records, head seq \d+ hash [0-9a-f]{64}`).FindString(online)
	if err != nil || head == "" {
		t.Fatalf("audit verify through the daemon: %v\n%s%s", err, online, errOut)
	}
	export, _, err := f.d.CLI("audit", "export")
	if err != nil {
		t.Fatal(err)
	}
	exportFile := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(exportFile, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without --policy, explain decides with the running daemon's policy
	// (the embedded default knows no ci-bot).
	out, errOut, err := f.d.CLI("policy", "explain", "--identity", "ci-bot", "--target", "appdb", "--sql", "DROP TABLE customers")
	if err != nil || !strings.Contains(out, "policy of the running interlockd: "+f.d.Policy) || !strings.Contains(out, "no-destructive") {
		t.Errorf("policy explain without --policy: %v\n%s%s", err, out, errOut)
	}
	f.d.Stop()
	for _, args := range [][]string{
		{"audit", "verify", "--store", filepath.Join(f.d.StateDir, "interlock.db")},
		{"audit", "verify", "--export", exportFile},
	} {
		out, errOut, err := f.d.CLI(args...)
		if err != nil || !strings.Contains(out, head) {
			t.Errorf("%v with interlockd down: %v\n%s%s\nwant %q as online", args, err, out, errOut, head)
		}
	}
	tampered := strings.Replace(export, `"rule":"no-destructive"`, `"rule":"allow-all"`, 1)
	if tampered == export {
		t.Fatalf("no decision to tamper with in the export:\n%s", export)
	}
	os.WriteFile(exportFile, []byte(tampered), 0o600)
	if out, _, err := f.d.CLI("audit", "verify", "--export", exportFile); err == nil || !strings.Contains(out, "BROKEN") {
		t.Errorf("tampered export verified: %v\n%s", err, out)
	}
}
