package daemon_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

const pgPolicy = `version: 1
identities:
  - name: ci-bot
targets:
  - name: appdb
    protocol: postgres
    addresses: [127.0.0.1]
    port: %d
    credential: {source: embedded, template: agent_rw}
masks:
  - name: pii
    columns: {email: redact}
    detectors: {card: partial}
rules:
  - name: no-destructive
    identity: ci-bot
    target: appdb
    sql: {destructive: true}
    action: deny
    message: destructive statements are denied
  - name: no-ddl
    identity: ci-bot
    target: appdb
    sql: {class: ddl}
    action: deny
    message: schema changes are not for agents
  - name: read-masked
    identity: ci-bot
    target: appdb
    sql: {class: [read, session, transaction]}
    action: mask
    mask: pii
  - name: write
    identity: ci-bot
    target: appdb
    sql: {class: write}
    action: allow
`

type pgFixture struct {
	*fixture
	pg          *testenv.Postgres
	metricsPort int
}

// startPG starts PostgreSQL with a customers table and an agent_rw
// template role, and interlockd with the embedded issuer pointed at it;
// extraConfig is added to interlockd.yaml.
func startPG(t *testing.T, extraConfig ...string) *pgFixture {
	testenv.Privileged(t)
	pg := testenv.StartPostgres(t)
	pg.Psql(t, `CREATE ROLE agent_rw NOLOGIN;
		CREATE TABLE customers (id int PRIMARY KEY, name text, email text, card text);
		INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com', '4111 1111 1111 1111'), (2, 'Bob', 'bob@example.com', 'none');
		GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO agent_rw;`)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(pgPolicy, pg.Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "interlockd.yaml")
	metricsPort := testenv.FreePort(t)
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`metrics_listen: 127.0.0.1:%d
credentials:
  embedded:
    embedded:
      admin_dsn: %q
      ttl: 1m
%s`, metricsPort, pg.AdminDSN(), strings.Join(extraConfig, ""))), 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	return &pgFixture{fixture: &fixture{d: d}, pg: pg, metricsPort: metricsPort}
}

// psql runs psql under `interlock exec` as a legacy agent would: no
// password, any user name.
func (f *pgFixture) psql(t *testing.T, sql string, extra ...string) (string, error) {
	t.Helper()
	args := []string{"exec", "--identity", "ci-bot", "--", "psql", "-X", "-At", "-h", "127.0.0.1",
		"-p", strconv.Itoa(f.pg.Port), "-U", "agent", "-d", "postgres"}
	args = append(append(args, extra...), "-c", sql)
	cmd := f.d.Command(t.Context(), args...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestPsqlThroughInterlock(t *testing.T) {
	f := startPG(t)
	out, err := f.psql(t, "SELECT id, name, email, card FROM customers ORDER BY id")
	if err != nil {
		t.Fatalf("psql select: %v\n%s\n%s", err, out, f.d.Logs())
	}
	if strings.Contains(out, "ada@example.com") || strings.Contains(out, "4111 1111 1111 1111") {
		t.Fatalf("PII reached the agent unmasked:\n%s", out)
	}
	if !strings.Contains(out, "1|Ada|") || !strings.Contains(out, "2|Bob|") {
		t.Fatalf("rows missing:\n%s", out)
	}
	t.Logf("masked rows:\n%s", out)

	out, err = f.psql(t, "DROP TABLE customers")
	if err == nil || !strings.Contains(out, "42501") && !strings.Contains(out, "no-destructive") {
		t.Fatalf("DROP TABLE: err=%v\n%s", err, out)
	}
	if got := f.pg.Psql(t, "SELECT count(*) FROM customers"); got != "2" {
		t.Fatalf("customers has %s rows after a denied DROP", got)
	}
	// A denial inside a transaction leaves the session usable, as a server error would.
	out, err = f.psql(t, "BEGIN; SELECT 1; ROLLBACK;", "-c", "CREATE TABLE x (a int)", "-c", "SELECT 'still here'")
	if !strings.Contains(out, "still here") || !strings.Contains(out, "no-ddl") {
		t.Fatalf("session after a denial: err=%v\n%s", err, out)
	}
	out, err = f.psql(t, "UPDATE customers SET name = 'Ada L.' WHERE id = 1")
	if err != nil {
		t.Fatalf("allowed UPDATE: %v\n%s", err, out)
	}
	if got := f.pg.Psql(t, "SELECT name FROM customers WHERE id = 1"); got != "Ada L." {
		t.Fatalf("UPDATE did not land: %q", got)
	}
	waitEvent(t, f.d, "decision", func(m map[string]any) bool { return m["rule"] == "no-destructive" && m["action"] == "deny" })

	body := scrapeMetrics(t, f.metricsPort)
	for _, want := range []string{
		`interlock_decisions_total{action="deny",mode="enforce",rule="no-destructive"} 1`,
		`interlock_connections_total{outcome="closed",protocol="postgres"}`,
		`interlock_credential_issue_seconds_count{outcome="ok",source="embedded"}`,
		`interlock_bpf_map_entries{map=`,
		`interlock_decision_seconds_bucket`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestSessionRoleIsEphemeral(t *testing.T) {
	f := startPG(t)
	out, err := f.psql(t, "SELECT current_user")
	if err != nil {
		t.Fatalf("psql: %v\n%s\n%s", err, out, f.d.Logs())
	}
	user := strings.TrimSpace(out)
	if user == "agent" || user == "postgres" || user == "" {
		t.Fatalf("session ran as %q, want a per-session role", user)
	}
	// Gone within a second of the session's end.
	deadline := time.Now().Add(time.Second)
	for {
		n := f.pg.Psql(t, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", user))
		if n == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("role %s still exists a second after the session ended", user)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPgbenchThroughInterlock(t *testing.T) {
	f := startPG(t)
	f.pg.Psql(t, "GRANT CREATE ON SCHEMA public TO agent_rw")
	// pgbench -i creates tables: the bench policy below would deny DDL, so
	// initialise directly and run the workload through interlock.
	init := exec.Command("pgbench", "-i", "-q", "-s", "1", "-h", f.pg.SocketDir, "-p", strconv.Itoa(f.pg.Port), "-U", "postgres", "postgres")
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	f.pg.Psql(t, "GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO agent_rw")
	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "pgbench", "-n", "-S", "-T", "3", "-c", "4", "-j", "2",
		"-h", "127.0.0.1", "-p", strconv.Itoa(f.pg.Port), "-U", "agent", "postgres")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "tps") {
		t.Fatalf("pgbench -S through interlock: %v\n%s\n%s", err, out, f.d.Logs())
	}
	if strings.Contains(string(out), "aborted") && !strings.Contains(string(out), "number of failed transactions: 0") {
		t.Fatalf("pgbench had failures:\n%s", out)
	}
}

const approvePolicy = `version: 1
identities:
  - name: ci-bot
targets:
  - name: appdb
    protocol: postgres
    addresses: [127.0.0.1]
    port: %d
    credential: {source: embedded, template: agent_rw}
rules:
  - name: ddl-needs-review
    identity: ci-bot
    target: appdb
    sql: {class: ddl}
    action: approve
    approve: {reviewers: [root], quorum: 1, timeout: 60s}
  - name: read
    identity: ci-bot
    target: appdb
    sql: {class: [read, session, transaction]}
    action: allow
`

// startPGWith is startPG with another policy.
func startPGWith(t *testing.T, policyFmt string) *pgFixture {
	f := startPG(t)
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(policyFmt, f.pg.Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	f.d.Policy = pol
	f.d.Stop()
	f.d.Restart()
	return f
}

func TestHeldStatementApprovedFromCLI(t *testing.T) {
	f := startPGWith(t, approvePolicy)
	f.pg.Psql(t, "GRANT CREATE ON SCHEMA public TO agent_rw")
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		// The agent runs unprivileged: its own user could never approve.
		out, err := f.psqlAs(t, []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"},
			"CREATE TABLE reviewed (a int)")
		done <- result{out, err}
	}()
	var pending []struct {
		ID        string
		Statement string
		State     string
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(pending) == 0 {
		out, stderr, err := f.d.CLI("approvals", "--json")
		if err != nil {
			t.Fatalf("interlock approvals: %v %s", err, stderr)
		}
		if err := json.Unmarshal([]byte(out), &pending); err != nil {
			t.Fatalf("approvals --json: %v\n%s", err, out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pending approval appeared\n%s", f.d.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(pending[0].Statement, "CREATE TABLE reviewed") {
		t.Fatalf("pending approval: %+v", pending[0])
	}
	select {
	case r := <-done:
		t.Fatalf("held statement finished before approval: %v\n%s", r.err, r.out)
	case <-time.After(300 * time.Millisecond):
	}
	if out, stderr, err := f.d.CLI("approve", pending[0].ID, "--comment", "looks fine"); err != nil {
		t.Fatalf("approve: %v\n%s%s", err, out, stderr)
	}
	r := <-done
	if r.err != nil || !strings.Contains(r.out, pending[0].ID) {
		t.Fatalf("held psql after approval: %v\n%s", r.err, r.out)
	}
	if got := f.pg.Psql(t, "SELECT count(*) FROM pg_tables WHERE tablename = 'reviewed'"); got != "1" {
		t.Fatal("approved CREATE TABLE did not run")
	}

	// A second hold, denied: the statement never runs and psql gets 42501.
	go func() {
		out, err := f.psqlAs(t, []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"},
			"CREATE TABLE refused (a int)")
		done <- result{out, err}
	}()
	var id string
	for deadline := time.Now().Add(20 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, _, _ := f.d.CLI("approvals", "--json")
		var ps []struct{ ID, Statement string }
		json.Unmarshal([]byte(out), &ps)
		for _, p := range ps {
			if strings.Contains(p.Statement, "refused") {
				id = p.ID
			}
		}
	}
	if out, stderr, err := f.d.CLI("deny", id, "--comment", "no"); err != nil {
		t.Fatalf("deny %q: %v\n%s%s", id, err, out, stderr)
	}
	r = <-done
	if r.err == nil || !strings.Contains(r.out, "42501") && !strings.Contains(r.out, "denied") {
		t.Fatalf("denied psql: %v\n%s", r.err, r.out)
	}
	if got := f.pg.Psql(t, "SELECT count(*) FROM pg_tables WHERE tablename = 'refused'"); got != "0" {
		t.Fatal("denied CREATE TABLE ran")
	}
}

func TestTaggedProcessCannotApprove(t *testing.T) {
	f := startPGWith(t, approvePolicy)
	go f.psqlAs(t, []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, "CREATE TABLE sneaky (a int)")
	var id string
	for deadline := time.Now().Add(20 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out, _, _ := f.d.CLI("approvals", "--json")
		var ps []struct{ ID string }
		json.Unmarshal([]byte(out), &ps)
		if len(ps) > 0 {
			id = ps[0].ID
		}
	}
	if id == "" {
		t.Fatalf("no pending approval\n%s", f.d.Logs())
	}
	// Root, but inside a tagged cgroup: refused.
	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--",
		filepath.Join(f.d.Bin, "interlock"), "--socket", f.d.Socket, "approve", id)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("tagged approve: err=%v\n%s", err, out)
	}
	out, _, _ := f.d.CLI("approvals", "--json")
	if !strings.Contains(out, "pending") {
		t.Fatalf("approval no longer pending after a refused vote:\n%s", out)
	}
}

func (f *pgFixture) psqlAs(t *testing.T, prefix []string, sql string) (string, error) {
	args := []string{"exec", "--identity", "ci-bot", "--"}
	args = append(args, prefix...)
	args = append(args, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
		"-p", strconv.Itoa(f.pg.Port), "-U", "agent", "-d", "postgres", "-c", sql)
	cmd := f.d.Command(t.Context(), args...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10", "HOME=/tmp")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestRecordingReplayPcapAndAudit(t *testing.T) {
	f := startPG(t)
	if out, err := f.psql(t, "SELECT id, email FROM customers WHERE id = 1"); err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	f.psql(t, "DROP TABLE customers")
	sessions := endedSessions(t, f.d, "ci-bot", 2)
	// Newest first: the DROP session, then the SELECT.
	out, stderr, err := f.d.CLI("replay", sessions[0].ID)
	if err != nil || !strings.Contains(out, "DROP TABLE customers") || !strings.Contains(out, "no-destructive") {
		t.Fatalf("replay of the denied session: %v %s\n%s", err, stderr, out)
	}
	out, _, err = f.d.CLI("replay", sessions[1].ID)
	if err != nil || !strings.Contains(out, "SELECT id, email") || strings.Contains(out, "ada@example.com") {
		t.Fatalf("replay of the masked session (must show what the agent saw): %v\n%s", err, out)
	}

	pcap := filepath.Join(t.TempDir(), "s.pcap")
	if out, stderr, err := f.d.CLI("export", sessions[1].ID, "--pcap", pcap); err != nil {
		t.Fatalf("export: %v\n%s%s", err, out, stderr)
	}
	ts, err := exec.Command("tshark", "-r", pcap, "-Y", "pgsql.query", "-T", "fields", "-e", "pgsql.query").CombinedOutput()
	if err != nil || !strings.Contains(string(ts), "SELECT id, email FROM customers WHERE id = 1") {
		t.Fatalf("tshark on the exported pcap: %v\n%s", err, ts)
	}

	if out, stderr, err := f.d.CLI("audit", "verify"); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("audit verify on an intact chain: %v\n%s%s", err, out, stderr)
	}
	out, _, _ = f.d.CLI("audit", "export")
	if strings.Contains(out, "ada@example.com") || !strings.Contains(out, "credential.issued") && !strings.Contains(out, "credential_issued") {
		t.Fatalf("audit export:\n%s", out)
	}
}

const benchPolicy = `version: 1
identities:
  - name: bench
targets:
  - name: appdb
    protocol: postgres
    addresses: [127.0.0.1]
    port: %d
    credential: {source: embedded, template: agent_rw}
masks:
  - name: pii
    columns: {email: partial, "card_*": partial, ssn: redact}
    detectors: {pii: partial, secrets: redact}
rules:
  - name: pgbench-reads
    identity: bench
    target: appdb
    sql: {class: read}
    action: mask
    mask: pii
  - name: pgbench
    identity: bench
    target: appdb
    sql: {class: [write, transaction, session]}
    action: allow
`

// BenchmarkPgbench runs real pgbench from a tagged cgroup through the whole
// of interlockd (eBPF redirect, per-session credential, pgproto3 decoding,
// policy on every statement, reads under a masking rule, recording and the
// audit chain), against the
// same PostgreSQL directly, through PgBouncer in session mode and through
// HAProxy as a plain TCP relay, in turn within each iteration; -benchtime=3x
// gives medians of 3. Each proxy's context switches and CPU time per
// transaction are reported beside its figures.
//
//	sudo go test ./agent/daemon -run '^$' -bench Pgbench -benchtime 3x
func BenchmarkPgbench(b *testing.B) {
	testenv.Privileged(b)
	// Room for the idle sessions twice: PgBouncer keeps its server
	// connections when its clients leave.
	pg := testenv.StartPostgres(b, "max_connections = 1000")
	if out, err := exec.Command("pgbench", "-i", "-q", "-s", "10", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", pg.Superuser, "postgres").CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	pg.Psql(b, `CREATE ROLE agent_rw NOLOGIN; GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO agent_rw`)
	dir := b.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(benchPolicy, pg.Port)), 0o644)
	cfg := filepath.Join(dir, "interlockd.yaml")
	// Pooled credentials, as the connect goal has it: a session's
	// login does not wait for its role to be created. Server connections
	// kept between sessions, as PgBouncer keeps them in session mode.
	// The session cap lifted for the idle sessions.
	os.WriteFile(cfg, []byte(fmt.Sprintf("log_level: warn\nlimits: {sessions: %d}\ncredentials:\n  pool: {appdb: 16}\n  reuse: {appdb: {servers: 16}}\n  embedded:\n    embedded: {admin_dsn: %q}\n",
		idleSessions+8, pg.AdminDSN())), 0o600)
	d := daemontest.Start(b, daemontest.Options{Policy: pol, Config: cfg})
	agent := d.Cgroup("bench")
	if _, stderr, err := d.CLI("tag", agent, "--identity", "bench"); err != nil {
		b.Fatalf("tag: %v %s", err, stderr)
	}
	baselines := testenv.StartBaselines(b, pg)
	seconds := testenv.PgbenchSeconds()
	for _, sc := range testenv.PgbenchScenarios {
		b.Run(sc.Name, func(b *testing.B) {
			var direct, via []testenv.PgbenchResult
			others := make([][]testenv.PgbenchResult, len(baselines))
			for i := 0; i < b.N; i++ {
				direct = append(direct, testenv.Pgbench(b, pg.Host, pg.Port, pg.Superuser, pg.Password, seconds, sc.Args))
				via = append(via, testenv.MeasureProxy(d.PID(), seconds, func() testenv.PgbenchResult {
					return testenv.PgbenchIn(b, agent, "127.0.0.1", pg.Port, "agent", "", seconds, sc.Args)
				}))
				for j, bl := range baselines {
					others[j] = append(others[j], testenv.MeasureProxy(bl.PID, seconds, func() testenv.PgbenchResult {
						return testenv.Pgbench(b, "127.0.0.1", bl.Port, bl.User, bl.Password, seconds, sc.Args)
					}))
				}
			}
			dm := testenv.MedianPgbench(direct)
			b.ReportMetric(dm.TPS, "direct-tps")
			report := func(name string, runs []testenv.PgbenchResult) {
				m := testenv.MedianPgbench(runs)
				b.ReportMetric(100*m.TPS/dm.TPS, name+"-%")
				b.ReportMetric(m.P50-dm.P50, name+"-added-p50-µs")
				b.ReportMetric(m.P99-dm.P99, name+"-added-p99-µs")
				b.ReportMetric(m.Switches, name+"-switches/txn")
				b.ReportMetric(m.CPUPerTxn, name+"-cpu-µs/txn")
			}
			report("interlock", via)
			for j, bl := range baselines {
				report(bl.Name, others[j])
			}
		})
	}
	// Idle sessions: the proxy's memory per session, and how long a new
	// session takes to start with them open, as a multiple of its time
	// without. The memory is each proxy's first round's: one that keeps
	// what a round allocated (PgBouncer's and HAProxy's pools) has room
	// for the next round's sessions and grows no more (the testing package
	// runs the sub-benchmark once before its b.N rounds).
	kibs := map[int]float64{} // by pid
	b.Run(fmt.Sprintf("idle-%dsessions", idleSessions), func(b *testing.B) {
		type result struct{ slower []float64 }
		measure := func(r *result, cgroup string, pid, port int, user, password string) {
			kib, unloaded, loaded := testenv.IdleSessions(b, pg, cgroup, pid, port, user, password, idleSessions)
			if _, ok := kibs[pid]; !ok {
				kibs[pid] = kib
			}
			r.slower = append(r.slower, float64(loaded)/float64(unloaded))
		}
		var via result
		others := make([]result, len(baselines))
		for i := 0; i < b.N; i++ {
			measure(&via, agent, d.PID(), pg.Port, "agent", "")
			for j, bl := range baselines {
				measure(&others[j], "", bl.PID, bl.Port, bl.User, bl.Password)
			}
		}
		m := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
		b.ReportMetric(kibs[d.PID()], "interlock-KiB/session")
		b.ReportMetric(m(via.slower), "interlock-start-x")
		for j, bl := range baselines {
			b.ReportMetric(kibs[bl.PID], bl.Name+"-KiB/session")
			b.ReportMetric(m(others[j].slower), bl.Name+"-start-x")
		}
	})
}

// idleSessions is how many idle sessions BenchmarkPgbench holds open at
// once: what PostgreSQL's max_connections leaves (each is a backend).
const idleSessions = 300

// TestFullRecordingDiskEndsSession: a session whose recording's file
// cannot be written (its file system full: a 64 KiB tmpfs over the
// recordings) is ended, outcome `recording unavailable` and an error line,
// rather than left to go on unrecorded; a session whose recording fits in
// the store goes on. Before, the write error was kept until the session
// ended, which it did only when the agent pleased.
func TestFullRecordingDiskEndsSession(t *testing.T) {
	f := startPG(t)
	mountTmpfs(t, filepath.Join(f.d.StateDir, "recordings"), "64k")
	if out, err := f.psql(t, "SELECT 'small'"); err != nil || out != "small" {
		t.Fatalf("a session whose recording fits: %v %s", err, out)
	}
	// A megabyte's result fills the file system; the session is ended
	// while psql waits (a shell command of its own), before its last
	// statement.
	out, err := f.psql(t, "SELECT 'unrecorded'", "-c", "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 40000) g", "-c", `\! sleep 2`)
	if err == nil || strings.Contains(out, "unrecorded") {
		t.Fatalf("a session whose recording could not be written went on: %v\n%s", err, out)
	}
	waitEvent(t, f.d, "connection_close", func(m map[string]any) bool { return m["outcome"] == "recording unavailable" })
	if !strings.Contains(f.d.Logs(), "the session cannot be recorded: ending it") || !strings.Contains(f.d.Logs(), "no space left on device") {
		t.Errorf("no error line naming the full disk:\n%s", f.d.Logs())
	}
}

// mountTmpfs mounts a tmpfs of size (as mount(8) takes it) over dir until
// the test ends: a file system a test can fill.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
}

// fillRecordings fills d's recordings' file system (a 64 MiB tmpfs mounted
// over it) past its default reserve and waits until interlockd stops
// recording; free frees the space and waits until it records again.
func fillRecordings(t *testing.T, d *daemontest.Daemon) (free func()) {
	t.Helper()
	dir := filepath.Join(d.StateDir, "recordings")
	mountTmpfs(t, dir, "64m")
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 62<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reserve's log line", func() bool { return strings.Contains(d.Logs(), "recordings stopped") })
	return func() {
		os.Remove(filler)
		waitFor(t, "the resumption's log line", func() bool { return strings.Contains(d.Logs(), "recordings resumed") })
	}
}

// TestRecordingReserveRefusesSessions: with its recordings' file system
// under the reserve kept free (the default, 5 % of it), interlockd refuses
// new PostgreSQL sessions in PostgreSQL's words before they log in
// upstream (no credential is issued for them), and logs why; once space is
// freed, sessions are recorded again. An agent whose results are recorded
// in full cannot fill the disk.
func TestRecordingReserveRefusesSessions(t *testing.T) {
	f := startPG(t)
	free := fillRecordings(t, f.d)
	out, err := f.psql(t, "SELECT 'unrecorded'")
	if err == nil || strings.Contains(out, "unrecorded") || !strings.Contains(out, "the session cannot be recorded") {
		t.Fatalf("a session under the reserve: %v\n%s", err, out)
	}
	waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
		return m["outcome"] == "recording unavailable" && strings.Contains(fmt.Sprint(m["reason"]), "kept free")
	})
	// Refused before the server's login: no credential was issued for it.
	if strings.Contains(f.d.Logs(), `"event":"credential_issued"`) {
		t.Errorf("a session refused for its recording was logged in upstream first:\n%s", f.d.Logs())
	}
	if !strings.Contains(f.d.Logs(), "kept free (recordings.reserve)") {
		t.Errorf("no log line names the reserve:\n%s", f.d.Logs())
	}
	if m := scrapeMetrics(t, f.metricsPort); !strings.Contains(m, "\ninterlock_recordings_stopped 1\n") {
		t.Errorf("interlock_recordings_stopped is not 1:\n%s", m)
	}
	if out, _, err := f.d.CLI("status"); err != nil || !strings.Contains(out, "STOPPED: the recordings' file system") {
		t.Errorf("status does not say recordings are stopped: %v\n%s", err, out)
	}
	free()
	if m := scrapeMetrics(t, f.metricsPort); !strings.Contains(m, "\ninterlock_recordings_stopped 0\n") {
		t.Errorf("interlock_recordings_stopped is not 0:\n%s", m)
	}
	if out, err := f.psql(t, "SELECT 'recorded'"); err != nil || out != "recorded" {
		t.Fatalf("a session once space was freed: %v %s", err, out)
	}
}
