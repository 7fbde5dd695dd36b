package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PgbenchResult is one pgbench run: TPS, the median and 99th percentile of
// its transactions' latency in µs, and (filled by callers that measure
// them) the proxy's CPU time and context switches per transaction.
type PgbenchResult struct{ TPS, P50, P99, CPUPerTxn, Switches float64 }

// Transactions is how many transactions a run of seconds made.
func (r PgbenchResult) Transactions(seconds int) float64 { return r.TPS * float64(seconds) }

// MedianPgbench returns the median of each figure over runs.
func MedianPgbench(runs []PgbenchResult) PgbenchResult {
	var tps, p50, p99, cpu, sw []float64
	for _, r := range runs {
		tps, p50, p99 = append(tps, r.TPS), append(p50, r.P50), append(p99, r.P99)
		cpu, sw = append(cpu, r.CPUPerTxn), append(sw, r.Switches)
	}
	m := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	return PgbenchResult{m(tps), m(p50), m(p99), m(cpu), m(sw)}
}

// CPUTime returns this process's user+system CPU time so far.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// tpsRE reads pgbench's rate; with -C (a connection per transaction) it
// includes the connections.
var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \((?:without initial connection time|including reconnection times)\)`)

// Pgbench runs one pgbench and returns its TPS and the median and 99th
// percentile latency of its transactions, from the per-transaction log.
func Pgbench(b testing.TB, host string, port int, user, password string, seconds int, args []string) PgbenchResult {
	b.Helper()
	return PgbenchIn(b, "", host, port, user, password, seconds, args)
}

// PgbenchIn is Pgbench run inside the cgroup directory cgroup (when not
// empty), as an agent in a tagged cgroup runs.
func PgbenchIn(b testing.TB, cgroup, host string, port int, user, password string, seconds int, args []string) PgbenchResult {
	b.Helper()
	dir := b.TempDir()
	args = append([]string{"-n", "-h", host, "-p", strconv.Itoa(port), "-U", user, "-T", strconv.Itoa(seconds),
		"-l", "--log-prefix", filepath.Join(dir, "log")}, args...)
	cmd, done := pgbenchCmd(b, cgroup, password, append(args, "postgres"))
	defer done()
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("pgbench %v: %v\n%s", args, err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no tps in pgbench output:\n%s", out)
	}
	tps, _ := strconv.ParseFloat(string(m[1]), 64)
	logs, _ := filepath.Glob(filepath.Join(dir, "log*"))
	var lat []float64
	for _, l := range logs {
		f, err := os.Open(l)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// client_id transaction_no time script_no time_epoch time_us
			fields := strings.Fields(sc.Text())
			if len(fields) >= 3 {
				v, _ := strconv.ParseFloat(fields[2], 64)
				lat = append(lat, v)
			}
		}
		f.Close()
	}
	if len(lat) == 0 {
		b.Fatal(fmt.Errorf("no pgbench transaction log in %s", dir))
	}
	slices.Sort(lat)
	return PgbenchResult{TPS: tps, P50: lat[len(lat)/2], P99: lat[len(lat)*99/100]}
}

// pgbenchCmd is pgbench with args, logging in with password, started in
// the cgroup directory cgroup when not empty; done releases the cgroup.
func pgbenchCmd(b testing.TB, cgroup, password string, args []string) (cmd *exec.Cmd, done func()) {
	b.Helper()
	cmd = exec.Command("pgbench", args...)
	// No GSSAPI negotiation: libkrb5 aborts pgbench when many of its
	// connections fail at once.
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGSSLMODE=disable", "PGGSSENCMODE=disable")
	if cgroup == "" {
		return cmd, func() {}
	}
	cg, err := os.Open(cgroup)
	if err != nil {
		b.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return cmd, func() { cg.Close() }
}

// Baseline is a reference proxy a benchmark runs beside Interlock.
type Baseline struct {
	Name string
	Port int
	PID  int
	// User and Password log in through it: a pooler authenticates the
	// client itself, a TCP relay passes the server's authentication through.
	User, Password string
}

// StartPgBouncer runs PgBouncer in session mode in front of pg, accepting
// any client as "agent" like the relay does.
func StartPgBouncer(b testing.TB, pg *Postgres) Baseline {
	b.Helper()
	dir, err := os.MkdirTemp("", "interlock-pgbouncer-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	port := FreePort(b)
	conf := fmt.Sprintf(`[databases]
postgres = host=%s port=%d user=%s password=%s dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = any
pool_mode = session
max_client_conn = 500
default_pool_size = 400
logfile = %s/pgbouncer.log
pidfile = %s/pgbouncer.pid
`, pg.Host, pg.Port, pg.Superuser, pg.Password, port, dir, dir)
	ini := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(ini, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	args := []string{ini}
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root.
		if out, err := exec.Command("chown", "-R", "postgres", dir).CombinedOutput(); err != nil {
			b.Fatalf("chown: %v %s", err, out)
		}
		args = []string{"-u", "postgres", ini}
	}
	cmd := exec.Command("pgbouncer", args...)
	if err := cmd.Start(); err != nil {
		b.Fatalf("start pgbouncer: %v", err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitListening(b, port, "pgbouncer", filepath.Join(dir, "pgbouncer.log"))
	return Baseline{Name: "pgbouncer", Port: port, PID: cmd.Process.Pid, User: "agent"}
}

// StartHAProxy runs HAProxy as a plain TCP relay in front of pg: the cost
// of any user-space proxy on the path, with nothing decoded.
func StartHAProxy(b testing.TB, pg *Postgres) Baseline {
	b.Helper()
	port, pid := HAProxyTCP(b, pg.Addr())
	return Baseline{Name: "haproxy", Port: port, PID: pid, User: pg.Superuser, Password: pg.Password}
}

// HAProxyTCP runs HAProxy in TCP mode (one thread per CPU, its default)
// relaying a loopback port to upstream, the peer every benchmark of a relay
// is measured against, and returns the port and its process ID. It is
// stopped when b ends.
func HAProxyTCP(b testing.TB, upstream string) (port, pid int) {
	b.Helper()
	dir := b.TempDir()
	port = FreePort(b)
	conf := fmt.Sprintf(`global
  maxconn 1000
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
listen relay
  bind 127.0.0.1:%d
  server up %s
`, port, upstream)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		b.Fatal(err)
	}
	logPath := filepath.Join(dir, "haproxy.log")
	logf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("haproxy", "-db", "-f", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		b.Fatalf("start haproxy: %v", err)
	}
	b.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitListening(b, port, "haproxy", logPath)
	return port, cmd.Process.Pid
}

// StartBaselines starts every reference proxy that is installed; a missing
// one is logged, and its figures are left out.
func StartBaselines(b testing.TB, pg *Postgres) []Baseline {
	b.Helper()
	var out []Baseline
	for _, s := range []struct {
		bin   string
		start func(testing.TB, *Postgres) Baseline
	}{{"pgbouncer", StartPgBouncer}, {"haproxy", StartHAProxy}} {
		if _, err := exec.LookPath(s.bin); err != nil {
			b.Logf("%s not installed: no figures for it", s.bin)
			continue
		}
		out = append(out, s.start(b, pg))
	}
	return out
}

func waitListening(b testing.TB, port int, name, logPath string) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			b.Fatalf("%s did not start: %v\n%s", name, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// MeasureProxy runs one pgbench through the proxy process pid and adds the
// proxy's context switches and CPU time per transaction to its result.
func MeasureProxy(pid, seconds int, run func() PgbenchResult) PgbenchResult {
	sw, cpu := ContextSwitches(pid), ProcessCPU(pid)
	r := run()
	r.Switches = float64(ContextSwitches(pid)-sw) / r.Transactions(seconds)
	r.CPUPerTxn = (ProcessCPU(pid) - cpu).Seconds() * 1e6 / r.Transactions(seconds)
	return r
}

// ProcessCPU returns the user+system CPU time process pid has used so far,
// from /proc (clock-tick resolution: sum it over runs of seconds).
func ProcessCPU(pid int) time.Duration {
	user, system := ProcessTimes(pid)
	return user + system
}

// ProcessTimes returns the user and the system CPU time process pid has
// used so far, apart, from /proc (clock-tick resolution).
func ProcessTimes(pid int) (user, system time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// The command name may hold spaces; the fields after it do not.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0
	}
	// utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	// USER_HZ is 100 on every Linux architecture Go supports.
	return time.Duration(ut) * 10 * time.Millisecond, time.Duration(st) * 10 * time.Millisecond
}

// ContextSwitches returns how many times the threads of process pid have
// been switched out so far (voluntary and not), from /proc. On a virtual
// machine where a switch costs more than the work a proxy does per message,
// switches per transaction explain a proxy's latency better than its CPU
// profile.
func ContextSwitches(pid int) int64 {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	var n int64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += c
			}
		}
	}
	return n
}

// PgbenchScenario is one pgbench workload of the project's benchmarks.
type PgbenchScenario struct {
	Name string
	Args []string
}

// PgbenchScenarios are the workloads every PostgreSQL benchmark compares:
// select-only and the tpcb-like mix at 1 and 16 clients, and select-only
// with a new connection per transaction (-C: startup to first result).
var PgbenchScenarios = []PgbenchScenario{
	{"select-only-1client", []string{"-S", "-c", "1", "-j", "1"}},
	{"select-only-16clients", []string{"-S", "-c", "16", "-j", "2"}},
	{"tpcb-like-1client", []string{"-c", "1", "-j", "1"}},
	{"tpcb-like-16clients", []string{"-c", "16", "-j", "2"}},
	{"select-only-connect-1client", []string{"-S", "-C", "-c", "1", "-j", "1"}},
}

// IdleSessions opens n sessions through the proxy listening at
// 127.0.0.1:port, from the cgroup directory cgroup (when not empty), in two
// halves: each session logs in, runs one query and stays idle. It returns
// what each session of the second half added to the memory of the proxy
// process pid (AnonKiB, read idleSettle after each half went idle), and how
// long a new session (startup to first result, the mean of pgbench -C for
// a few seconds) took before them and with all n open.
//
// Why the second half's: the growth from before any session depended on
// the state the proxy was in when that first reading was taken. interlockd
// gives a load's garbage back once quiet, so read before it had, it held
// megabytes the sessions then reused, and the same build measured 12 to 33
// KiB a session. Both readings now find the proxy in the same state, with
// sessions open and idle.
func IdleSessions(b testing.TB, pg *Postgres, cgroup string, pid, port int, user, password string, n int) (kibPerSession float64, unloaded, loaded time.Duration) {
	b.Helper()
	start := func() time.Duration {
		r := PgbenchIn(b, cgroup, "127.0.0.1", port, user, password, 3, []string{"-S", "-C", "-c", "1", "-j", "1"})
		return time.Duration(float64(time.Second) / r.TPS)
	}
	unloaded = start()
	half := n / 2
	stop := openIdleSessions(b, pg, cgroup, port, user, password, half, 0)
	defer stop()
	time.Sleep(idleSettle)
	before := AnonKiB(pid)
	stop2 := openIdleSessions(b, pg, cgroup, port, user, password, n-half, half)
	defer stop2()
	time.Sleep(idleSettle)
	kibPerSession = float64(AnonKiB(pid)-before) / float64(n-half)
	loaded = start()
	return kibPerSession, unloaded, loaded
}

// idleSettle is how long IdleSessions leaves its sessions idle before it
// reads the proxy's memory: longer than interlockd's relay waits before it
// gives an idle session's goroutines back (a second), so the sessions are
// measured as they stay, not as they were at their last statement.
const idleSettle = 3 * time.Second

// OpenIdleSessions opens n PostgreSQL sessions through port with pgbench
// (from cgroup, unless ""), each of which runs one query and waits, and
// returns once the server has all n waiting. stop ends them and waits for
// their ends to be done with, so that they are not the next measurement's.
func OpenIdleSessions(b testing.TB, pg *Postgres, cgroup string, port int, user, password string, n int) (stop func()) {
	b.Helper()
	return openIdleSessions(b, pg, cgroup, port, user, password, n, 0)
}

// openIdleSessions is OpenIdleSessions with open idle sessions of an
// earlier call already waiting at the server.
func openIdleSessions(b testing.TB, pg *Postgres, cgroup string, port int, user, password string, n, open int) (stop func()) {
	b.Helper()
	// The server's view of the sessions: backends that ran the script's
	// query and wait for the next.
	const query = "SELECT 'interlock-idle';"
	idle := func() int {
		v, _ := strconv.Atoi(pg.Psql(b, "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle' AND query = '"+
			strings.ReplaceAll(query, "'", "''")+"'"))
		return v
	}
	script := filepath.Join(b.TempDir(), "idle.sql")
	if err := os.WriteFile(script, []byte(query+"\n\\sleep 600 s\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd, done := pgbenchCmd(b, cgroup, password, []string{"-n", "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", user,
		"-c", strconv.Itoa(n), "-j", "2", "-T", "600", "-f", script, "postgres"})
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		done()
		b.Fatalf("pgbench: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Kill()
		<-exited
		done()
		// The sessions' ends (a revoked credential each, through
		// Interlock) are not the next measurement's.
		for deadline := time.Now().Add(time.Minute); idle() > open && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for idle() < open+n {
		select {
		case <-exited:
			stop()
			b.Fatalf("%d idle sessions: pgbench ended\n%s", n, out.String())
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			got := idle() - open
			stop()
			b.Fatalf("%d idle sessions: %d open\n%s", n, got, out.String())
		}
	}
	return stop
}

// AnonKiB returns process pid's anonymous resident memory in KiB (RssAnon,
// from /proc): its heap, stacks and other memory of its own, where a proxy
// keeps what it holds per session. The rest of its RSS (RssFile) is its
// program's pages, read in once by whatever first runs them and shared
// with the page cache: interlockd's first 300 idle sessions, on a daemon
// that had served none, read in 3.8 to 4.4 MB of its code and tables,
// which 10 000 sessions would not multiply, and which counted as 13 to 15
// KiB of each session's RSS.
func AnonKiB(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssAnon:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// PgbenchSeconds is how long each pgbench run lasts: 5 s, or
// INTERLOCK_PGBENCH_SECONDS.
func PgbenchSeconds() int {
	if s, err := strconv.Atoi(os.Getenv("INTERLOCK_PGBENCH_SECONDS")); err == nil && s > 0 {
		return s
	}
	return 5
}
