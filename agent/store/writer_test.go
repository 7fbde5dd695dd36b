package store

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
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
