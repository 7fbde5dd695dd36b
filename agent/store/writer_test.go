package store

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
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

// Sessions begun and ended in one transaction are written together
// (runSessions): each session that ended in the batch is one row, never
// updated, a session begun before gets its end as an update, and every
// column, verdict and recording part is what the writes alone would have
// stored. A session ended twice in the batch sends it back to the writes
// one at a time, and the second end fails.
func TestSessionsWrittenTogether(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// A session ended with a verdict and a recording prepares the
	// statements its writes prepare before they are queued: a preparation
	// needs the writer's connection, which the held transactions below
	// hold.
	earlier := &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}
	warm := &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}
	for _, x := range []*Session{earlier, warm} {
		if err := s.CreateSession(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.EndSession(ctx, warm.ID, SessionEnd{Recording: []byte("r"),
		Decisions: []Decision{{SessionID: warm.ID, Action: "allow", Statement: "SELECT 1"}}}); err != nil {
		t.Fatal(err)
	}
	changes := func() (n int64) {
		if err := s.w.QueryRowContext(ctx, "SELECT total_changes()").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Hold the writer in a transaction while the next batch queues.
	hold, held := make(chan struct{}), make(chan struct{})
	go s.write(ctx, func(context.Context, *sql.Tx) error { close(held); <-hold; return nil })
	<-held
	release := sync.OnceFunc(func() { close(hold) })
	defer func() { release() }() // before Close, which waits for the writer
	var ss [4]*Session
	for i := range ss {
		ss[i] = &Session{Host: "h", Identity: "ci", PID: int32(100 + i), UID: 1000, Exe: "/usr/bin/psql", Cgroup: "/c",
			Target: "t", Protocol: "postgresql", ClientAddr: "127.0.0.1:4000", UpstreamAddr: "127.0.0.1:5432",
			Recording: "/r/" + strconv.Itoa(i)}
		if err := s.BeginSession(ctx, ss[i], func(err error) { t.Error(err) }); err != nil {
			t.Fatal(err)
		}
	}
	ended := time.Unix(1700000000, 42).UTC()
	ends := map[string]SessionEnd{
		ss[0].ID: {Ended: ended, BytesIn: 10, BytesOut: 20, Messages: 3, Outcome: "closed", RecordingSHA256: "ab", RecordingSize: 7,
			Decisions: []Decision{{SessionID: ss[0].ID, Seq: 1, Time: ended, Action: "allow", Rule: "r", Enforced: true, Statement: "SELECT 1"}}},
		ss[1].ID:   {Ended: ended, Outcome: "client error", Recording: []byte("inline recording")},
		earlier.ID: {Ended: ended, Outcome: "killed", BytesIn: 5},
	}
	errs := make(chan error, len(ends)+1)
	for id, e := range ends {
		go func() { errs <- s.EndSessionShared(ctx, id, e) }()
	}
	// ss[2] twice: one of the two ends fails.
	go func() { errs <- s.EndSessionShared(ctx, ss[2].ID, SessionEnd{Ended: ended, Outcome: "closed"}) }()
	go func() { errs <- s.EndSessionShared(ctx, ss[2].ID, SessionEnd{Ended: ended, Outcome: "closed"}) }()
	waitQueued(t, s, len(ss)+len(ends)+2)
	release()
	failed := 0
	for range len(ends) + 2 {
		if err := <-errs; err != nil {
			if !errors.Is(err, errNotOpen) {
				t.Errorf("end: %v", err)
			}
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d ends failed, want the second end of %s", failed, ss[2].ID)
	}
	for id, e := range ends {
		got, err := s.Session(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Ended.Equal(e.Ended) || got.Outcome != e.Outcome || got.BytesIn != e.BytesIn || got.BytesOut != e.BytesOut ||
			got.Messages != e.Messages || got.RecordingSHA256 != e.RecordingSHA256 || got.RecordingSize != e.RecordingSize {
			t.Errorf("session %s: %+v, want the end %+v", id, got, e)
		}
	}
	if got, err := s.Session(ctx, ss[0].ID); err != nil || got.PID != 100 || got.UID != 1000 || got.Exe != "/usr/bin/psql" ||
		got.ClientAddr != "127.0.0.1:4000" || got.Recording != "/r/0" || !got.Started.Equal(ss[0].Started) {
		t.Errorf("session row: %+v %v", got, err)
	}
	if got, err := s.Session(ctx, ss[3].ID); err != nil || !got.Ended.IsZero() || got.Outcome != "" {
		t.Errorf("an open session: %+v %v", got, err)
	}
	if ds, err := s.Decisions(ctx, ss[0].ID); err != nil || len(ds) != 1 || ds[0].Statement != "SELECT 1" {
		t.Errorf("verdicts: %+v %v", ds, err)
	}
	r, err := s.OpenRecording(ctx, ss[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r); string(b) != "inline recording" {
		t.Errorf("recording %q", b)
	}

	// Without a second end, such a batch is written together: the ended
	// sessions' rows are inserted ended. (The count of changed rows, which
	// counts the rows of statements rolled back too, is the writer's
	// connection's, which the held transaction holds.)
	before := changes()
	hold, held = make(chan struct{}), make(chan struct{})
	go s.write(ctx, func(context.Context, *sql.Tx) error { close(held); <-hold; return nil })
	<-held
	release = sync.OnceFunc(func() { close(hold) })
	var more [3]*Session
	for i := range more {
		more[i] = &Session{Host: "h", Identity: "ci", Target: "t", Protocol: "tcp"}
		if err := s.BeginSession(ctx, more[i], func(err error) { t.Error(err) }); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []*Session{more[0], more[1], ss[3]} {
		go func() {
			errs <- s.EndSessionShared(ctx, x.ID, SessionEnd{Ended: ended, Outcome: "closed", Recording: []byte("r")})
		}()
	}
	waitQueued(t, s, len(more)+3)
	release()
	for range 3 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	// Three rows, one update (ss[3], begun before), three parts.
	if n := changes() - before; n != 3+1+3 {
		t.Errorf("%d rows changed, want 7: the sessions were not written together", n)
	}
	for _, x := range []*Session{more[0], more[1], ss[3]} {
		if got, err := s.Session(ctx, x.ID); err != nil || got.Outcome != "closed" || !got.Ended.Equal(ended) {
			t.Errorf("session %s: %+v %v", x.ID, got, err)
		}
	}
}

// waitQueued waits until n writes are queued for the writer.
func waitQueued(t *testing.T, s *Store, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.writer.mu.Lock()
		q := len(s.writer.queued)
		s.writer.mu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}
