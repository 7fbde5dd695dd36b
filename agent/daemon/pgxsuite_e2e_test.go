package daemon_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// pgxSuitePackages are the packages of pgx (the version in go.mod) whose
// own tests run through interlockd.
var pgxSuitePackages = []string{"", "pgconn", "pgxpool", "stdlib", "pgtype"}

const pgxSuitePolicy = `version: 1
identities:
  - name: pgx
targets:
  - name: appdb
    protocol: postgres
    addresses: [127.0.0.1]
    port: %d
    credential: {source: pgx}
rules:
  - name: everything
    identity: pgx
    target: appdb
    sql: {class: [read, session, transaction, write, ddl, dcl, admin]}
    action: allow
  - name: loopback
    identity: pgx
    protocol: tcp
    action: allow
`

// TestPgxSuiteThroughInterlock runs pgx's own test suite, its test binaries
// built from the module cache, as an unprivileged agent through interlockd
// against a cluster of its own, under a policy that allows every statement
// class: a client's suite that passes against the server must pass through
// the proxy. The credential is a static role named like the agent's user,
// because the suite checks current_user and signals its own other sessions,
// which per-session roles would refuse for reasons of their own. The tests
// a transparent proxy cannot pass are named, with the reason, in the
// Makefile's PGX_SUITE_SKIP, which `make test` passes here.
func TestPgxSuiteThroughInterlock(t *testing.T) {
	testenv.Privileged(t)
	skip, ok := os.LookupEnv("PGX_SUITE_SKIP")
	if !ok {
		t.Fatal("PGX_SUITE_SKIP is not set: run through make test, whose Makefile names the excluded pgx tests and why")
	}
	pg := testenv.StartPostgres(t)
	// pgx's testsetup/postgresql_setup.sql, the parts its suite needs
	// without TLS: extensions and a domain its type tests use.
	pg.Psql(t, `CREATE EXTENSION hstore; CREATE EXTENSION ltree; CREATE DOMAIN uint64 AS numeric(20,0);
		CREATE ROLE agent LOGIN SUPERUSER PASSWORD 'pgx-suite';`)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(pgxSuitePolicy, pg.Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "interlockd.yaml")
	// pgx's concurrency tests open more sessions at once than the default
	// per-identity cap (32).
	if err := os.WriteFile(cfg, []byte("credentials:\n  static:\n    pgx: {username: agent, password: pgx-suite}\nlimits: {sessions: 200}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	bins, err := os.MkdirTemp("", "interlock-pgx-suite-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(bins) })
	os.Chmod(bins, 0o755)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	dsn := fmt.Sprintf("postgres://agent@127.0.0.1:%d/postgres?sslmode=disable", pg.Port)
	failLine := regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)
	for _, pkg := range pgxSuitePackages {
		path := strings.TrimSuffix("github.com/jackc/pgx/v5/"+pkg, "/")
		name := "pgx"
		if pkg != "" {
			name = pkg
		}
		t.Run(name, func(t *testing.T) {
			bin := filepath.Join(bins, name+".test")
			build := exec.Command("go", "test", "-c", "-o", bin, path)
			build.Dir = root
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("build %s tests: %v\n%s", path, err, out)
			}
			src, err := exec.Command("go", "list", "-f", "{{.Dir}}", path).Output()
			if err != nil {
				t.Fatalf("go list %s: %v", path, err)
			}
			// pgx's tests set up their own TLS and root certificates.
			cmd := d.Command(t.Context(), "exec", "--identity", "pgx", "--no-ca-env", "--",
				"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
				bin, "-test.count=1", "-test.timeout=20m", "-test.skip", skip)
			cmd.Dir = strings.TrimSpace(string(src))
			cmd.Env = append(os.Environ(), "PGX_TEST_DATABASE="+dsn, "HOME=/tmp")
			out, err := cmd.CombinedOutput()
			if err != nil {
				var failed []string
				for _, m := range failLine.FindAllStringSubmatch(string(out), -1) {
					failed = append(failed, m[1])
				}
				t.Fatalf("pgx %s tests through interlockd: %v; failed: %s\n%s", name, err, strings.Join(failed, " "), tail(string(out), 8000))
			}
		})
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
