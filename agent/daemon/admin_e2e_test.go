package daemon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// readmeAdmin creates the embedded issuer's admin role as the README's
// "Just-in-time credentials" section says: LOGIN CREATEROLE, not a
// superuser, and on PostgreSQL 16 and later ADMIN OPTION on each template.
// It returns a DSN file for admin_dsn_file.
func readmeAdmin(t *testing.T, pg *testenv.Postgres, dir string, templates ...string) string {
	t.Helper()
	pg.Psql(t, "CREATE ROLE interlock_admin LOGIN CREATEROLE PASSWORD 'admin-pw'")
	major, err := strconv.Atoi(pg.Psql(t, "SELECT current_setting('server_version_num')::int / 10000"))
	if err != nil {
		t.Fatal(err)
	}
	if major >= 16 {
		for _, tpl := range templates {
			pg.Psql(t, fmt.Sprintf("GRANT %s TO interlock_admin WITH ADMIN OPTION", tpl))
		}
	}
	file := filepath.Join(dir, "pg-admin.dsn")
	dsn := fmt.Sprintf("host=127.0.0.1 port=%d user=interlock_admin password=admin-pw dbname=postgres sslmode=disable\n", pg.Port)
	if err := os.WriteFile(file, []byte(dsn), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestCreateroleAdminDropsSessionRoles runs the README's setup on the
// installed PostgreSQL: a non-superuser CREATEROLE admin, the template in
// the embedded source. Each session's role is gone from pg_roles within a
// second of the session's end, and the metrics say which source issued,
// that no revocation failed, and what the kernel denied.
func TestCreateroleAdminDropsSessionRoles(t *testing.T) {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pg.Psql(t, `CREATE ROLE agent_readonly NOLOGIN;
		CREATE TABLE orders (id int PRIMARY KEY);
		INSERT INTO orders VALUES (1), (2);
		GRANT SELECT ON orders TO agent_readonly;`)
	dir := t.TempDir()
	dsnFile := readmeAdmin(t, pg, dir, "agent_readonly")
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities:
  - name: ci-bot
    intercept:
      - {to: [127.0.0.3/32], ports: "1-65535", action: deny}
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1], port: %d}
rules:
  - {name: read, identity: ci-bot, target: appdb, sql: {class: [read, session]}, action: allow}
`, pg.Port)), 0o644)
	metricsPort := testenv.FreePort(t)
	cfg := filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`metrics_listen: 127.0.0.1:%d
credentials:
  embedded:
    pg:
      admin_dsn_file: %s
      template: agent_readonly
      ttl: 15m
`, metricsPort, dsnFile)), 0o600)
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})

	psql := func(host string) (string, error) {
		cmd := d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
			"psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres",
			"-c", "SELECT current_user, count(*) FROM orders")
		cmd.Env = append(os.Environ(), "HOME=/tmp", "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	const sessions = 3
	for range sessions {
		out, err := psql("127.0.0.1")
		user, count, _ := strings.Cut(out, "|")
		if err != nil || count != "2" || !strings.HasPrefix(user, "interlock_ci_bot_") {
			t.Fatalf("session: %v\n%s\n%s", err, out, d.Logs())
		}
		deadline := time.Now().Add(time.Second)
		for pg.Psql(t, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", user)) != "0" {
			if time.Now().After(deadline) {
				t.Fatalf("role %s still in pg_roles a second after its session ended\n%s", user, d.Logs())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if out, err := psql("127.0.0.3"); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("connect to a denied address: %v\n%s", err, out)
	}
	if strings.Contains(d.Logs(), "not revoked") {
		t.Errorf("a revocation failed:\n%s", d.Logs())
	}

	var body string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		body = scrapeMetrics(t, metricsPort)
		// The deny event reaches the daemon through a ring buffer, a
		// moment after the agent saw EPERM.
		if strings.Contains(body, "interlock_kernel_denials_total") || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []string{
		fmt.Sprintf(`interlock_credential_issue_seconds_count{outcome="ok",source="pg"} %d`, sessions),
		`interlock_kernel_denials_total{reason="tcp-rule"} 1`,
		`interlock_build_info{commit="`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, `source=""`) || strings.Contains(body, "interlock_credential_revoke_failures_total{") {
		t.Errorf("metrics:\n%s", body)
	}

	// A reload is checked like a start: a template that does not exist is
	// refused and the policy in force stays.
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1], port: %d, credential: {source: pg, template: no_such_role}}
`, pg.Port)), 0o644)
	if _, stderr, err := d.CLI("policy", "reload"); err == nil || !strings.Contains(stderr, `template role "no_such_role" does not exist`) {
		t.Errorf("reload with a missing template role: %v\n%s", err, stderr)
	}
	if out, err := psql("127.0.0.1"); err != nil || !strings.HasSuffix(out, "|2") {
		t.Errorf("session after the refused reload: %v\n%s", err, out)
	}
}

// TestCredentialConfigRefusedAtStart: interlockd refuses to start, before
// arming anything, when sessions could never get a credential or their
// roles could never be dropped, and says what is missing.
func TestCredentialConfigRefusedAtStart(t *testing.T) {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE agent_readonly NOLOGIN; CREATE ROLE weak_admin LOGIN PASSWORD 'weak'")
	bin := daemontest.Binaries(t)
	mount, err := datapath.CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, source string
		want         []string
	}{
		{"admin without CREATEROLE", fmt.Sprintf("{admin_dsn: %q, template: agent_readonly}", pg.DSN("weak_admin", "weak", "postgres")),
			[]string{`credential source "pg"`, `admin role "weak_admin" lacks CREATEROLE (ALTER ROLE "weak_admin" CREATEROLE)`}},
		{"missing template", fmt.Sprintf("{admin_dsn: %q}", pg.AdminDSN()),
			[]string{`policy.yaml:4:5: target "appdb": credential source "pg": no template role`, "credentials.embedded.pg.template"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pol := filepath.Join(dir, "policy.yaml")
			os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1], port: %d}
`, pg.Port)), 0o644)
			cfg := filepath.Join(dir, "interlockd.yaml")
			os.WriteFile(cfg, []byte("credentials:\n  embedded:\n    pg: "+tc.source+"\n"), 0o600)
			root := filepath.Join(mount, fmt.Sprintf("interlock-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
			if err := os.Mkdir(root, 0o755); err != nil {
				t.Fatal(err)
			}
			defer os.Remove(root)
			bpffs := filepath.Join(dir, "bpffs")
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(bin, "interlockd"), "--config", cfg, "--policy", pol,
				"--cgroup-root", root, "--bpffs", bpffs, "--socket", filepath.Join(dir, "interlock.sock"),
				"--state-dir", filepath.Join(dir, "state"), "--listen-port", strconv.Itoa(testenv.FreePort(t)))
			out, err := cmd.CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("interlockd started (or hung): %v\n%s", err, out)
			}
			for _, want := range tc.want {
				if !strings.Contains(string(out), want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if _, err := os.Stat(bpffs); err == nil {
				t.Errorf("interlockd created %s before refusing", bpffs)
			}
		})
	}
}

// pgCtl runs pg_ctl action on pg's cluster as its owner.
func pgCtl(t *testing.T, pg *testenv.Postgres, action string) {
	t.Helper()
	out, err := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(testenv.PGBin(t), "pg_ctl"),
		"-D", pg.Dir, "-w", "-m", "fast", "-l", filepath.Join(filepath.Dir(pg.Dir), "server.log"), action).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_ctl %s: %v\n%s", action, err, out)
	}
}

// TestRevocationRetriedWhileRunning: the server goes down under an open
// session, so the session ends and its role cannot be dropped. interlockd
// logs that at error level, counts it, and drops the role once the server
// is back, without a restart.
func TestRevocationRetriedWhileRunning(t *testing.T) {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE agent_readonly NOLOGIN")
	dir := t.TempDir()
	dsnFile := readmeAdmin(t, pg, dir, "agent_readonly")
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1], port: %d}
rules:
  - {name: read, identity: ci-bot, target: appdb, sql: {class: [read, session]}, action: allow}
`, pg.Port)), 0o644)
	metricsPort := testenv.FreePort(t)
	cfg := filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("metrics_listen: 127.0.0.1:%d\ncredentials:\n  embedded:\n    pg: {admin_dsn_file: %s, template: agent_readonly}\n",
		metricsPort, dsnFile)), 0o600)
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})

	cmd := d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"psql", "-X", "-At", "-h", "127.0.0.1", "-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres", "-c", "SELECT 1", "-c", `\! sleep 60`)
	cmd.Env = append(os.Environ(), "HOME=/tmp")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var user string
	waitFor(t, "the session's role", func() bool {
		user = pg.Psql(t, `SELECT usename FROM pg_stat_activity WHERE usename LIKE 'interlock\_ci\_bot\_%'`)
		return user != ""
	})
	pgCtl(t, pg, "stop")
	restarted := false
	defer func() {
		if !restarted {
			pgCtl(t, pg, "start")
		}
	}()
	waitFor(t, "the failed revocation's log line", func() bool {
		return strings.Contains(d.Logs(), `"level":"error"`) && strings.Contains(d.Logs(), "credential not revoked; retrying")
	})
	body := scrapeMetrics(t, metricsPort)
	if !strings.Contains(body, `interlock_credential_revoke_failures_total{source="pg"}`) {
		t.Errorf("no revoke failure counted:\n%s", body)
	}
	pgCtl(t, pg, "start")
	restarted = true
	waitFor(t, "the retry to drop "+user, func() bool {
		return pg.Psql(t, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", user)) == "0"
	})
	waitFor(t, "the retry's log line", func() bool { return strings.Contains(d.Logs(), "credential revoked on retry") })
}
