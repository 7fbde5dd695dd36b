package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Writes that share a transaction are isolated: one that fails is undone
// alone and reports its own error; the others commit.
func TestSharedTransactionIsolatesWrites(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	insert := func(id string, fail bool) *writeOp {
		return &writeOp{done: make(chan error, 1), fn: func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO sessions (id, host, identity, target, protocol, started_ns)
				VALUES (?, 'h', 'ci', 't', 'tcp', 1)`, id); err != nil {
				return err
			}
			if fail {
				return errors.New("refused after its insert")
			}
			return nil
		}}
	}
	ops := []*writeOp{insert("a", false), insert("b", true), insert("a", false), insert("c", false)}
	s.commit(ops)
	for i, want := range []bool{true, false, false, true} {
		if err := <-ops[i].done; (err == nil) != want {
			t.Errorf("write %d: %v, want success %v", i, err, want)
		}
	}
	for id, want := range map[string]bool{"a": true, "b": false, "c": true} {
		_, err := s.Session(ctx, id)
		if (err == nil) != want {
			t.Errorf("session %s: %v, want stored %v", id, err, want)
		}
	}
}

// Writes from many goroutines at once all land, and Close waits for them;
// a write after Close fails.
func TestConcurrentWritesThenClose(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.CreateSession(ctx, &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ss, err := s.ListSessions(ctx, SessionFilter{Limit: 2 * n})
	if err != nil || len(ss) != n {
		t.Fatalf("%d sessions stored of %d: %v", len(ss), n, err)
	}
	s.Close()
	if err := s.CreateSession(ctx, &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}); !errors.Is(err, errClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

// A write a caller waits on (EndSession, and AddDecisions, which the
// recorder flushes while sessions begin) comes after the row the same
// caller queued before it, however the writes of several callers
// interleave: the writer once took a second waited-on write into a
// transaction without the rows queued since its first, and the write found
// no session.
func TestWriteAfterItsQueuedRow(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				ss := &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}
				if err := s.BeginSession(ctx, ss, func(err error) { t.Error(err) }); err != nil {
					t.Error(err)
					return
				}
				if err := s.EndSession(ctx, ss.ID, SessionEnd{Outcome: "closed"}); err != nil {
					t.Errorf("end a session just begun: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// A queued session row (BeginSession) comes before the writes made after it:
// a session ended at once (EndSession, EndSessionShared) finds its row. A row the store
// refuses is reported to its caller alone, and Close stores what is queued.
func TestQueuedRows(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "interlock.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	refusals := make(chan error, n+1)
	refused := func(err error) { refusals <- err }
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ss := &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}
			if err := s.BeginSession(ctx, ss, refused); err != nil {
				t.Error(err)
				return
			}
			end := s.EndSession
			if i%2 == 1 {
				end = s.EndSessionShared
			}
			if err := end(ctx, ss.ID, SessionEnd{Outcome: "closed"}); err != nil {
				t.Errorf("end a session just begun: %v", err)
			}
		}()
	}
	wg.Wait()
	// The same ID again: its row is refused, the rows queued beside it are
	// not.
	dup := &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}
	if err := s.CreateSession(ctx, dup); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginSession(ctx, &Session{ID: dup.ID, Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}, refused); err != nil {
		t.Fatal(err)
	}
	last := &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}
	if err := s.BeginSession(ctx, last, refused); err != nil {
		t.Fatal(err)
	}
	s.Close()
	close(refusals)
	var got []error
	for err := range refusals {
		got = append(got, err)
	}
	if len(got) != 1 || !strings.Contains(got[0].Error(), dup.ID) {
		t.Errorf("refusals %v, want one, of %s", got, dup.ID)
	}
	if err := s.BeginSession(ctx, &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}, refused); !errors.Is(err, errClosed) {
		t.Errorf("queue after Close: %v", err)
	}
	s, err = OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ss, err := s.ListSessions(ctx, SessionFilter{Limit: 2 * n})
	if err != nil || len(ss) != n+2 {
		t.Fatalf("%d sessions stored, want %d: %v", len(ss), n+2, err)
	}
	for _, x := range ss {
		if x.ID != dup.ID && x.ID != last.ID && x.Ended.IsZero() {
			t.Errorf("session %s not ended", x.ID)
		}
	}
	if _, err := s.Session(ctx, last.ID); err != nil {
		t.Errorf("the row queued before Close: %v", err)
	}
}
