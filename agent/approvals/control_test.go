package approvals

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/control"
)

// serveControl serves s.ControlHandler on a real unix socket, as the daemon
// does, and returns a client for it. The peer of every call is this test
// process, with its real uid and groups.
func serveControl(t *testing.T, s *Service) *control.Client {
	t.Helper()
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
	t.Cleanup(func() { srv.Close() })
	return control.NewClient(sock)
}

func TestControlAPI(t *testing.T) {
	ctx := context.Background()
	s, _ := newService(t, openSQLite(t), "h-control")
	c := serveControl(t, s)
	me := PeerReviewer(uint32(os.Getpid()), uint32(os.Getuid()), uint32(os.Getgid()))

	// The requester's own uid is refused even when the policy names it.
	own := request([]string{me.Name}, 1, time.Minute)
	own.UID = uint32(os.Getuid())
	ownID, _, err := s.Hold(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Call(ctx, control.ApprovalsPrefix+"/"+ownID+"/approve", control.DecideRequest{}, nil)
	if err == nil || !strings.Contains(err.Error(), ErrRequester.Error()) {
		t.Fatalf("approve own request: %v, want %q", err, ErrRequester)
	}

	// A caller the policy does not name is refused.
	other, _, err := s.Hold(ctx, request([]string{"nobody-we-know"}, 1, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx, control.ApprovalsPrefix+"/"+other+"/deny", control.DecideRequest{}, nil); err == nil ||
		!strings.Contains(err.Error(), ErrNotReviewer.Error()) {
		t.Fatalf("deny as a non-reviewer: %v", err)
	}

	// A named reviewer approves; the held session is released.
	id, wait, err := s.Hold(ctx, request([]string{me.Name}, 1, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	done := waitAsync(ctx, wait)
	var pending []control.ApprovalView
	if err := c.Call(ctx, control.ApprovalsPrefix+"?state=pending", nil, &pending); err != nil || len(pending) != 3 {
		t.Fatalf("list pending: %d %v", len(pending), err)
	}
	var v control.ApprovalView
	if err := c.Call(ctx, control.ApprovalsPrefix+"/"+id+"/approve", control.DecideRequest{Comment: "checked"}, &v); err != nil {
		t.Fatal(err)
	}
	if v.State != "approved" || len(v.Votes) != 1 || v.Votes[0].Reviewer != me.Name || v.Votes[0].Comment != "checked" {
		t.Fatalf("after approve: %+v", v)
	}
	if r := receive(t, done); !r.approved {
		t.Fatalf("wait = %+v", r)
	}
	if err := c.Call(ctx, control.ApprovalsPrefix+"/"+id+"/deny", control.DecideRequest{}, nil); err == nil ||
		!strings.Contains(err.Error(), "already decided") {
		t.Fatalf("deny after approval: %v", err)
	}
	if err := c.Call(ctx, control.ApprovalsPrefix+"/nope", nil, &v); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("get missing: %v", err)
	}
	if err := c.Call(ctx, control.ApprovalsPrefix+"?state=bogus", nil, &pending); err == nil {
		t.Fatal("bad state filter accepted")
	}

	// Without kernel credentials (not a unix socket), nobody decides.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, control.ApprovalsPrefix+"/"+other+"/approve", strings.NewReader("{}"))
	s.ControlHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("decide without peer credentials: %d %s", rec.Code, rec.Body)
	}
}
