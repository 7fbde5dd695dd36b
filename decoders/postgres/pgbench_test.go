package postgres

import (
	"bufio"
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

	"github.com/interlock-dev/interlock/agent/testenv"
)

// nopRecorder makes the relay take its recording path without storing.
type nopRecorder struct{}

func (nopRecorder) Record(*Message) {}

// BenchmarkPgbench runs real pgbench against a throwaway PostgreSQL directly,
// through the relay (trivial enforcer, no-op recorder) and, when installed,
// through PgBouncer in session mode for reference, one pgbench run of each
// per iteration in turn; use -benchtime=3x for medians of 3. It reports TPS,
// the ratio to direct, the p50 latency added over direct, and the relay's CPU
// time per transaction.
//
//	go test ./decoders/postgres -run=NONE -bench=Pgbench -benchtime=3x
func BenchmarkPgbench(b *testing.B) {
	if _, err := exec.LookPath("pgbench"); err != nil {
		testenv.Unavailable(b, "pgbench not installed (apt-get install postgresql-client)")
	}
	pg := testenv.StartPostgres(b)
	if out, err := exec.Command("pgbench", "-i", "-q", "-s", "10", "-h", pg.SocketDir, "-p", strconv.Itoa(pg.Port), "-U", pg.Superuser, "postgres").CombinedOutput(); err != nil {
		b.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	relay := startProxy(b, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll, Recorder: nopRecorder{}} })
	_, port, _ := strings.Cut(relay.Addr(), ":")
	relayPort, _ := strconv.Atoi(port)
	ports := []int{relayPort}
	names := []string{"relay"}
	if _, err := exec.LookPath("pgbouncer"); err == nil {
		ports = append(ports, startPgBouncer(b, pg))
		names = append(names, "pgbouncer")
	} else {
		b.Log("pgbouncer not installed: no reference figures")
	}
	seconds := 5
	if s := os.Getenv("INTERLOCK_PGBENCH_SECONDS"); s != "" {
		seconds, _ = strconv.Atoi(s)
	}
	for _, sc := range []struct {
		name string
		args []string
	}{
		{"select-only-1client", []string{"-S", "-c", "1", "-j", "1"}},
		{"select-only-16clients", []string{"-S", "-c", "16", "-j", "2"}},
		{"tpcb-like-16clients", []string{"-c", "16", "-j", "2"}},
	} {
		b.Run(sc.name, func(b *testing.B) {
			var direct []pgbenchResult
			relayed := make([][]pgbenchResult, len(ports))
			for i := 0; i < b.N; i++ {
				direct = append(direct, runPgbench(b, pg.Host, pg.Port, pg.Superuser, pg.Password, seconds, sc.args))
				for j, port := range ports {
					before := cpuTime()
					r := runPgbench(b, "127.0.0.1", port, "agent", "", seconds, sc.args)
					r.cpuPerTxn = (cpuTime() - before).Seconds() * 1e6 / (r.tps * float64(seconds))
					relayed[j] = append(relayed[j], r)
				}
			}
			d := median(direct)
			b.ReportMetric(d.tps, "direct-tps")
			b.ReportMetric(d.p50, "direct-p50-µs")
			for j, name := range names {
				r := median(relayed[j])
				b.ReportMetric(r.tps, name+"-tps")
				b.ReportMetric(100*r.tps/d.tps, name+"-%")
				b.ReportMetric(r.p50-d.p50, name+"-added-p50-µs")
				if name == "relay" {
					b.ReportMetric(r.cpuPerTxn, name+"-cpu-µs/txn")
				}
			}
		})
	}
}

// pgbenchResult is one run: TPS, median latency, and the relay's CPU time
// (user+system of this process) per transaction, which is what the relay
// costs independent of how loaded the machine is.
type pgbenchResult struct{ tps, p50, cpuPerTxn float64 }

// median returns the median of each figure over runs.
func median(runs []pgbenchResult) pgbenchResult {
	var tps, p50, cpu []float64
	for _, r := range runs {
		tps, p50, cpu = append(tps, r.tps), append(p50, r.p50), append(cpu, r.cpuPerTxn)
	}
	m := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	return pgbenchResult{m(tps), m(p50), m(cpu)}
}

// cpuTime returns this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// runPgbench runs one pgbench and returns its TPS and the median latency of
// its transactions, from the per-transaction log.
func runPgbench(b *testing.B, host string, port int, user, password string, seconds int, args []string) pgbenchResult {
	b.Helper()
	dir := b.TempDir()
	args = append([]string{"-n", "-h", host, "-p", strconv.Itoa(port), "-U", user, "-T", strconv.Itoa(seconds),
		"-l", "--log-prefix", filepath.Join(dir, "log")}, args...)
	cmd := exec.Command("pgbench", append(args, "postgres")...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGSSLMODE=disable")
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
	return pgbenchResult{tps: tps, p50: lat[len(lat)/2]}
}

// startPgBouncer runs PgBouncer in session mode in front of pg, accepting
// any client as "agent" like the relay does, and returns its port.
func startPgBouncer(b *testing.B, pg *testenv.Postgres) int {
	b.Helper()
	dir, err := os.MkdirTemp("", "interlock-pgbouncer-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	port := testenv.FreePort(b)
	conf := fmt.Sprintf(`[databases]
postgres = host=%s port=%d user=%s password=%s dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = any
pool_mode = session
max_client_conn = 200
default_pool_size = 50
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
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return port
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			b.Fatalf("pgbouncer did not start: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
