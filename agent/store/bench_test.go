package store_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// BenchmarkAddDecisions stores the verdicts of a busy session the way the
// recorder flushes them, 1000 at a time, in the embedded SQLite store, and
// reports the cost per decision.
func BenchmarkAddDecisions(b *testing.B) {
	ctx := context.Background()
	s := openBench(b)
	ss := store.Session{Host: "h1", Identity: "ci", Target: "orders", Protocol: "postgresql", Started: time.Now().UTC()}
	if err := s.CreateSession(ctx, &ss); err != nil {
		b.Fatal(err)
	}
	const batch = 1000
	ds := make([]store.Decision, batch)
	idx := int64(0)
	b.ResetTimer()
	for range b.N {
		for i := range ds {
			ds[i] = store.Decision{SessionID: ss.ID, Index: idx, Seq: 2 * idx, Time: ss.Started, Action: "allow",
				Rule: "pgbench", Enforced: true, Statement: fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", idx)}
			idx++
		}
		if err := s.AddDecisions(ctx, ds); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/decision")
}

// BenchmarkSessionLifecycle opens and ends a session the way every short
// proxied connection does (one decided request, a recording sealed with its
// row), in the embedded SQLite store: the store's share of a new
// connection's cost.
func BenchmarkSessionLifecycle(b *testing.B) {
	s := openBench(b)
	for range b.N {
		sessionLifecycle(b, s)
	}
}

// BenchmarkSessionLifecycleParallel is BenchmarkSessionLifecycle with
// sessions overlapping, as a daemon's do.
func BenchmarkSessionLifecycleParallel(b *testing.B) {
	s := openBench(b)
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			sessionLifecycle(b, s)
		}
	})
}

func sessionLifecycle(b *testing.B, s *store.Store) {
	ctx := context.Background()
	ss := store.Session{Host: "h1", Identity: "ci", Target: "forge", Protocol: "http", ClientAddr: "127.0.0.1:40000",
		UpstreamAddr: "127.0.0.1:443", Recording: "/var/lib/interlock/recordings/x.ilrec"}
	if err := s.CreateSession(ctx, &ss); err != nil {
		b.Fatal(err)
	}
	if err := s.EndSession(ctx, ss.ID, store.SessionEnd{BytesIn: 100, BytesOut: 200, Messages: 2, Outcome: "closed",
		RecordingSHA256: "00", RecordingSize: 300, Recording: bytes.Repeat([]byte("r"), 600),
		Decisions: []store.Decision{{SessionID: ss.ID, Seq: 1, Time: time.Now(), Action: "allow", Rule: "read", Enforced: true,
			Statement: "GET /repos/acme/x"}}}); err != nil {
		b.Fatal(err)
	}
}

// openBench opens an embedded SQLite store for a benchmark.
func openBench(b *testing.B) *store.Store {
	s, err := store.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "interlock.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkShortSessions stores short sessions the way a busy proxy does
// (eight at once per processor, each one decided request and a recording
// of a few hundred bytes): each session's row queued at its start, its
// three audit records through an audit log, its end shared with the
// others' in the writer's transactions. It reports the process's CPU per
// session, what the store adds to a new connection; its ns/op is mostly
// the writer's wait for company (writeLinger).
func BenchmarkShortSessions(b *testing.B) {
	s := openBench(b)
	log := audit.New(s, "h1")
	defer log.Close()
	recording := bytes.Repeat([]byte("r"), 406)
	b.SetParallelism(8)
	cpu0 := testenv.ProcessCPU(os.Getpid())
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			ss := store.Session{Host: "h1", Identity: "ci-bot", PID: 3916, Exe: "/usr/bin/wrk", Cgroup: "/interlock/ci-bot-06h4g0anv73d0qa1",
				Target: "forge", Protocol: "http", ClientAddr: "127.0.0.1:47588", UpstreamAddr: "127.0.0.1:443",
				Recording: "/var/lib/interlock/recordings/x.ilrec"}
			if err := s.BeginSession(ctx, &ss, func(err error) { b.Error(err) }); err != nil {
				b.Error(err)
				return
			}
			log.Record(audit.ConnectionOpened{Session: ss.ID, Identity: ss.Identity, PID: ss.PID, Exe: ss.Exe, Cgroup: ss.Cgroup,
				Target: ss.Target, Protocol: ss.Protocol, Dst: ss.UpstreamAddr, Client: ss.ClientAddr})
			end := store.SessionEnd{BytesIn: 64, BytesOut: 149, Messages: 3, Outcome: "closed",
				RecordingSHA256: "2eeb5fcf04b6698e83e681254348e3192b93e4b9609f2a2fb63eeab8589f1db0", RecordingSize: int64(len(recording)),
				Recording: recording,
				Decisions: []store.Decision{{SessionID: ss.ID, Seq: 1, Time: time.Now(), Action: "allow", Rule: "read", Enforced: true,
					Statement: "GET /repos/acme/x"}}}
			if err := s.EndSessionShared(ctx, ss.ID, end); err != nil {
				b.Error(err)
				return
			}
			log.Record(audit.ConnectionClosed{Session: ss.ID, Identity: ss.Identity, Target: ss.Target, Dst: ss.UpstreamAddr,
				Outcome: "closed", BytesIn: 64, BytesOut: 149, Messages: 3})
			log.Record(audit.RecordingSealed{Session: ss.ID, SHA256: end.RecordingSHA256, Size: end.RecordingSize, Messages: 3})
		}
	})
	if err := log.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64((testenv.ProcessCPU(os.Getpid())-cpu0).Microseconds())/float64(b.N), "cpu-µs/session")
}
