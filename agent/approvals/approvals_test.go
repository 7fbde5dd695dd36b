package approvals

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/store/storetest"
)

// requesterUID is the uid of the held process in these tests; no reviewer
// may have it.
const requesterUID = 4242

// secretStatement carries a literal that must never reach the audit trail
// or the webhook.
const secretStatement = "UPDATE accounts SET password = 'hunter2' WHERE id = 7"

func newService(t testing.TB, st *store.Store, host string, mod ...func(*Config)) (*Service, *audit.Log) {
	t.Helper()
	log := audit.New(st, host)
	cfg := Config{Store: st, Audit: log, Host: host, PollInterval: 20 * time.Millisecond}
	for _, m := range mod {
		m(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The requester's uid maps to a user name, so the by-name check is
	// exercised without depending on this machine's passwd file.
	s.lookup = func(uid uint32) string {
		if uid == requesterUID {
			return "agent-user"
		}
		return ""
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Close(ctx)
		log.Close()
	})
	return s, log
}

func request(reviewers []string, quorum int, timeout time.Duration) Request {
	return Request{Session: "", Identity: "ci-runner", PID: 1234, UID: requesterUID, Exe: "/usr/bin/psql",
		Target: "orders-db", Protocol: "postgresql", Statement: secretStatement, Rule: "hold-writes",
		Reviewers: reviewers, Quorum: quorum, Timeout: timeout}
}

type result struct {
	approved bool
	reason   string
}

// waitAsync runs wait in a goroutine, as the held session would.
func waitAsync(ctx context.Context, wait func(context.Context) (bool, string)) <-chan result {
	ch := make(chan result, 1)
	go func() {
		ok, why := wait(ctx)
		ch <- result{ok, why}
	}()
	return ch
}

func receive(t *testing.T, ch <-chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("the held request was never released")
		return result{}
	}
}

func cliUser(name string, uid uint32, groups ...string) Reviewer {
	return Reviewer{Name: name, UID: uid, HasUID: true, Groups: groups, Via: "cli"}
}

func TestService(t *testing.T) {
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		t.Run("quorum", func(t *testing.T) { testQuorum(t, open(t)) })
		t.Run("deny", func(t *testing.T) { testDeny(t, open(t)) })
		t.Run("refusals", func(t *testing.T) { testRefusals(t, open(t)) })
		t.Run("timeout", func(t *testing.T) { testTimeout(t, open(t)) })
		t.Run("cancel", func(t *testing.T) { testCancel(t, open(t)) })
		t.Run("fleet", func(t *testing.T) { testFleet(t, open) })
	})
}

// Quorum 2 needs two distinct reviewers; a second vote by the same one does
// not count; the decision is final; the audit chain records hold and votes
// without the statement's literals.
func testQuorum(t *testing.T, st *store.Store) {
	ctx := context.Background()
	s, _ := newService(t, st, "h-quorum")
	id, wait, err := s.Hold(ctx, request([]string{"alice", "group:dba"}, 2, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	done := waitAsync(ctx, wait)

	a, err := s.Decide(ctx, id, cliUser("alice", 1001), true, "looks fine")
	if err != nil || a.State != store.Pending {
		t.Fatalf("first approval: %v %v", a.State, err)
	}
	if _, err := s.Decide(ctx, id, Reviewer{Name: "alice", Via: "web"}, true, ""); !errors.Is(err, store.ErrDuplicateVote) {
		t.Fatalf("alice again (via the web): %v, want ErrDuplicateVote", err)
	}
	select {
	case r := <-done:
		t.Fatalf("released after one of two approvals: %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
	a, err = s.Decide(ctx, id, cliUser("bob", 1002, "staff", "dba"), true, "")
	if err != nil || a.State != store.Approved {
		t.Fatalf("second approval: %v %v", a.State, err)
	}
	r := receive(t, done)
	if !r.approved || !strings.Contains(r.reason, "alice (looks fine)") || !strings.Contains(r.reason, "bob") {
		t.Fatalf("wait = %+v", r)
	}
	if _, err := s.Decide(ctx, id, cliUser("bob2", 1003, "dba"), false, "too late"); !errors.Is(err, store.ErrDecided) {
		t.Fatalf("vote after the decision: %v, want ErrDecided", err)
	}
	if a, _ := s.Get(ctx, id); a.State != store.Approved {
		t.Fatalf("final state changed to %s", a.State)
	}
	kinds := checkAudit(t, st, "h-quorum")
	if want := "approval.requested approval.decided:pending approval.decided:approved"; kinds != want {
		t.Fatalf("audit records %q, want %q", kinds, want)
	}
}

// checkAudit verifies host's chain, checks that no record carries the
// statement's secret, and returns the records' kinds (with the state of
// approval.decided records).
func checkAudit(t *testing.T, st *store.Store, host string) string {
	t.Helper()
	ctx := context.Background()
	res, err := audit.Verify(ctx, st, host)
	if err != nil || res.Broken != nil {
		t.Fatalf("verify %s chain: %+v %v", host, res.Broken, err)
	}
	var kinds []string
	err = st.AuditRecords(ctx, host, 0, func(r store.AuditRecord) error {
		if strings.Contains(r.Payload, "hunter2") {
			t.Errorf("audit record %d carries the statement's literal: %s", r.Seq, r.Payload)
		}
		k := r.Kind
		if r.Kind == string(audit.KindApprovalDecided) {
			_, rest, _ := strings.Cut(r.Payload, `"state":"`)
			state, _, _ := strings.Cut(rest, `"`)
			k += ":" + state
		}
		kinds = append(kinds, k)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(kinds, " ")
}

// One deny decides at once, whatever the quorum.
func testDeny(t *testing.T, st *store.Store) {
	ctx := context.Background()
	observed := make(chan store.ApprovalState, 1)
	s, _ := newService(t, st, "h-deny", func(c *Config) {
		c.Observe = func(st store.ApprovalState, held time.Duration) {
			if held <= 0 {
				t.Errorf("held for %v", held)
			}
			observed <- st
		}
	})
	id, wait, err := s.Hold(ctx, request([]string{"alice", "bob", "carol"}, 3, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	done := waitAsync(ctx, wait)
	if _, err := s.Decide(ctx, id, cliUser("alice", 1001), true, ""); err != nil {
		t.Fatal(err)
	}
	if a, err := s.Decide(ctx, id, cliUser("carol", 1003), false, "not during business hours"); err != nil || a.State != store.Denied {
		t.Fatalf("deny: %v %v", a.State, err)
	}
	r := receive(t, done)
	if r.approved || !strings.Contains(r.reason, "denied by carol (not during business hours)") {
		t.Fatalf("wait = %+v", r)
	}
	if st := <-observed; st != store.Denied {
		t.Fatalf("observed %s", st)
	}
}

// Reviewers the policy does not name, and the requester itself (by uid or
// by user name), cannot decide; refused attempts leave the request pending.
func testRefusals(t *testing.T, st *store.Store) {
	ctx := context.Background()
	s, _ := newService(t, st, "h-refuse")
	id, wait, err := s.Hold(ctx, request([]string{"user:alice", "group:dba", "agent-user"}, 1, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	done := waitAsync(ctx, wait)
	cases := []struct {
		name string
		rv   Reviewer
		want error
	}{
		{"not named", cliUser("mallory", 1666, "staff"), ErrNotReviewer},
		{"user entry is not a group", cliUser("eve", 1667, "alice"), ErrNotReviewer},
		{"requester uid", cliUser("alice", requesterUID), ErrRequester},
		{"requester uid via a group", cliUser("someone", requesterUID, "dba"), ErrRequester},
		{"requester user name via a token", Reviewer{Name: "agent-user", Via: "web"}, ErrRequester},
		{"no name", Reviewer{Via: "web"}, ErrNotReviewer},
	}
	for _, c := range cases {
		if _, err := s.Decide(ctx, id, c.rv, true, ""); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := s.Decide(ctx, id, cliUser("alice", 1001), true, strings.Repeat("x", maxComment+1)); !errors.Is(err, errComment) {
		t.Errorf("long comment: %v", err)
	}
	if a, _ := s.Get(ctx, id); a.State != store.Pending || len(a.Votes) != 0 {
		t.Fatalf("after refused votes: %s %+v", a.State, a.Votes)
	}
	if _, err := s.Decide(ctx, "nope", cliUser("alice", 1001), true, ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
	if a, err := s.Decide(ctx, id, cliUser("dba-member", 1004, "dba"), true, ""); err != nil || a.State != store.Approved {
		t.Fatalf("group member: %v %v", a.State, err)
	}
	if r := receive(t, done); !r.approved {
		t.Fatalf("wait = %+v", r)
	}
}

// With no decision before the timeout, the request is denied and the
// expiry is audited by the holding host.
func testTimeout(t *testing.T, st *store.Store) {
	ctx := context.Background()
	s, _ := newService(t, st, "h-timeout")
	id, wait, err := s.Hold(ctx, request([]string{"alice"}, 1, 300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	r := receive(t, waitAsync(ctx, wait))
	if r.approved || !strings.Contains(r.reason, "no decision before the deadline") {
		t.Fatalf("wait = %+v", r)
	}
	if a, _ := s.Get(ctx, id); a.State != store.Expired {
		t.Fatalf("state %s, want expired", a.State)
	}
	if _, err := s.Decide(ctx, id, cliUser("alice", 1001), true, ""); !errors.Is(err, store.ErrDecided) {
		t.Fatalf("late approval: %v", err)
	}
	if kinds, want := checkAudit(t, st, "h-timeout"), "approval.requested approval.decided:expired"; kinds != want {
		t.Fatalf("audit %q, want %q", kinds, want)
	}
}

// When the held session goes away, its approval is cancelled; a daemon
// restart cancels approvals nobody waits for any more.
func testCancel(t *testing.T, st *store.Store) {
	ctx := context.Background()
	s, _ := newService(t, st, "h-cancel")
	id, wait, err := s.Hold(ctx, request([]string{"alice"}, 1, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	sessCtx, endSession := context.WithCancel(ctx)
	done := waitAsync(sessCtx, wait)
	endSession()
	if r := receive(t, done); r.approved || !strings.Contains(r.reason, "cancelled") {
		t.Fatalf("wait = %+v", r)
	}
	if a, _ := s.Get(ctx, id); a.State != store.Cancelled {
		t.Fatalf("state %s, want cancelled", a.State)
	}

	// An approval left pending by a previous daemon process.
	orphan := store.Approval{Host: "h-cancel", Identity: "ci", Target: "t", Statement: "x", Rule: "r",
		Reviewers: []string{"alice"}, Deadline: time.Now().Add(time.Hour)}
	if err := st.CreateApproval(ctx, &orphan); err != nil {
		t.Fatal(err)
	}
	other := orphan
	other.ID, other.Host = "", "another-host"
	if err := st.CreateApproval(ctx, &other); err != nil {
		t.Fatal(err)
	}
	restarted, _ := newService(t, st, "h-cancel")
	if n, err := restarted.CancelOrphans(ctx); err != nil || n != 1 {
		t.Fatalf("CancelOrphans = %d, %v; want 1", n, err)
	}
	if a, _ := st.Approval(ctx, other.ID); a.State != store.Pending {
		t.Fatalf("another host's approval became %s", a.State)
	}
	if kinds, want := checkAudit(t, st, "h-cancel"), "approval.requested approval.decided:cancelled approval.decided:cancelled"; kinds != want {
		t.Fatalf("audit %q, want %q", kinds, want)
	}
}

// Two daemons share the store: a request held on host A is listed and
// decided on host B, and A's waiting session is released. B knows the
// requester's uid from the session row.
func testFleet(t *testing.T, open storetest.Open) {
	ctx := context.Background()
	stA, stB := open(t), open(t)
	a, _ := newService(t, stA, "host-a")
	b, _ := newService(t, stB, "host-b")
	sess := store.Session{Host: "host-a", Identity: "ci-runner", PID: 1234, UID: requesterUID, Target: "orders-db",
		Protocol: "postgresql", Recording: filepath.Join(t.TempDir(), "none")}
	if err := stA.CreateSession(ctx, &sess); err != nil {
		t.Fatal(err)
	}
	req := request([]string{"alice"}, 1, time.Minute)
	req.Session = sess.ID
	id, wait, err := a.Hold(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	done := waitAsync(ctx, wait)
	list, err := b.List(ctx, store.ApprovalFilter{Host: "host-a", State: store.Pending})
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].Host != "host-a" || list[0].Statement != secretStatement {
		t.Fatalf("host B lists %+v %v", list, err)
	}
	if _, err := b.Decide(ctx, id, cliUser("alice", requesterUID), true, ""); !errors.Is(err, ErrRequester) {
		t.Fatalf("requester's uid on host B: %v, want ErrRequester", err)
	}
	if got, err := b.Decide(ctx, id, cliUser("alice", 1001), true, "from B"); err != nil || got.State != store.Approved {
		t.Fatalf("approve on B: %v %v", got.State, err)
	}
	if r := receive(t, done); !r.approved || !strings.Contains(r.reason, "alice (from B)") {
		t.Fatalf("host A's session: %+v", r)
	}
	if kinds := checkAudit(t, stA, "host-a"); kinds != "approval.requested" {
		t.Fatalf("host A audit %q", kinds)
	}
	if kinds := checkAudit(t, stB, "host-b"); kinds != "approval.decided:approved" {
		t.Fatalf("host B audit %q", kinds)
	}

	// Without a session row, host B cannot tell a uid-authenticated
	// reviewer from the requester, and refuses.
	id2, wait2, err := a.Hold(ctx, request([]string{"alice"}, 1, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	done2 := waitAsync(ctx, wait2)
	if _, err := b.Decide(ctx, id2, cliUser("alice", 1001), true, ""); !errors.Is(err, ErrUnknownRequester) {
		t.Fatalf("unknown requester on B: %v", err)
	}
	if _, err := a.Decide(ctx, id2, cliUser("alice", 1001), false, ""); err != nil {
		t.Fatalf("deny on A: %v", err)
	}
	if r := receive(t, done2); r.approved {
		t.Fatalf("second request: %+v", r)
	}
}
