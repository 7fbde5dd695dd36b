package daemon_test

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// pgxClient is the legacy agent's pgx mode: it connects to dsn with the
// environment `interlock exec` gave it (PGSSLROOTCERT), runs one query and
// describes the connection. In mode pgx-gssenc it first asks for GSSAPI
// encryption on the new connection, as libpq does with gssencmode=prefer
// when it holds Kerberos credentials, and on 'N' goes on as pgx would. In
// mode pgx-connect it reports the median time of a connection and its
// first query.
func pgxClient(mode, dsn string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if mode == "pgx-connect" {
		return pgxConnectLatency(ctx, dsn)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "", err
	}
	if mode == "pgx-gssenc" {
		dial := cfg.DialFunc
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			req := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877104)
			var answer [1]byte
			if _, err := c.Write(req); err == nil {
				_, err = io.ReadFull(c, answer[:])
			}
			if err != nil || answer[0] != 'N' {
				c.Close()
				return nil, fmt.Errorf("GSSENCRequest answered %q: %v", answer[0], err)
			}
			return c, nil
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var name string
	if err := conn.QueryRow(ctx, "SELECT name FROM customers WHERE id = 2").Scan(&name); err != nil {
		return "", err
	}
	tc, ok := conn.PgConn().Conn().(*tls.Conn)
	if !ok {
		return "plain " + name, nil
	}
	st := tc.ConnectionState()
	return fmt.Sprintf("tls %s alpn=%q %s", tls.VersionName(st.Version), st.NegotiatedProtocol, name), nil
}

func pgxConnectLatency(ctx context.Context, dsn string) (string, error) {
	var us []float64
	for range 50 {
		start := time.Now()
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return "", err
		}
		var one int
		err = c.QueryRow(ctx, "SELECT 1").Scan(&one)
		us = append(us, float64(time.Since(start).Microseconds()))
		c.Close(ctx)
		if err != nil {
			return "", err
		}
	}
	slices.Sort(us)
	return strconv.FormatFloat(us[len(us)/2], 'f', 0, 64), nil
}

// callerEnv is the environment a test runs `interlock exec` with: the
// test's own, minus any PGSSLROOTCERT, so the one exec sets is used.
func callerEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGSSLROOTCERT=") && !strings.HasPrefix(kv, "PGSSLMODE=") {
			env = append(env, kv)
		}
	}
	return append(append(env, "PGCONNECT_TIMEOUT=10", "HOME=/tmp"), extra...)
}

// psqlTLS runs psql as an unprivileged agent under `interlock exec`,
// connecting to host, with env added to the caller's environment.
func (f *pgFixture) psqlTLS(t *testing.T, host string, env []string, sql ...string) (string, error) {
	t.Helper()
	args := append([]string{"exec", "--identity", "ci-bot", "--"}, unprivileged...)
	args = append(args, "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", strconv.Itoa(f.pg.Port), "-U", "agent", "-d", "postgres")
	for _, s := range sql {
		args = append(args, "-c", s)
	}
	cmd := f.d.Command(t.Context(), args...)
	cmd.Env = callerEnv(env...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// otherCA writes the certificate of an authority interlockd does not use.
func otherCA(t *testing.T) string {
	t.Helper()
	// Where the unprivileged agent can read it; t.TempDir's parent is
	// private to root.
	dir, err := os.MkdirTemp("", "interlock-other-ca-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	pub := filepath.Join(dir, "other.crt")
	if _, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), PublicCert: pub}); err != nil {
		t.Fatal(err)
	}
	return pub
}

// TestPostgresTLSFromAgent: agents that ask for TLS get it from interlockd,
// with a certificate of Interlock's CA for the name they dialed, and the
// session is decided and recorded as a plain one is.
func TestPostgresTLSFromAgent(t *testing.T) {
	f := startPG(t)
	const query = "SELECT name FROM customers WHERE id = 2"
	for _, tc := range []struct{ name, host, mode string }{
		{"require by address", "127.0.0.1", "require"},
		{"verify-full by name", "localhost", "verify-full"},
		{"verify-full by address", "127.0.0.1", "verify-full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := []string{"PGSSLMODE=" + tc.mode, "PGGSSENCMODE=prefer"}
			out, err := f.psqlTLS(t, tc.host, env, `\conninfo`, query)
			if err != nil || !strings.Contains(out, "SSL connection (protocol: TLSv1.3") || !strings.HasSuffix(out, "Bob") {
				t.Fatalf("psql sslmode=%s host=%s: %v\n%s\n%s", tc.mode, tc.host, err, out, f.d.Logs())
			}
		})
	}
	// The recording holds the statements of a TLS session in clear.
	// The newest is verify-full by address, TLS as \conninfo showed.
	sessions := endedSessions(t, f.d, "ci-bot", 3)
	replay, _, err := f.d.CLI("replay", sessions[0].ID)
	if err != nil || !strings.Contains(replay, query) {
		t.Fatalf("replay of a TLS session: %v\n%s", err, replay)
	}
	pcap := filepath.Join(t.TempDir(), "tls.pcap")
	if out, stderr, err := f.d.CLI("export", sessions[0].ID, "--pcap", pcap); err != nil {
		t.Fatalf("export: %v\n%s%s", err, out, stderr)
	}
	ts, err := exec.Command("tshark", "-r", pcap, "-d", fmt.Sprintf("tcp.port==%d,pgsql", f.pg.Port),
		"-Y", "pgsql.query", "-T", "fields", "-e", "pgsql.query").CombinedOutput()
	if err != nil || !strings.Contains(string(ts), query) {
		t.Fatalf("tshark on the pcap of a TLS session: %v\n%s", err, ts)
	}

	t.Run("untrusted CA fails verify-full", func(t *testing.T) {
		out, err := f.psqlTLS(t, "localhost", []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + otherCA(t)}, query)
		if err == nil || !strings.Contains(out, "certificate verify failed") {
			t.Fatalf("verify-full against another CA: err=%v\n%s", err, out)
		}
	})
	t.Run("name not in the certificate", func(t *testing.T) {
		// Without SNI the leaf names the address dialed, 127.0.0.1; a
		// client that dialed "localhost" must refuse it.
		out, err := f.psqlTLS(t, "localhost", []string{"PGSSLMODE=verify-full", "PGSSLSNI=0"}, query)
		if err == nil || !strings.Contains(out, `server certificate for "127.0.0.1"`) || !strings.Contains(out, `does not match host name "localhost"`) {
			t.Fatalf("verify-full of a leaf for another name: err=%v\n%s", err, out)
		}
	})

	agent := agentBinary(t)
	port := strconv.Itoa(f.pg.Port)
	for _, tc := range []struct{ name, mode, dsn, want string }{
		{"pgx verify-full", "pgx", "postgres://agent@localhost:" + port + "/postgres?sslmode=verify-full", `tls TLS 1.3 alpn="" Bob`},
		{"pgx verify-full by address", "pgx", "postgres://agent@127.0.0.1:" + port + "/postgres?sslmode=verify-full", `tls TLS 1.3 alpn="" Bob`},
		{"pgx direct negotiation", "pgx", "postgres://agent@localhost:" + port + "/postgres?sslmode=verify-full&sslnegotiation=direct", `tls TLS 1.3 alpn="postgresql" Bob`},
		{"pgx gssenc refused, then TLS", "pgx-gssenc", "postgres://agent@localhost:" + port + "/postgres?sslmode=verify-full", `tls TLS 1.3 alpn="" Bob`},
		{"pgx gssenc refused, then plain", "pgx-gssenc", "postgres://agent@localhost:" + port + "/postgres?sslmode=disable", "plain Bob"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"exec", "--identity", "ci-bot", "--"}, unprivileged...)
			cmd := f.d.Command(t.Context(), append(args, agent, tc.dsn)...)
			cmd.Env = callerEnv(clientEnv + "=" + tc.mode)
			out, err := cmd.Output()
			var r report
			if err != nil || json.Unmarshal(out, &r) != nil || r.Line != tc.want {
				t.Fatalf("%s: %v %+v\n%s", tc.dsn, err, r, out)
			}
		})
	}
}

// TestCAExportAndRotate: the CA lives in the state directory with a private
// key, `interlock exec` hands its certificate to agents, `ca export` prints
// it with or without a daemon, and `ca rotate` replaces it for good.
func TestCAExportAndRotate(t *testing.T) {
	f := startPG(t)
	dir := ca.Dir(f.d.StateDir)
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, ca.KeyFile): 0o600} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v, want mode %04o", path, st, want)
		}
	}
	exported, stderr, err := f.d.CLI("ca", "export")
	if err != nil || !strings.HasPrefix(exported, "-----BEGIN CERTIFICATE-----") || strings.Contains(exported, "PRIVATE") {
		t.Fatalf("ca export: %v %s\n%s", err, stderr, exported)
	}
	seen, code := f.d.Exec("ci-bot", "sh", "-c", `cat "$PGSSLROOTCERT"`)
	if code != 0 || seen != exported {
		t.Fatalf("the agent's PGSSLROOTCERT (exit %d) is not the exported CA:\n%s", code, seen)
	}
	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "sh", "-c", `echo "$PGSSLROOTCERT"`)
	cmd.Env = append(callerEnv(), "PGSSLROOTCERT=/etc/my-ca.pem")
	if out, err := cmd.Output(); err != nil || strings.TrimSpace(string(out)) != "/etc/my-ca.pem" {
		t.Fatalf("exec replaced the caller's PGSSLROOTCERT: %v %q", err, out)
	}
	// The other runtimes get the bundle: the system roots, then the CA.
	bundleOf := func() string {
		t.Helper()
		b, code := f.d.Exec("ci-bot", "sh", "-c", `cat "$SSL_CERT_FILE" && test "$REQUESTS_CA_BUNDLE" = "$SSL_CERT_FILE" `+
			`&& test "$CURL_CA_BUNDLE" = "$SSL_CERT_FILE" && test "$GIT_SSL_CAINFO" = "$SSL_CERT_FILE" && test "$NODE_EXTRA_CA_CERTS" = "$PGSSLROOTCERT"`)
		if code != 0 {
			t.Fatalf("the agent's CA variables (exit %d):\n%s", code, b)
		}
		return b
	}
	if b := bundleOf(); !strings.HasSuffix(b, exported) || !strings.Contains(strings.TrimSuffix(b, exported), "BEGIN CERTIFICATE") {
		t.Fatalf("the agent's SSL_CERT_FILE is not the system roots and the CA:\n%s", b)
	}
	cmd = f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--no-ca-env", "--", "sh", "-c", `echo "${SSL_CERT_FILE-unset} ${NODE_EXTRA_CA_CERTS-unset}"`)
	cmd.Env = append(callerEnv(), "SSL_CERT_FILE=/etc/mine.pem")
	for i, kv := range cmd.Env {
		if strings.HasPrefix(kv, "NODE_EXTRA_CA_CERTS=") {
			cmd.Env[i] = "INTERLOCK_TEST_UNSET=1"
		}
	}
	if out, err := cmd.Output(); err != nil || strings.TrimSpace(string(out)) != "/etc/mine.pem unset" {
		t.Fatalf("exec --no-ca-env changed CA variables: %v %q", err, out)
	}

	oldCA := filepath.Join(filepath.Dir(otherCA(t)), "old.crt")
	if err := os.WriteFile(oldCA, []byte(exported), 0o644); err != nil {
		t.Fatal(err)
	}
	// A leaf for localhost is minted and cached before the rotation.
	const query = "SELECT name FROM customers WHERE id = 2"
	if out, err := f.psqlTLS(t, "localhost", []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + oldCA}, query); err != nil || out != "Bob" {
		t.Fatalf("verify-full before rotation: %v\n%s", err, out)
	}
	if out, stderr, err := f.d.CLI("ca", "rotate"); err != nil || !strings.Contains(out, "new certificate authority") {
		t.Fatalf("ca rotate: %v %s\n%s", err, stderr, out)
	}
	waitEvent(t, f.d, "ca_rotate", func(map[string]any) bool { return true })
	rotated, _, _ := f.d.CLI("ca", "export")
	if rotated == exported || !strings.HasPrefix(rotated, "-----BEGIN CERTIFICATE-----") {
		t.Fatalf("rotation kept the CA:\n%s", rotated)
	}
	if b := bundleOf(); !strings.HasSuffix(b, rotated) {
		t.Fatalf("the bundle was not rewritten by the rotation:\n%s", b)
	}
	if out, err := f.psqlTLS(t, "localhost", []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + oldCA}, query); err == nil || !strings.Contains(out, "certificate verify failed") {
		t.Fatalf("a leaf of the old CA after rotation: err=%v\n%s", err, out)
	}
	if out, err := f.psqlTLS(t, "localhost", []string{"PGSSLMODE=verify-full"}, query); err != nil || out != "Bob" {
		t.Fatalf("verify-full with the rotated CA: %v\n%s", err, out)
	}

	// The rotated CA is the one a restart loads, and root can read it with
	// no daemon running.
	f.d.Stop()
	f.d.Restart()
	if again, _, _ := f.d.CLI("ca", "export"); again != rotated {
		t.Fatal("a restart brought another CA")
	}
	f.d.Stop()
	offline, stderr, err := f.d.CLI("ca", "export", "--state-dir", f.d.StateDir)
	if err != nil || offline != rotated {
		t.Fatalf("ca export without a daemon: %v %s\n%s", err, stderr, offline)
	}
	if _, _, err := f.d.CLI("ca", "rotate"); err == nil {
		t.Fatal("ca rotate without a daemon succeeded")
	}
}

// BenchmarkPostgresTLSConnect is what TLS from the agent adds to a new
// session through interlockd: the median of 50 pgx connections, each with
// its first query, plain and with sslmode=require (a P-256 leaf, cached
// after the first), beside the same connections straight to the server.
//
//	sudo go test ./agent/daemon -run '^$' -bench PostgresTLSConnect -benchtime 3x
func BenchmarkPostgresTLSConnect(b *testing.B) {
	testenv.Privileged(b)
	pg := testenv.StartPostgres(b)
	pg.Psql(b, "CREATE ROLE agent_rw NOLOGIN")
	dir := b.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(pgPolicy, pg.Port)), 0o644)
	cfg := filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("log_level: warn\ncredentials:\n  embedded:\n    embedded: {admin_dsn: %q}\n", pg.AdminDSN())), 0o600)
	d := daemontest.Start(b, daemontest.Options{Policy: pol, Config: cfg})
	cg := d.Cgroup("bench")
	if _, stderr, err := d.CLI("tag", cg, "--identity", "ci-bot"); err != nil {
		b.Fatalf("tag: %v %s", err, stderr)
	}
	f := &fixture{d: d, agent: agentBinary(b)}
	// The agent in the tagged cgroup; straight to the server from here.
	median := func(tagged bool, dsn string) float64 {
		var line, failure string
		if tagged {
			r := f.runIn(b, cg, "pgx-connect", dsn)
			line, failure = r.Line, r.Err
		} else if l, err := pgxConnectLatency(b.Context(), dsn); err != nil {
			failure = err.Error()
		} else {
			line = l
		}
		us, err := strconv.ParseFloat(line, 64)
		if failure != "" || err != nil {
			b.Fatalf("%s: %s %q", dsn, failure, line)
		}
		return us
	}
	direct := fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/postgres?sslmode=disable", pg.Superuser, pg.Password, pg.Port)
	via := fmt.Sprintf("postgres://agent@127.0.0.1:%d/postgres?sslmode=", pg.Port)
	var dm, pm, tm []float64
	for b.Loop() {
		dm = append(dm, median(false, direct))
		pm = append(pm, median(true, via+"disable"))
		tm = append(tm, median(true, via+"require"))
	}
	mid := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(mid(dm), "direct-µs")
	b.ReportMetric(mid(pm), "interlock-plain-µs")
	b.ReportMetric(mid(tm), "interlock-tls-µs")
}
