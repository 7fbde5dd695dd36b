package postgres

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"

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
		ports = append(ports, testenv.StartPgBouncer(b, pg))
		names = append(names, "pgbouncer")
	} else {
		b.Log("pgbouncer not installed: no reference figures")
	}
	seconds := testenv.PgbenchSeconds()
	for _, sc := range testenv.PgbenchScenarios {
		b.Run(sc.Name, func(b *testing.B) {
			var direct []testenv.PgbenchResult
			relayed := make([][]testenv.PgbenchResult, len(ports))
			for i := 0; i < b.N; i++ {
				direct = append(direct, testenv.Pgbench(b, pg.Host, pg.Port, pg.Superuser, pg.Password, seconds, sc.Args))
				for j, port := range ports {
					before := testenv.CPUTime()
					r := testenv.Pgbench(b, "127.0.0.1", port, "agent", "", seconds, sc.Args)
					r.CPUPerTxn = (testenv.CPUTime() - before).Seconds() * 1e6 / (r.TPS * float64(seconds))
					relayed[j] = append(relayed[j], r)
				}
			}
			d := testenv.MedianPgbench(direct)
			b.ReportMetric(d.TPS, "direct-tps")
			b.ReportMetric(d.P50, "direct-p50-µs")
			for j, name := range names {
				r := testenv.MedianPgbench(relayed[j])
				b.ReportMetric(r.TPS, name+"-tps")
				b.ReportMetric(100*r.TPS/d.TPS, name+"-%")
				b.ReportMetric(r.P50-d.P50, name+"-added-p50-µs")
				if name == "relay" {
					b.ReportMetric(r.CPUPerTxn, name+"-cpu-µs/txn")
				}
			}
		})
	}
}
