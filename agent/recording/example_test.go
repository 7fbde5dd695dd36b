package recording_test

import (
	"context"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/recording/pcap"
	"github.com/interlock-dev/interlock/agent/store"
)

// The daemon's wiring: one store, one audit log and one recorder per
// process; one recording per proxied session.
func Example() {
	ctx := context.Background()
	stateDir, _ := os.MkdirTemp("", "interlock-example-")
	defer os.RemoveAll(stateDir)

	// SQLite in the state directory, or store.Open(ctx, "postgres://...") in fleet mode.
	st, err := store.Open(ctx, filepath.Join(stateDir, "interlock.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer st.Close()
	trail := audit.New(st, "host-a", audit.WithLogger(zerolog.Nop()))
	defer trail.Close()
	rec, err := recording.NewRecorder(st, filepath.Join(stateDir, "recordings"), "host-a",
		recording.WithAudit(trail))
	if err != nil {
		log.Fatal(err)
	}
	defer rec.Close()
	if _, err := rec.SealAbandoned(ctx); err != nil { // left open by a crash
		log.Fatal(err)
	}

	// Per session, in the proxy.
	sess, err := rec.Start(ctx, store.Session{Identity: "ci", PID: 4242, Exe: "/usr/bin/psql",
		Target: "orders", Protocol: "postgresql", ClientAddr: "127.0.0.1:40000", UpstreamAddr: "10.0.0.5:5432"}, nil)
	if err != nil {
		log.Fatal(err)
	}
	seq := sess.Message(true, 'Q', []byte("DROP TABLE orders\x00"), time.Now())
	sess.Decide(seq, recording.Verdict{Action: "deny", Rule: "no-ddl", Enforced: true, Statement: "DROP TABLE orders"}, time.Now())
	sess.Message(false, 'E', []byte("SERROR\x00C42501\x00Mdenied by rule no-ddl\x00\x00"), time.Now())
	sess.Message(false, 'Z', []byte("I"), time.Now())
	ended, err := sess.Finish(ctx, recording.End{Outcome: "closed"})
	if err != nil {
		log.Fatal(err)
	}

	// Daemon-wide events, and the operator side.
	trail.Record(audit.PolicyReloaded{Path: "/etc/interlock/policy.yaml", Rules: 12})
	if err := trail.Flush(ctx); err != nil {
		log.Fatal(err)
	}
	res, _ := audit.Verify(ctx, st, "host-a")        // interlock audit verify
	_ = audit.Export(ctx, st, "", os.Stdout)         // interlock audit export
	_, _ = st.ListSessions(ctx, store.SessionFilter{ // interlock sessions --identity ci --action deny
		Identity: "ci", Action: "deny", Since: time.Now().Add(-24 * time.Hour)})
	_ = recording.Replay(ctx, st, ended.ID, os.Stdout) // interlock replay ID
	f, _ := os.Create(filepath.Join(stateDir, "s.pcap"))
	if ss, rd, err := recording.OpenSession(ctx, st, ended.ID); err == nil { // interlock export ID --pcap FILE
		_ = recording.WriteConversation(ss, rd, pcap.NewWriter(f))
		rd.Close()
	}
	f.Close()
	_ = res
}
