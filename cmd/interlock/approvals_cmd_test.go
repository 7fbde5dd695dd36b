package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/store"
)

// approvalsDaemon serves an approvals service on a real control socket, as
// interlockd mounts it, and returns the service and a client.
func approvalsDaemon(t *testing.T) (*approvals.Service, *control.Client) {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	log := audit.New(st, "cli-host")
	s, err := approvals.New(approvals.Config{Store: st, Audit: log, Host: "cli-host", PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "interlock.sock")
	l, err := control.Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(control.ApprovalsPrefix, s.ControlHandler())
	mux.Handle(control.ApprovalsPrefix+"/", s.ControlHandler())
	srv := control.NewServer(mux)
	go srv.Serve(l)
	t.Cleanup(func() {
		srv.Close()
		s.Close(ctx)
		log.Close()
		st.Close()
	})
	return s, control.NewClient(sock)
}

func runCLI(t *testing.T, c *control.Client, cmd string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(append([]string{"--socket", c.Socket, cmd}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestApprovalsCLI(t *testing.T) {
	s, c := approvalsDaemon(t)
	ctx := context.Background()
	me := approvals.PeerReviewer(uint32(os.Getpid()), uint32(os.Getuid()), uint32(os.Getgid()))
	req := approvals.Request{Identity: "ci-runner", PID: 77, UID: 4242, Exe: "/usr/bin/psql", Target: "orders-db",
		Protocol: "postgresql", Statement: "DELETE FROM orders WHERE id = 1", Rule: "hold-deletes",
		Reviewers: []string{me.Name, "someone-else"}, Quorum: 2, Timeout: time.Minute}
	id, wait, err := s.Hold(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan bool, 1)
	go func() { ok, _ := wait(ctx); done <- ok }()

	code, out, _ := runCLI(t, c, "approvals")
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "DELETE FROM orders WHERE id = 1") ||
		!strings.Contains(out, "0/2") || !strings.Contains(out, "pending, denied in") {
		t.Fatalf("approvals: %d\n%s", code, out)
	}
	// Flags after the ID work, and the vote is recorded with its comment.
	code, out, errOut := runCLI(t, c, "approve", id, "--comment", "checked the ticket")
	if code != 0 || !strings.Contains(out, "1 of 2 approvals, still pending") {
		t.Fatalf("approve: %d %s %s", code, out, errOut)
	}
	code, _, errOut = runCLI(t, c, "approve", id)
	if code != 1 || !strings.Contains(errOut, "already voted") {
		t.Fatalf("second approve by the same user: %d %s", code, errOut)
	}
	code, out, errOut = runCLI(t, c, "deny", "--comment", "changed my mind", id)
	if code != 1 || !strings.Contains(errOut, "already voted") {
		t.Fatalf("deny after approving: %d %s %s", code, out, errOut)
	}
	a, _ := s.Get(ctx, id)
	if a.State != store.Pending || len(a.Votes) != 1 || a.Votes[0].Comment != "checked the ticket" {
		t.Fatalf("stored: %+v", a)
	}
	if _, err := s.Decide(ctx, id, approvals.Reviewer{Name: "someone-else", Via: "web"}, true, ""); err != nil {
		t.Fatal(err)
	}
	if !<-done {
		t.Fatal("held request denied")
	}
	code, out, _ = runCLI(t, c, "approvals", "--state", "approved", "--json")
	if code != 0 || !strings.Contains(out, `"state": "approved"`) || !strings.Contains(out, `"comment": "checked the ticket"`) {
		t.Fatalf("approvals --json: %d\n%s", code, out)
	}
	if code, out, _ = runCLI(t, c, "approvals"); code != 0 || !strings.Contains(out, "no pending approvals") {
		t.Fatalf("empty queue: %d %s", code, out)
	}

	// The requester's own uid is refused.
	own := req
	own.UID, own.Reviewers, own.Quorum = uint32(os.Getuid()), []string{me.Name}, 1
	ownID, _, err := s.Hold(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	code, _, errOut = runCLI(t, c, "approve", ownID)
	if code != 1 || !strings.Contains(errOut, "the requester cannot decide its own request") {
		t.Fatalf("approve own request: %d %s", code, errOut)
	}

	for _, bad := range [][]string{{"approve"}, {"deny", "a", "b"}, {"approve", "--bogus", "x"}, {"approvals", "extra"}} {
		if code, _, _ := runCLI(t, c, bad[0], bad[1:]...); code != 2 {
			t.Errorf("%q: exit %d, want 2", bad, code)
		}
	}
	if code, _, errOut := runCLI(t, control.NewClient(filepath.Join(t.TempDir(), "none.sock")), "approvals"); code != 1 ||
		!strings.Contains(errOut, "not running") {
		t.Errorf("no daemon: %d %s", code, errOut)
	}
}

// A held statement that carries a terminal escape is listed with it
// escaped: an agent cannot make a reviewer's terminal conceal the part of
// its command that does harm (SGR 8 hides the text after it).
func TestApprovalsListEscapes(t *testing.T) {
	s, c := approvalsDaemon(t)
	req := approvals.Request{Identity: "ci-runner", PID: 77, UID: 4242, Exe: "/usr/bin/ssh", Target: "web-1",
		Protocol: "ssh", Statement: "ls /srv\x1b[8m; rm -rf /srv", Rule: "hold", Reviewers: []string{"root"}, Quorum: 1, Timeout: time.Minute}
	if _, _, err := s.Hold(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(t, c, "approvals")
	if code != 0 || strings.Contains(out, "\x1b") || !strings.Contains(out, `ls /srv\x1b[8m; rm -rf /srv`) {
		t.Fatalf("approvals: %d\n%q", code, out)
	}
}
