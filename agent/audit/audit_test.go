package audit_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/audit/chain"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/store/storetest"
	"github.com/interlock-dev/interlock/policy"
)

func sampleEvents() []audit.Event {
	return []audit.Event{
		audit.DaemonStarted{Version: "test", PID: 1},
		audit.ConnectionOpened{Session: "s1", Identity: "ci", PID: 42, Exe: "/usr/bin/psql", Target: "orders",
			Protocol: "postgresql", Client: "127.0.0.1:5000", Upstream: "127.0.0.1:5432"},
		audit.CredentialIssued{Session: "s1", Target: "orders", Source: "embedded", Username: "il_s1", TTL: time.Hour},
		audit.Decision{Session: "s1", Identity: "ci", Target: "orders", Action: "deny", Rule: "no-drop", Enforced: true,
			Operation: "DROP", Tables: []string{"orders"}, Statement: audit.SQLStatement("DROP TABLE orders")},
		audit.ApprovalRequested{Approval: "a1", Session: "s1", Identity: "ci", Target: "orders", Rule: "hold",
			Reviewers: []string{"alice"}, Quorum: 1, Deadline: time.Unix(1e9, 0).UTC(),
			Statement: audit.SQLStatement("DELETE FROM orders WHERE id = 7")},
		audit.ApprovalDecided{Approval: "a1", Session: "s1", State: "approved",
			Votes: []audit.ApprovalVote{{Reviewer: "alice", Approve: true, Comment: "ok <fine> & done"}}},
		audit.RecordingSealed{Session: "s1", SHA256: strings.Repeat("ab", 32), Size: 100, Messages: 9},
		audit.CredentialRevoked{Session: "s1", Target: "orders", Source: "embedded", Username: "il_s1"},
		audit.ConnectionClosed{Session: "s1", Identity: "ci", Target: "orders", Outcome: "closed", Duration: time.Second},
		audit.PolicyReloaded{Path: "/etc/interlock/policy.yaml", SHA256: "00", Rules: 3},
		audit.DNSQuestion{Identity: "ci", PID: 42, Transport: "udp", Dst: "192.0.2.53:53", Name: "x.example",
			Type: "A", Action: "deny", Reason: "name-not-allowed", Rcode: "REFUSED"},
		audit.ProtocolError{Session: "s2", Identity: "ci", Target: "orders", Error: "message length 2000000000 over limit"},
	}
}

func TestChain(t *testing.T) {
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		ctx := context.Background()
		st := open(t)
		var logBuf bytes.Buffer
		l := audit.New(st, "host-a", audit.WithLogger(zerolog.New(&logBuf)))
		t.Cleanup(func() { l.Close() })
		evs := sampleEvents()
		for _, ev := range evs[:5] {
			if _, err := l.RecordNow(ctx, ev); err != nil {
				t.Fatal(err)
			}
		}
		for _, ev := range evs[5:] {
			l.Record(ev)
		}
		if err := l.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// Each payload is the event's JSON as json.Marshal writes it,
		// batched events' too (one buffer encodes a batch's payloads).
		rows, err := st.DB().QueryContext(ctx, st.Rebind("SELECT payload FROM audit_records WHERE host = ? ORDER BY seq"), "host-a")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; rows.Next(); i++ {
			var payload string
			if err := rows.Scan(&payload); err != nil {
				t.Fatal(err)
			}
			if want, _ := json.Marshal(evs[i]); payload != string(want) {
				t.Errorf("payload %d = %s, want %s", i+1, payload, want)
			}
		}
		rows.Close()
		// Another host's chain in the same store is independent.
		lb := audit.New(open(t), "host-b")
		t.Cleanup(func() { lb.Close() })
		if _, err := lb.RecordNow(ctx, audit.DaemonStarted{Version: "b"}); err != nil {
			t.Fatal(err)
		}

		res, err := audit.Verify(ctx, st, "host-a")
		if err != nil {
			t.Fatal(err)
		}
		if res.Broken != nil || res.Records != uint64(len(evs)) {
			t.Fatalf("fresh chain: %+v", res)
		}
		all, err := audit.VerifyAll(ctx, st)
		if err != nil || len(all) != 2 || all[1].Host != "host-b" || all[1].Records != 1 || all[1].Broken != nil {
			t.Fatalf("verify all: %+v %v", all, err)
		}

		// The log hook saw every record with its hash.
		lines := strings.Split(strings.TrimSpace(logBuf.String()), "\n")
		if len(lines) != len(evs) {
			t.Fatalf("log has %d lines, want %d:\n%s", len(lines), len(evs), logBuf.String())
		}
		var last struct {
			Message, Kind, Hash string
			Seq                 uint64
			Event               map[string]any
		}
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
			t.Fatal(err)
		}
		if last.Message != "audit" || last.Seq != uint64(len(evs)) || last.Hash != res.Head.Hash || last.Kind != "protocol.error" {
			t.Fatalf("last log line %s", lines[len(lines)-1])
		}

		// Export: JSON lines from which every hash can be recomputed.
		var out bytes.Buffer
		if err := audit.Export(ctx, st, "host-a", &out); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(&out)
		n := 0
		for sc.Scan() {
			var r chain.ExportedRecord
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				t.Fatal(err)
			}
			n++
			got := chain.Hash(chain.Record{Host: r.Host, Seq: r.Seq, Time: r.Time, Kind: r.Kind,
				Payload: string(r.Payload), PrevHash: r.PrevHash})
			if got != r.Hash || r.Seq != uint64(n) {
				t.Fatalf("exported record %d does not recompute: %s", n, sc.Text())
			}
		}
		if n != len(evs) {
			t.Fatalf("exported %d records", n)
		}

		db := st.DB()
		exec := func(q string, args ...any) {
			t.Helper()
			if _, err := db.ExecContext(ctx, st.Rebind(q), args...); err != nil {
				t.Fatal(err)
			}
		}
		expectBreak := func(seq uint64, reason string) {
			t.Helper()
			res, err := audit.Verify(ctx, st, "host-a")
			if err != nil {
				t.Fatal(err)
			}
			if res.Broken == nil || res.Broken.Seq != seq || res.Broken.Reason != reason {
				t.Fatalf("verify after tampering: %+v, want break at %d (%s)", res.Broken, seq, reason)
			}
			if res.Records != seq-1 {
				t.Fatalf("verified %d records before the break at %d", res.Records, seq)
			}
			if !strings.Contains(res.String(), fmt.Sprintf("BROKEN at seq %d: %s", seq, reason)) {
				t.Fatalf("verdict line %q", res.String())
			}
			t.Logf("detected: %v", res)
		}

		// Edit one payload: that record's hash no longer matches.
		var orig string
		if err := db.QueryRowContext(ctx, st.Rebind("SELECT payload FROM audit_records WHERE host = ? AND seq = 4"), "host-a").Scan(&orig); err != nil {
			t.Fatal(err)
		}
		exec("UPDATE audit_records SET payload = ? WHERE host = ? AND seq = 4", strings.Replace(orig, `"deny"`, `"allow"`, 1), "host-a")
		expectBreak(4, "hash mismatch")
		exec("UPDATE audit_records SET payload = ? WHERE host = ? AND seq = 4", orig, "host-a")
		if res, _ := audit.Verify(ctx, st, "host-a"); res.Broken != nil {
			t.Fatalf("restored chain still broken: %v", res.Broken)
		}

		// Edit the time: also covered by the hash.
		exec("UPDATE audit_records SET time_ns = time_ns + 1 WHERE host = ? AND seq = 2", "host-a")
		expectBreak(2, "hash mismatch")
		exec("UPDATE audit_records SET time_ns = time_ns - 1 WHERE host = ? AND seq = 2", "host-a")

		// Rewrite a record and recompute its own hash: the next record no
		// longer links to it.
		var r3 store.AuditRecord
		st.AuditRecords(ctx, "host-a", 2, func(r store.AuditRecord) error {
			if r.Seq == 3 {
				r3 = r
			}
			return nil
		})
		forged := r3
		forged.Payload = strings.Replace(r3.Payload, "embedded", "vault", 1)
		forged.Hash = chain.Hash(chain.Record(forged))
		exec("UPDATE audit_records SET payload = ?, hash = ? WHERE host = ? AND seq = 3", forged.Payload, forged.Hash, "host-a")
		expectBreak(4, "prev-hash mismatch")
		exec("UPDATE audit_records SET payload = ?, hash = ? WHERE host = ? AND seq = 3", r3.Payload, r3.Hash, "host-a")

		// Delete one record: the gap is named.
		exec("DELETE FROM audit_records WHERE host = ? AND seq = 6", "host-a")
		expectBreak(6, "gap")
		// host-b is unaffected.
		if res, _ := audit.Verify(ctx, st, "host-b"); res.Broken != nil {
			t.Fatalf("host-b broken by host-a's tampering: %v", res.Broken)
		}
	})
}

// Two daemons (two store handles, two Logs) writing the same host's chain at
// once never fork it.
func TestConcurrentAppend(t *testing.T) {
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		ctx := context.Background()
		logs := []*audit.Log{audit.New(open(t), "h"), audit.New(open(t), "h")}
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				ev := audit.Decision{Session: fmt.Sprint(i), Action: "allow", Statement: audit.SQLStatement("SELECT 1")}
				if i%2 == 0 {
					if _, err := logs[i%2].RecordNow(ctx, ev); err != nil {
						t.Error(err)
					}
				} else {
					logs[i%2].Record(ev)
				}
			})
		}
		wg.Wait()
		for _, l := range logs {
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
		}
		st := open(t)
		res, err := audit.Verify(ctx, st, "h")
		if err != nil || res.Broken != nil || res.Records != 40 {
			t.Fatalf("after concurrent appends: %+v %v", res, err)
		}
	})
}

// A store outage delays posted events; it never drops them.
func TestPostSurvivesOutage(t *testing.T) {
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		ctx := context.Background()
		st := open(t)
		l := audit.New(st, "h")
		t.Cleanup(func() { l.Close() })
		if _, err := l.RecordNow(ctx, audit.DaemonStarted{Version: "v"}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.DB().ExecContext(ctx, "ALTER TABLE audit_records RENAME TO audit_records_away"); err != nil {
			t.Fatal(err)
		}
		for i := range 10 {
			l.Record(audit.PolicyReloaded{Path: fmt.Sprint(i)})
		}
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if err := l.Flush(short); err == nil {
			t.Fatal("flush succeeded while the audit table was gone")
		}
		if _, err := st.DB().ExecContext(ctx, "ALTER TABLE audit_records_away RENAME TO audit_records"); err != nil {
			t.Fatal(err)
		}
		long, cancel2 := context.WithTimeout(ctx, 20*time.Second)
		defer cancel2()
		if err := l.Flush(long); err != nil {
			t.Fatal(err)
		}
		res, err := audit.Verify(ctx, st, "h")
		if err != nil || res.Broken != nil || res.Records != 11 {
			t.Fatalf("after the outage: %v %v", res, err)
		}
	})
}

// While the store refuses the chain's writes, Record blocks once its queue
// is full rather than letting events pile up without bound, and every
// event, blocked or queued, is appended once the store is back.
func TestRecordBlocksWhileStoreRefuses(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, t.TempDir()+"/audit.db")
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l := audit.New(st, "h")
	defer l.Close()
	if _, err := st.DB().ExecContext(ctx, "ALTER TABLE audit_records RENAME TO audit_records_away"); err != nil {
		t.Fatal(err)
	}
	// The writer holds one batch it retries and the queue holds 4096
	// more: twice that and some is more than both can.
	const total = 2*4096 + 100
	var posted atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			l.Record(audit.PolicyReloaded{Path: fmt.Sprint(i)})
			posted.Add(1)
		}
	}()
	time.Sleep(500 * time.Millisecond)
	if n := posted.Load(); n == total {
		t.Fatalf("all %d events posted while the store refused them: the queue is unbounded", n)
	}
	if _, err := st.DB().ExecContext(ctx, "ALTER TABLE audit_records_away RENAME TO audit_records"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("Record still blocked 30 s after the store came back (%d posted)", posted.Load())
	}
	flushed, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := l.Flush(flushed); err != nil {
		t.Fatal(err)
	}
	res, err := audit.Verify(ctx, st, "h")
	if err != nil || res.Broken != nil || res.Records != total {
		t.Fatalf("after the outage: %+v %v, want %d records", res, err, total)
	}
	// In the order they were recorded.
	var i int
	err = st.AuditRecords(ctx, "h", 0, func(r store.AuditRecord) error {
		if want := fmt.Sprintf(`"path":"%d"`, i); !strings.Contains(r.Payload, want) {
			return fmt.Errorf("record %d: %s, want %s", r.Seq, r.Payload, want)
		}
		i++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// withEventLog opens a store and a Log of chain "h" on it whose event log,
// at level, is the buffer returned; both close when the test ends.
func withEventLog(t *testing.T, level zerolog.Level) (*store.Store, *audit.Log, *bytes.Buffer) {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), t.TempDir()+"/audit.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logBuf := new(bytes.Buffer)
	l := audit.New(st, "h", audit.WithEventLog(zerolog.New(logBuf).Level(level)))
	t.Cleanup(func() { l.Close() })
	return st, l, logBuf
}

// A caller's container reaches the event log and the chain with the
// connection it opened: an identity matched by image and label is
// auditable by them.
func TestConnectionOpenedNamesContainer(t *testing.T) {
	ctx := context.Background()
	st, l, logBuf := withEventLog(t, zerolog.DebugLevel)
	c := &policy.Container{Runtime: "docker", ID: strings.Repeat("ab", 32), Image: "ghcr.io/acme/clients:1",
		ImageID: "sha256:" + strings.Repeat("cd", 32), Labels: map[string]string{"ci.job": "build-7"}}
	if _, err := l.RecordNow(ctx, audit.ConnectionOpened{Session: "s1", Identity: "ci-containers", Container: c}); err != nil {
		t.Fatal(err)
	}
	var line struct {
		Event     string
		Container *policy.Container
	}
	if err := json.Unmarshal(logBuf.Bytes(), &line); err != nil {
		t.Fatalf("event log %q: %v", logBuf.String(), err)
	}
	if line.Event != "connection_open" || !reflect.DeepEqual(line.Container, c) {
		t.Errorf("event log line %s: want container %+v", logBuf.String(), c)
	}
	var out bytes.Buffer
	if err := audit.Export(ctx, st, "h", &out); err != nil {
		t.Fatal(err)
	}
	var r chain.ExportedRecord
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	var payload audit.ConnectionOpened
	if err := json.Unmarshal(r.Payload, &payload); err != nil || !reflect.DeepEqual(payload.Container, c) {
		t.Errorf("chain record %s: want container %+v (%v)", r.Payload, c, err)
	}
	// A caller in no container says nothing of one.
	logBuf.Reset()
	l.RecordNow(ctx, audit.ConnectionOpened{Session: "s2", Identity: "ci"})
	if strings.Contains(logBuf.String(), "container") {
		t.Errorf("event log of a caller in no container: %s", logBuf.String())
	}
}

// TestAllowedStatementCostsNoAllocation: an enforced allow is the event of
// nearly every statement a session runs; below debug level it is not
// logged, and recording it must not allocate (it did twice: the decision
// made an Event, its statement a fmt.Stringer for a log line never
// written).
func TestAllowedStatementCostsNoAllocation(t *testing.T) {
	_, l, logBuf := withEventLog(t, zerolog.InfoLevel)
	d := audit.Decision{Session: "s1", Identity: "ci", Target: "db", Action: "allow", Rule: "read",
		Enforced: true, Operation: "query", Statement: audit.SQLStatement("SELECT 1")}
	if allocs := testing.AllocsPerRun(100, func() { l.Decided(d) }); allocs != 0 {
		t.Errorf("%.1f allocations an allowed statement, want 0", allocs)
	}
	if logBuf.Len() != 0 {
		t.Errorf("an allow was logged at info level: %s", logBuf.String())
	}
}

// TestMaskedStatementIsChainedByItsRecording: an enforced mask lets its
// request through, as an allow does, so the session's recording (its
// verdict and rule beside the statement, sealed into the chain) is its
// record, and it is logged at debug level only. A mask in audit mode and a
// denial each have a record of their own and a line at info level.
func TestMaskedStatementIsChainedByItsRecording(t *testing.T) {
	ctx := context.Background()
	st, l, logBuf := withEventLog(t, zerolog.InfoLevel)
	for _, d := range []struct {
		action   string
		enforced bool
	}{{"mask", true}, {"mask", false}, {"deny", true}} {
		l.Decided(audit.Decision{Session: "s1", Identity: "ci", Target: "db", Action: d.action, Rule: "r-" + d.action,
			Enforced: d.enforced, Operation: "query", Statement: audit.SQLStatement("SELECT email FROM users")})
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := audit.Export(ctx, st, "h", &out); err != nil {
		t.Fatal(err)
	}
	var chained []string
	for line := range strings.Lines(out.String()) {
		var r chain.ExportedRecord
		var d struct {
			Action   string
			Enforced bool
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil || json.Unmarshal(r.Payload, &d) != nil {
			t.Fatalf("exported record %q", line)
		}
		chained = append(chained, fmt.Sprintf("%s enforced=%v", d.Action, d.Enforced))
	}
	if got := strings.Join(chained, ", "); got != "mask enforced=false, deny enforced=true" {
		t.Errorf("chain holds %q, want the audit mode's mask and the denial", got)
	}
	if n := strings.Count(logBuf.String(), `"event":"decision"`); n != 2 || strings.Contains(logBuf.String(), `"action":"mask"`) {
		t.Errorf("want the audit mode's mask and the denial logged at info level, not the enforced mask:\n%s", logBuf.String())
	}
}

func TestSQLStatementRedacts(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"SELECT * FROM patients WHERE ssn = '123-45-6789'", "SELECT * FROM patients WHERE ssn = ?"},
		{"ALTER ROLE app PASSWORD 'hunter2'", "ALTER ROLE app PASSWORD ?"},
		{"select 'it''s', E'a\\'b', $$x$$, $tag$ y $tag$, B'1010', X'ff', 42, 3.5e-3, .5",
			"select ?, ?, ?, ?, ?, ?, ?, ?, ?"},
		{`SELECT "weird ""col""", t1.c2 FROM t1 WHERE x = $1 -- secret comment`, `SELECT "weird ""col""", t1.c2 FROM t1 WHERE x = $1`},
		{"INSERT INTO t (a) VALUES ('x') /* card 4111111111111111 */", "INSERT INTO t (a) VALUES (?)"},
		{"SELECT 'unterminated", "SELECT ?"},
		{"UPDATE users SET name = U&'d\\0061t' WHERE id=7", "UPDATE users SET name = U&? WHERE id=?"},
	} {
		if got := audit.SQLStatement(tc.in).String(); got != tc.want {
			t.Errorf("SQLStatement(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	op := audit.OpaqueStatement("SET password hunter2")
	if strings.Contains(op.String(), "hunter2") || !strings.HasPrefix(op.String(), "sha256:") {
		t.Fatalf("opaque statement %q", op)
	}
}

// A statement that carried a value the policy masks, or a password, reaches
// the trail only in redacted form: the stored payload does not contain it.
func TestSecretsNeverStored(t *testing.T) {
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		ctx := context.Background()
		st := open(t)
		l := audit.New(st, "h")
		t.Cleanup(func() { l.Close() })
		secrets := []string{"123-45-6789", "hunter2", "4111111111111111"}
		for _, ev := range []audit.Event{
			audit.Decision{Action: "mask", Rule: "mask-ssn", Statement: audit.SQLStatement("SELECT name FROM p WHERE ssn = '123-45-6789'")},
			audit.ApprovalRequested{Approval: "a", Statement: audit.SQLStatement("ALTER USER x WITH PASSWORD 'hunter2'")},
			audit.Decision{Action: "deny", Statement: audit.SQLStatement("UPDATE cards SET n = 4111111111111111")},
		} {
			if _, err := l.RecordNow(ctx, ev); err != nil {
				t.Fatal(err)
			}
		}
		var out bytes.Buffer
		if err := audit.Export(ctx, st, "", &out); err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if strings.Contains(out.String(), s) {
				t.Fatalf("secret %q reached the audit trail:\n%s", s, out.String())
			}
		}
	})
}

// No event type may grow a field that can carry a secret or a raw value: the
// only request text is a redacted Statement.
func TestEventFieldsCannotCarrySecrets(t *testing.T) {
	forbidden := []string{"password", "secret", "token", "value", "row", "body", "query", "sql", "data"}
	for _, ev := range sampleEvents() {
		typ := reflect.TypeOf(ev)
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := strings.ToLower(f.Name)
			for _, bad := range forbidden {
				if strings.Contains(name, bad) {
					t.Errorf("%s.%s: audit events must not have a %q field", typ.Name(), f.Name, bad)
				}
			}
			if strings.Contains(name, "statement") && f.Type != reflect.TypeOf(audit.Statement{}) {
				t.Errorf("%s.%s carries request text but is not an audit.Statement", typ.Name(), f.Name)
			}
		}
	}
}

func FuzzSQLStatement(f *testing.F) {
	for _, s := range []string{"SELECT 1", "SELECT 'a''b'", "$$", "$a$ $a", "E'\\", "/* /* */", `"x""`, "1e+", "x'", ".5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		out := audit.SQLStatement(sql).String()
		if len(out) > len(sql) {
			t.Fatalf("redaction grew %q to %q", sql, out)
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	for _, mode := range []string{"Append", "Post"} {
		b.Run(mode, func(b *testing.B) {
			st, err := store.OpenSQLite(context.Background(), b.TempDir()+"/bench.db")
			if err != nil {
				b.Fatal(err)
			}
			defer st.Close()
			l := audit.New(st, "bench")
			ev := audit.Decision{Session: "0123456789abcdef", Identity: "ci", Target: "orders", Action: "allow",
				Rule: "read", Enforced: true, Operation: "SELECT", Statement: audit.SQLStatement("SELECT * FROM t WHERE id = 1")}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if mode == "Append" {
					if _, err := l.RecordNow(context.Background(), ev); err != nil {
						b.Fatal(err)
					}
				} else {
					l.Record(ev)
				}
			}
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
