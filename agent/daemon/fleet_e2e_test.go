package daemon_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestFleetSharedStore runs two interlockd on one machine (own sockets,
// state, cgroups, pins) sharing one PostgreSQL store: a statement held on
// host-a is listed and approved through host-b's CLI, and each host keeps
// a verifiable audit chain of its own.
func TestFleetSharedStore(t *testing.T) {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE DATABASE fleet")
	pg.Psql(t, "CREATE ROLE agent_rw NOLOGIN; GRANT CREATE ON SCHEMA public TO agent_rw")
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(approvePolicy, pg.Port)), 0o644)
	start := func(host string) *daemontest.Daemon {
		cfg := filepath.Join(dir, host+".yaml")
		os.WriteFile(cfg, []byte(fmt.Sprintf("host: %s\nstore: %q\ncredentials:\n  embedded:\n    embedded: {admin_dsn: %q}\n",
			host, pg.DSN(pg.Superuser, pg.Password, "fleet"), pg.AdminDSN())), 0o600)
		return daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	}
	a, b := start("host-a"), start("host-b")

	done := make(chan string, 1)
	go func() {
		cmd := a.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
			"psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres",
			"-c", "CREATE TABLE fleet_reviewed (a int)")
		cmd.Env = append(os.Environ(), "HOME=/tmp")
		out, err := cmd.CombinedOutput()
		done <- fmt.Sprintf("%v\n%s", err, out)
	}()
	var held []struct{ ID, Host, State string }
	for deadline := time.Now().Add(20 * time.Second); len(held) == 0; time.Sleep(100 * time.Millisecond) {
		out, stderr, err := b.CLI("approvals", "--json")
		if err != nil {
			t.Fatalf("approvals on host-b: %v %s", err, stderr)
		}
		json.Unmarshal([]byte(out), &held)
		if time.Now().After(deadline) {
			t.Fatalf("host-b never listed host-a's held statement\n%s", a.Logs())
		}
	}
	if held[0].Host != "host-a" {
		t.Fatalf("held request: %+v, want host-a's", held[0])
	}
	if out, stderr, err := b.CLI("approve", held[0].ID, "--comment", "from host-b"); err != nil {
		t.Fatalf("approve on host-b: %v\n%s%s", err, out, stderr)
	}
	select {
	case res := <-done:
		if !strings.HasPrefix(res, "<nil>") {
			t.Fatalf("held psql on host-a: %s", res)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("host-a did not release the statement approved on host-b")
	}
	if got := pg.Psql(t, "SELECT count(*) FROM pg_tables WHERE tablename = 'fleet_reviewed'"); got != "1" {
		t.Fatal("the approved statement did not run")
	}
	out, stderr, err := a.CLI("audit", "verify")
	if err != nil || !strings.Contains(out, "host-a: ok") || !strings.Contains(out, "host-b: ok") {
		t.Fatalf("audit verify: %v\n%s%s", err, out, stderr)
	}
}
