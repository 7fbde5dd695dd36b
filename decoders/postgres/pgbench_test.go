package postgres

import (
	"os"
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
// through PgBouncer in session mode and HAProxy as a TCP relay for reference,
// one pgbench run of each per iteration in turn; use -benchtime=3x for
// medians of 3. It reports TPS,
// the ratio to direct, the p50 latency added over direct, each proxy's
// context switches and CPU time per transaction.
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
	proxies := append([]testenv.Baseline{{Name: "relay", Port: relayPort, PID: os.Getpid(), User: "agent"}}, testenv.StartBaselines(b, pg)...)
	seconds := testenv.PgbenchSeconds()
	for _, sc := range testenv.PgbenchScenarios {
		b.Run(sc.Name, func(b *testing.B) {
			var direct []testenv.PgbenchResult
			relayed := make([][]testenv.PgbenchResult, len(proxies))
			for i := 0; i < b.N; i++ {
				direct = append(direct, testenv.Pgbench(b, pg.Host, pg.Port, pg.Superuser, pg.Password, seconds, sc.Args))
				for j, p := range proxies {
					relayed[j] = append(relayed[j], testenv.MeasureProxy(p.PID, seconds, func() testenv.PgbenchResult {
						return testenv.Pgbench(b, "127.0.0.1", p.Port, p.User, p.Password, seconds, sc.Args)
					}))
				}
			}
			d := testenv.MedianPgbench(direct)
			b.ReportMetric(d.TPS, "direct-tps")
			b.ReportMetric(d.P50, "direct-p50-µs")
			for j, p := range proxies {
				r := testenv.MedianPgbench(relayed[j])
				b.ReportMetric(r.TPS, p.Name+"-tps")
				b.ReportMetric(100*r.TPS/d.TPS, p.Name+"-%")
				b.ReportMetric(r.P50-d.P50, p.Name+"-added-p50-µs")
				b.ReportMetric(r.Switches, p.Name+"-switches/txn")
				b.ReportMetric(r.CPUPerTxn, p.Name+"-cpu-µs/txn")
			}
		})
	}
}
