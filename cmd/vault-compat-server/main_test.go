package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestBinary runs the built server against a real PostgreSQL: issue a
// credential, make the server unreachable and back with signals, and check
// SIGTERM drops the live lease's role.
func TestBinary(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE reader NOLOGIN")
	dir := t.TempDir()
	bin := filepath.Join(dir, "vault-compat-server")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`
root_token: test-root
database:
  admin_dsn: %s
  roles:
    ro: {grants: [reader], default_ttl: 1m}
kv:
  app: {password: from-kv}
`, pg.AdminDSN())), 0o600)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cmd := exec.Command(bin, "-config", cfg, "-listen", addr)
	cmd.Stderr = os.Stderr
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	env := map[string]string{}
	sc := bufio.NewScanner(out)
	for len(env) < 2 && sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	if env["VAULT_ADDR"] != "http://"+addr || env["VAULT_TOKEN"] != "test-root" {
		t.Fatalf("server printed %v", env)
	}
	conf := vault.DefaultConfig()
	conf.Address = env["VAULT_ADDR"]
	conf.MaxRetries = 0
	client, err := vault.NewClient(conf)
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(env["VAULT_TOKEN"])
	ctx := t.Context()
	s, err := client.Logical().ReadWithContext(ctx, "database/creds/ro")
	if err != nil {
		t.Fatal(err)
	}
	user := s.Data["username"].(string)
	if kv, err := client.KVv2("secret").Get(ctx, "app"); err != nil || kv.Data["password"] != "from-kv" {
		t.Errorf("kv: %v %v", kv, err)
	}

	cmd.Process.Signal(syscall.SIGUSR1)
	waitFor(t, "server to stop", func() bool { _, err := client.Sys().HealthWithContext(ctx); return err != nil })
	cmd.Process.Signal(syscall.SIGUSR2)
	waitFor(t, "server to listen again", func() bool { _, err := client.Sys().HealthWithContext(ctx); return err == nil })

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if got := pg.Psql(t, "SELECT count(*) FROM pg_roles WHERE rolname = '"+user+"'"); got != "0" {
		t.Error("live lease's role survived SIGTERM")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
