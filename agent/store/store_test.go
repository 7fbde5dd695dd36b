package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/store/storetest"
)

// The whole suite runs once per backend, as the issue demands: every
// behaviour below must hold on SQLite and on PostgreSQL alike.
func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		t.Run("migrations", func(t *testing.T) { testMigrations(t, open) })
		t.Run("upgrade from v1", func(t *testing.T) { testUpgrade(t, open) })
		t.Run("sessions", func(t *testing.T) { testSessions(t, open) })
		t.Run("many decisions", func(t *testing.T) { testManyDecisions(t, open) })
		t.Run("decisions stored at once", func(t *testing.T) { testConcurrentDecisions(t, open) })
		t.Run("approvals", func(t *testing.T) { testApprovals(t, open) })
		t.Run("approval quorum race", func(t *testing.T) { testQuorumRace(t, open) })
		t.Run("approval expiry", func(t *testing.T) { testExpiry(t, open) })
		t.Run("audit append race", func(t *testing.T) { testAuditRace(t, open) })
		t.Run("audit append batch", func(t *testing.T) { testAuditBatch(t, open) })
	})
}

func testMigrations(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	ms, err := store.Migrations(store.SQLite)
	if err != nil || len(ms) == 0 {
		t.Fatalf("migrations: %v %v", ms, err)
	}
	// Two daemons starting at once must both end up on the latest schema
	// without tripping over each other.
	var wg sync.WaitGroup
	stores := make([]*store.Store, 3)
	for i := range stores {
		wg.Go(func() { stores[i] = open(t) })
	}
	wg.Wait()
	for _, s := range stores {
		if s == nil {
			t.Fatal("a concurrent open failed (logged above)")
		}
		v, err := s.SchemaVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v != ms[len(ms)-1].Version {
			t.Fatalf("schema version %d, want %d", v, ms[len(ms)-1].Version)
		}
	}
	var n int
	if err := stores[0].DB().QueryRowContext(ctx, "SELECT COUNT(*) FROM schema_migrations").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != len(ms) {
		t.Fatalf("schema_migrations has %d rows, want %d (a migration ran twice?)", n, len(ms))
	}
}

// A store created at schema version 1, with data, is brought to the latest
// version by the next Open, and its data survives.
func testUpgrade(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	s := open(t)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := s.DB().ExecContext(ctx, s.Rebind(q), args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, tbl := range []string{"recording_parts", "decision_batches", "approval_votes", "approvals", "audit_records", "sessions", "schema_migrations"} {
		exec("DROP TABLE " + tbl)
	}
	ms, _ := store.Migrations(s.Backend())
	exec(`CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)`)
	exec(ms[0].SQL)
	exec("INSERT INTO schema_migrations VALUES (?, ?, ?)", ms[0].Version, ms[0].Name, 1)
	exec("INSERT INTO sessions (id, host, identity, target, protocol, started_ns) VALUES ('old', 'h', 'ci', 't', 'postgresql', 1)")
	exec("INSERT INTO decisions (session_id, seq, time_ns, action, rule) VALUES ('old', 4, 2, 'deny', 'r')")

	s2 := open(t)
	if v, err := s2.SchemaVersion(ctx); err != nil || v != ms[len(ms)-1].Version {
		t.Fatalf("after upgrade: version %d %v", v, err)
	}
	ds, err := s2.Decisions(ctx, "old")
	if err != nil || len(ds) != 1 || ds[0].Seq != 4 || ds[0].Index != 4 || ds[0].Action != "deny" || ds[0].Rule != "r" ||
		!ds[0].Enforced || ds[0].Time != time.Unix(0, 2).UTC() {
		t.Fatalf("v1 decision after upgrade: %+v %v", ds, err)
	}
	if err := s2.AddDecisions(ctx, []store.Decision{{SessionID: "old", Index: 5, Seq: 4, Action: "allow"}}); err != nil {
		t.Fatalf("second decision on one seq after upgrade: %v", err)
	}
}

// testConcurrentDecisions stores sessions' decisions from several
// goroutines at once, with AddDecisions and EndSession, as the recorder's
// flush and ending sessions do: their JSON is encoded into buffers the
// calls share in turn (and that a call gives back when it returns), so each
// session must read back its own, whole.
func testConcurrentDecisions(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	s := open(t)
	const workers, rounds, per = 4, 6, 120
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	ids := make([]string, workers)
	for w := range workers {
		ss := store.Session{Host: "h1", Identity: "ci", Target: "orders", Protocol: "postgresql", Started: time.Now().UTC()}
		if err := s.CreateSession(ctx, &ss); err != nil {
			t.Fatal(err)
		}
		ids[w] = ss.ID
		wg.Add(1)
		go func() {
			defer wg.Done()
			idx := 0
			next := func() []store.Decision {
				var ds []store.Decision
				for range per {
					ds = append(ds, store.Decision{SessionID: ss.ID, Index: int64(idx), Seq: int64(idx), Time: ss.Started,
						Action: "allow", Enforced: true, Statement: fmt.Sprintf("SELECT '%s', %d", ss.ID, idx)})
					idx++
				}
				return ds
			}
			for range rounds {
				if err := s.AddDecisions(ctx, next()); err != nil {
					errs <- err
					return
				}
			}
			if err := s.EndSession(ctx, ss.ID, store.SessionEnd{Outcome: "closed", Decisions: next()}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, id := range ids {
		got, err := s.Decisions(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != (rounds+1)*per {
			t.Fatalf("session %s read back %d decisions, stored %d", id, len(got), (rounds+1)*per)
		}
		for i, d := range got {
			if want := fmt.Sprintf("SELECT '%s', %d", id, i); d.Index != int64(i) || d.Statement != want {
				t.Fatalf("session %s decision %d read back as %+v, want %q", id, i, d, want)
			}
		}
	}
}

// testManyDecisions stores more decisions than one INSERT and one
// transaction carry and reads every one back in order.
func testManyDecisions(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	s := open(t)
	ss := store.Session{Host: "h1", Identity: "ci", Target: "orders", Protocol: "postgresql", Started: time.Now().UTC()}
	if err := s.CreateSession(ctx, &ss); err != nil {
		t.Fatal(err)
	}
	const n = 1100
	var ds []store.Decision
	for i := range n {
		ds = append(ds, store.Decision{SessionID: ss.ID, Index: int64(i), Seq: int64(2 * i), Time: ss.Started,
			Action: "allow", Rule: "read", Enforced: i%3 != 0, Statement: fmt.Sprintf("SELECT %d", i)})
	}
	if err := s.AddDecisions(ctx, ds); err != nil {
		t.Fatal(err)
	}
	got, err := s.Decisions(ctx, ss.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("read back %d decisions, stored %d", len(got), n)
	}
	for i, d := range got {
		if d.Index != int64(i) || d.Seq != int64(2*i) || d.Enforced != (i%3 != 0) || d.Statement != fmt.Sprintf("SELECT %d", i) {
			t.Fatalf("decision %d read back as %+v", i, d)
		}
	}
	// Decisions stored again from the same first one (a flush repeated)
	// fail on the batch's key, naming them.
	if err := s.AddDecisions(ctx, ds[:3]); err == nil || !strings.Contains(err.Error(), ss.ID+"/0..2") {
		t.Fatalf("decisions stored twice: %v, want an error naming %s/0..2", err, ss.ID)
	}
	// A transaction that fails stores none of its batches and stops none
	// after it; the error names the batches not stored. The second batch
	// alternates two sessions, a row per decision: more rows than one
	// INSERT carries (64), so the first goes alone.
	var x, y store.Session
	for _, p := range []*store.Session{&x, &y} {
		*p = store.Session{Host: "h1", Identity: "ci", Target: "orders", Protocol: "postgresql", Started: time.Now().UTC()}
		if err := s.CreateSession(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	var alternating []store.Decision
	for i := range 200 {
		alternating = append(alternating, store.Decision{SessionID: []string{x.ID, y.ID}[i%2], Index: int64(i / 2), Action: "allow"})
	}
	last := []store.Decision{{SessionID: x.ID, Index: 100, Action: "deny"}}
	var failed *store.DecisionsError
	if err := s.AddDecisions(ctx, ds[:3], alternating, last); !errors.As(err, &failed) || !slices.Equal(failed.Unstored, []int{0}) {
		t.Fatalf("a batch stored twice beside two new ones: %v, want a DecisionsError naming batch 0", err)
	}
	for id, want := range map[string]int{x.ID: 101, y.ID: 100} {
		if got, err := s.Decisions(ctx, id); err != nil || len(got) != want {
			t.Errorf("decisions of %s after a failed transaction before them: %d, %v; want %d", id, len(got), err, want)
		}
	}
	// A batch refused for good in one transaction with others: they are
	// stored all the same, a batch at a time, and only it is named. Two
	// refused in a row end that: the batches after them are named too, for
	// the next try, which stores them.
	more := func(id string, i int) []store.Decision {
		return []store.Decision{{SessionID: id, Index: int64(i), Action: "allow"}}
	}
	failed = nil
	if err := s.AddDecisions(ctx, ds[:3], more(x.ID, 101), more(y.ID, 100)); !errors.As(err, &failed) || !slices.Equal(failed.Unstored, []int{0}) ||
		!strings.Contains(err.Error(), ss.ID+"/0..2") {
		t.Fatalf("a batch stored twice in one transaction with two new ones: %v, want a DecisionsError naming batch 0 alone", err)
	}
	failed = nil
	if err := s.AddDecisions(ctx, more(x.ID, 102), ds[:3], ds[:2], more(y.ID, 101)); !errors.As(err, &failed) || !slices.Equal(failed.Unstored, []int{1, 2, 3}) {
		t.Fatalf("two batches stored twice in a row: %v, want a DecisionsError naming batches 1 to 3", err)
	}
	if err := s.AddDecisions(ctx, more(y.ID, 101)); err != nil {
		t.Fatalf("the batch left for the next try: %v", err)
	}
	for id, want := range map[string]int{x.ID: 103, y.ID: 102} {
		if got, err := s.Decisions(ctx, id); err != nil || len(got) != want {
			t.Errorf("decisions of %s beside batches stored twice: %d, %v; want %d", id, len(got), err, want)
		}
	}

	// The same, stored by the session's end with its row.
	ended := store.Session{Host: "h1", Identity: "ci", Target: "orders", Protocol: "postgresql", Started: time.Now().UTC()}
	if err := s.CreateSession(ctx, &ended); err != nil {
		t.Fatal(err)
	}
	for i := range ds {
		ds[i].SessionID = ended.ID
	}
	if err := s.EndSession(ctx, ended.ID, store.SessionEnd{Outcome: "closed", Decisions: ds}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Decisions(ctx, ended.ID); err != nil || len(got) != n || got[n-1].Statement != fmt.Sprintf("SELECT %d", n-1) {
		t.Fatalf("decisions stored with the row: %d, %v", len(got), err)
	}
	if got, err := s.Session(ctx, ended.ID); err != nil || got.Ended.IsZero() {
		t.Fatalf("session not ended: %+v %v", got, err)
	}
}

func testSessions(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	s := open(t)
	base := time.Date(2026, 11, 26, 5, 0, 0, 0, time.UTC)
	mk := func(identity, target string, at time.Duration) store.Session {
		ss := store.Session{Host: "h1", Identity: identity, PID: 42, UID: 1000, Exe: "/usr/bin/psql",
			Cgroup: "/interlock/ci", Target: target, Protocol: "postgresql", ClientAddr: "127.0.0.1:40000",
			UpstreamAddr: "10.1.2.3:5432", Started: base.Add(at)}
		if err := s.CreateSession(ctx, &ss); err != nil {
			t.Fatal(err)
		}
		return ss
	}
	a := mk("ci", "orders", 0)
	b := mk("ci", "billing", time.Minute)
	c := mk("bot", "orders", 2*time.Minute)

	if err := s.AddDecisions(ctx, []store.Decision{
		{SessionID: a.ID, Index: 0, Seq: 3, Time: base, Action: "allow", Rule: "read", Enforced: true, Statement: "SELECT 1"},
		// One Query message with two statements: two decisions, one seq.
		{SessionID: a.ID, Index: 1, Seq: 7, Time: base, Action: "allow", Rule: "read", Enforced: true, Statement: "SELECT 2"},
		{SessionID: a.ID, Index: 2, Seq: 7, Time: base, Action: "deny", Rule: "no-drop", Enforced: true, Statement: "DROP TABLE t"},
		{SessionID: c.ID, Index: 0, Seq: 2, Time: base, Action: "deny", Rule: "no-drop", Enforced: false, Statement: "DROP TABLE u"},
		// A request of a protocol that names its operation apart.
		{SessionID: a.ID, Index: 3, Seq: 9, Time: base, Action: "allow", Rule: "inspect", Enforced: true, Statement: "uname -a", Op: "exec"},
	}); err != nil {
		t.Fatal(err)
	}
	end := store.SessionEnd{Ended: base.Add(time.Hour), BytesIn: 10, BytesOut: 20, Messages: 9, Outcome: "closed",
		RecordingSHA256: "ab", RecordingSize: 99}
	if err := s.EndSession(ctx, a.ID, end); err != nil {
		t.Fatal(err)
	}
	if err := s.EndSession(ctx, a.ID, end); err == nil {
		t.Fatal("ending a session twice succeeded; the sealed hash could be overwritten")
	}
	got, err := s.Session(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := a
	want.Ended, want.BytesIn, want.BytesOut, want.Messages, want.Outcome = end.Ended, 10, 20, 9, "closed"
	want.RecordingSHA256, want.RecordingSize = "ab", 99
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("session round trip:\n got %+v\nwant %+v", got, want)
	}
	if _, err := s.Session(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing session: %v", err)
	}

	ids := func(f store.SessionFilter) string {
		t.Helper()
		ss, err := s.ListSessions(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, x := range ss {
			switch x.ID {
			case a.ID:
				out = append(out, "a")
			case b.ID:
				out = append(out, "b")
			case c.ID:
				out = append(out, "c")
			}
		}
		return fmt.Sprint(out)
	}
	for _, tc := range []struct {
		f    store.SessionFilter
		want string
	}{
		{store.SessionFilter{}, "[c b a]"},
		{store.SessionFilter{Identity: "ci"}, "[b a]"},
		{store.SessionFilter{Target: "orders"}, "[c a]"},
		{store.SessionFilter{Since: base.Add(time.Minute)}, "[c b]"},
		{store.SessionFilter{Since: base, Until: base.Add(2 * time.Minute)}, "[b a]"},
		{store.SessionFilter{Action: "deny"}, "[c a]"},
		{store.SessionFilter{Action: "deny", Identity: "bot"}, "[c]"},
		{store.SessionFilter{Action: "mask"}, "[]"},
		{store.SessionFilter{Action: "allow"}, "[a]"},
		{store.SessionFilter{OpenOnly: true}, "[c b]"},
		{store.SessionFilter{Limit: 1}, "[c]"},
		{store.SessionFilter{Host: "h2"}, "[]"},
	} {
		if got := ids(tc.f); got != tc.want {
			t.Errorf("ListSessions(%+v) = %s, want %s", tc.f, got, tc.want)
		}
	}
	ds, err := s.Decisions(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 4 || ds[0].Seq != 3 || ds[1].Seq != 7 || ds[2].Seq != 7 || ds[2].Index != 2 ||
		ds[2].Action != "deny" || ds[2].Rule != "no-drop" || !ds[2].Enforced || ds[2].Op != "" ||
		ds[3].Op != "exec" || ds[3].Statement != "uname -a" {
		t.Fatalf("decisions of a: %+v", ds)
	}
	if ds, _ := s.Decisions(ctx, c.ID); len(ds) != 1 || ds[0].Enforced {
		t.Fatalf("audit-mode decision of c: %+v", ds)
	}
	// A recording sealed with its row is stored with it, and only if the
	// row could be ended.
	d := mk("bot", "billing", 3*time.Minute)
	endD := end
	endD.Recording = []byte("the whole recording of d")
	if err := s.EndSession(ctx, d.ID, endD); err != nil {
		t.Fatal(err)
	}
	endD.Recording = []byte("a forged second recording")
	if err := s.EndSession(ctx, d.ID, endD); err == nil {
		t.Fatal("ending d twice succeeded")
	}
	if r, err := s.OpenRecording(ctx, d.ID); err != nil {
		t.Fatal(err)
	} else if got, _ := io.ReadAll(r); string(got) != "the whole recording of d" {
		t.Fatalf("d's stored recording: %q", got)
	}
}

func testApprovals(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	hostA, hostB := open(t), open(t) // two daemons sharing one store
	now := time.Now().UTC()
	a := store.Approval{Host: "a", SessionID: "s1", Identity: "ci", PID: 7, Exe: "/usr/bin/psql", Target: "orders",
		Statement: "DELETE FROM orders", Rule: "hold-deletes", Reviewers: []string{"alice", "bob", "carol"},
		Quorum: 2, Deadline: now.Add(time.Hour)}
	if err := hostA.CreateApproval(ctx, &a); err != nil {
		t.Fatal(err)
	}
	// Host B lists what host A holds.
	list, err := hostB.ListApprovals(ctx, store.ApprovalFilter{State: store.Pending})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != a.ID || list[0].Statement != a.Statement || list[0].Quorum != 2 ||
		fmt.Sprint(list[0].Reviewers) != "[alice bob carol]" || list[0].Host != "a" {
		t.Fatalf("host B sees %+v", list)
	}

	got, err := hostB.Vote(ctx, a.ID, store.Vote{Reviewer: "alice", Approve: true, Comment: "ok"})
	if err != nil || got.State != store.Pending || len(got.Votes) != 1 {
		t.Fatalf("first vote: %+v %v", got, err)
	}
	if _, err := hostA.Vote(ctx, a.ID, store.Vote{Reviewer: "alice", Approve: true}); !errors.Is(err, store.ErrDuplicateVote) {
		t.Fatalf("second vote by alice: %v, want ErrDuplicateVote (quorum counts distinct reviewers)", err)
	}

	// Host A waits; host B casts the deciding vote.
	done := make(chan store.Approval, 1)
	go func() {
		w, err := hostA.WaitApproval(ctx, a.ID, 20*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		done <- w
	}()
	time.Sleep(50 * time.Millisecond)
	got, err = hostB.Vote(ctx, a.ID, store.Vote{Reviewer: "bob", Approve: true, Comment: "fine by me"})
	if err != nil || got.State != store.Approved {
		t.Fatalf("quorum vote: %+v %v", got, err)
	}
	select {
	case w := <-done:
		if w.State != store.Approved || len(w.Votes) != 2 || w.Votes[1].Comment != "fine by me" {
			t.Fatalf("host A saw %+v", w)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("host A never saw the decision")
	}
	// Final: a later deny does not flip it.
	if got, err := hostA.Vote(ctx, a.ID, store.Vote{Reviewer: "carol", Approve: false}); !errors.Is(err, store.ErrDecided) || got.State != store.Approved {
		t.Fatalf("vote after decision: %+v %v", got.State, err)
	}

	// One deny decides at once, whatever the quorum.
	d := store.Approval{Host: "a", Identity: "ci", Target: "orders", Statement: "DROP TABLE x", Rule: "r",
		Quorum: 3, Deadline: now.Add(time.Hour)}
	if err := hostA.CreateApproval(ctx, &d); err != nil {
		t.Fatal(err)
	}
	if got, err := hostB.Vote(ctx, d.ID, store.Vote{Reviewer: "bob", Approve: false, Comment: "no"}); err != nil || got.State != store.Denied {
		t.Fatalf("deny vote: %+v %v", got.State, err)
	}
	if err := hostA.CancelApproval(ctx, d.ID, time.Now()); !errors.Is(err, store.ErrDecided) {
		t.Fatalf("cancel after deny: %v", err)
	}
	if _, err := hostA.Vote(ctx, "missing", store.Vote{Reviewer: "x", Approve: true}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("vote on missing approval: %v", err)
	}
	if l, _ := hostB.ListApprovals(ctx, store.ApprovalFilter{State: store.Pending}); len(l) != 0 {
		t.Fatalf("pending after decisions: %+v", l)
	}
}

// Many reviewers on two hosts vote at once on a quorum-3 request: exactly
// three approvals are accepted, the rest see a final decision.
func testQuorumRace(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	hosts := []*store.Store{open(t), open(t)}
	a := store.Approval{Host: "a", Identity: "ci", Target: "t", Statement: "UPDATE t SET x = 1", Rule: "r",
		Quorum: 3, Deadline: time.Now().Add(time.Hour)}
	if err := hosts[0].CreateApproval(ctx, &a); err != nil {
		t.Fatal(err)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted int
		decided  int
	)
	for i := range 12 {
		wg.Go(func() {
			_, err := hosts[i%2].Vote(ctx, a.ID, store.Vote{Reviewer: fmt.Sprintf("r%d", i), Approve: true})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				accepted++
			case errors.Is(err, store.ErrDecided):
				decided++
			default:
				t.Errorf("vote r%d: %v", i, err)
			}
		})
	}
	wg.Wait()
	final, err := hosts[1].Approval(ctx, a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if accepted != 3 || decided != 9 || len(final.Votes) != 3 || final.State != store.Approved {
		t.Fatalf("accepted %d, decided %d, votes %d, state %s; want 3, 9, 3, approved", accepted, decided, len(final.Votes), final.State)
	}
}

func testExpiry(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	s := open(t)
	now := time.Now().UTC()
	past := store.Approval{Host: "a", Identity: "ci", Target: "t", Statement: "s", Rule: "r", Deadline: now.Add(-time.Second)}
	future := store.Approval{Host: "a", Identity: "ci", Target: "t", Statement: "s", Rule: "r", Deadline: now.Add(time.Hour)}
	other := store.Approval{Host: "b", Identity: "ci", Target: "t", Statement: "s", Rule: "r", Deadline: now.Add(-time.Second)}
	for _, a := range []*store.Approval{&past, &future, &other} {
		if err := s.CreateApproval(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.Vote(ctx, past.ID, store.Vote{Reviewer: "alice", Approve: true}); !errors.Is(err, store.ErrDecided) || got.State != store.Expired {
		t.Fatalf("vote after deadline: %v %v, want expired", got.State, err)
	}
	exp, err := s.ExpireApprovals(ctx, "b", now)
	if err != nil || len(exp) != 1 || exp[0].ID != other.ID {
		t.Fatalf("expire host b: %+v %v", exp, err)
	}
	if exp, _ := s.ExpireApprovals(ctx, "a", now); len(exp) != 0 {
		t.Fatalf("expired again or too early: %+v", exp)
	}
	w, err := s.WaitApproval(ctx, past.ID, time.Millisecond)
	if err != nil || w.State != store.Expired {
		t.Fatalf("wait on expired: %v %v", w.State, err)
	}
	if err := s.CreateApproval(ctx, &store.Approval{Host: "a", Statement: "x"}); err == nil {
		t.Fatal("approval without a deadline accepted; it would hold forever")
	}
}

func testAuditRace(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	hosts := []*store.Store{open(t), open(t)}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			_, err := hosts[i%2].AppendAudit(ctx, "h", 1, func(head store.AuditHead) ([]store.AuditRecord, error) {
				return []store.AuditRecord{{Host: "h", Seq: head.Seq + 1, Time: time.Now(), Kind: "k", Payload: "{}",
					PrevHash: head.Hash, Hash: fmt.Sprintf("hash-%d", head.Seq+1)}}, nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	var seqs []uint64
	prev := ""
	err := hosts[0].AuditRecords(ctx, "h", 0, func(r store.AuditRecord) error {
		if r.PrevHash != prev {
			return fmt.Errorf("record %d links to %q, want %q (forked chain)", r.Seq, r.PrevHash, prev)
		}
		prev = r.Hash
		seqs = append(seqs, r.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 20 || seqs[19] != 20 {
		t.Fatalf("seqs %v", seqs)
	}
	if hs, err := hosts[1].AuditHosts(ctx); err != nil || fmt.Sprint(hs) != "[h]" {
		t.Fatalf("audit hosts %v %v", hs, err)
	}
}

// testAuditBatch: one append of more records than an INSERT carries stores
// them all, in order, with their fields; an append whose records are not
// the number it announced stores none.
func testAuditBatch(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	s := open(t)
	const n = 150
	at := time.Unix(1700000000, 123456789).UTC()
	build := func(head store.AuditHead) ([]store.AuditRecord, error) {
		rs := make([]store.AuditRecord, n)
		prev := head.Hash
		for i := range rs {
			seq := head.Seq + uint64(i) + 1
			rs[i] = store.AuditRecord{Host: "batch", Seq: seq, Time: at.Add(time.Duration(i)), Kind: fmt.Sprintf("k%d", seq),
				Payload: fmt.Sprintf(`{"n":%d}`, seq), PrevHash: prev, Hash: fmt.Sprintf("hash-%d", seq)}
			prev = rs[i].Hash
		}
		return rs, nil
	}
	if _, err := s.AppendAudit(ctx, "batch", n+1, build); err == nil {
		t.Fatal("an append of 150 records announced as 151 succeeded")
	}
	if _, err := s.AppendAudit(ctx, "batch", n, build); err != nil {
		t.Fatal(err)
	}
	var got []store.AuditRecord
	if err := s.AuditRecords(ctx, "batch", 0, func(r store.AuditRecord) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	want, _ := build(store.AuditHead{})
	if len(got) != n {
		t.Fatalf("%d records stored, want %d", len(got), n)
	}
	for i := range want {
		if g := got[i]; g.Seq != want[i].Seq || !g.Time.Equal(want[i].Time) || g.Kind != want[i].Kind || g.Payload != want[i].Payload ||
			g.PrevHash != want[i].PrevHash || g.Hash != want[i].Hash {
			t.Fatalf("record %d: %+v, want %+v", i, g, want[i])
		}
	}
}
