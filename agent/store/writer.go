package store

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"time"
)

// errClosed is what a write gets once the store is closed.
var errClosed = errors.New("store closed")

// maxBatch bounds how many writes share one SQLite transaction.
const maxBatch = 64

// writeLinger is how long queued writes (see queue and writeShared) wait
// for others to share their transaction; a write made with write ends the
// wait. A transaction's cost is mostly the pages it writes to the WAL, the
// same few for one session as for twenty: at 20 ms rather than 5 (with
// the audit writer's batches, audit.batchLinger, lingering as long), the
// writer's CPU per new proxied connection fell by a third and interlockd's
// by a tenth. No agent waits for it: a session's row is queued, and its
// end is stored after its connection closed.
const writeLinger = 20 * time.Millisecond

// writeOp is one caller's write, run by the writer in a transaction it may
// share with others. done gets the outcome of a write the caller waits on;
// refused is told the error of one nobody waits on.
type writeOp struct {
	fn      func(ctx context.Context, tx *sql.Tx) error
	done    chan error
	refused func(error)
	// sess is what fn writes when it is a session's row or end, in a
	// form the writer can run together with the other sessions' of its
	// transaction (runSessions).
	sess *sessionWrite
}

// writer commits SQLite's writes: the writes that arrive while a
// transaction commits share the next one (group commit). A transaction's
// cost is mostly fixed: taking and releasing the database's locks, and
// writing each page it changed to the WAL once, however many rows of the
// page changed; one session's start, another's end and a batch of audit
// records change the same few pages.
type writer struct {
	ops  chan *writeOp
	quit chan struct{}
	done sync.WaitGroup
	// queued holds the writes that may wait for company (queue,
	// writeShared), in order; kick wakes the writer for them. closed
	// refuses more once the writer has taken the last of them.
	mu     sync.Mutex
	queued []*writeOp
	closed bool
	kick   chan struct{}
}

// startWriter starts s's writer; PostgreSQL has none (its writes run in
// transactions of their own, concurrently).
func (s *Store) startWriter(ctx context.Context) error {
	w := &writer{ops: make(chan *writeOp), quit: make(chan struct{}), kick: make(chan struct{}, 1)}
	s.writer = w
	w.done.Add(1)
	go s.writeLoop()
	return nil
}

// stopWriter ends the writer once the write it runs, if any, is done;
// writes after that fail with errClosed.
func (s *Store) stopWriter() {
	if s.writer == nil {
		return
	}
	close(s.writer.quit)
	s.writer.done.Wait()
}

// write runs fn in a write transaction and returns its error or the
// commit's. On SQLite, fn may share the transaction with other writes: it
// must prepare its statements before (a preparation needs the writer's
// connection, which the transaction holds) and use the ctx it is given. A
// caller's ctx only bounds its wait: a write interrupted half-way would
// roll back every write of the transaction.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.writeSession(ctx, fn, nil)
}

// writeSession is write for a session's row or end, which sess describes.
func (s *Store) writeSession(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error, sess *sessionWrite) error {
	if s.writer == nil {
		return s.inTx(ctx, fn)
	}
	op := &writeOp{fn: fn, done: make(chan error, 1), sess: sess}
	select {
	case s.writer.ops <- op:
	case <-s.writer.quit:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-op.done
}

// inTx runs fn in a transaction of its own.
func (s *Store) inTx(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(ctx, tx); err != nil {
		return err
	}
	return tx.Commit()
}

// writeShared runs fn as write does, but as a queued write: its
// transaction waits up to writeLinger for others to share it.
func (s *Store) writeShared(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error) error {
	return s.writeSessionShared(ctx, fn, nil)
}

// writeSessionShared is writeShared for a session's end, which sess
// describes.
func (s *Store) writeSessionShared(ctx context.Context, fn func(ctx context.Context, tx *sql.Tx) error, sess *sessionWrite) error {
	if s.writer == nil {
		return s.inTx(ctx, fn)
	}
	op := &writeOp{fn: fn, done: make(chan error, 1), sess: sess}
	if err := s.writer.enqueue(op); err != nil {
		return err
	}
	select {
	case err := <-op.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sync returns once every write queued before it (a session's row, its
// end) has been run: committed, or refused and its refused told. Its error
// is its own commit's.
func (s *Store) Sync(ctx context.Context) error {
	if s.writer == nil {
		return nil
	}
	return s.write(ctx, func(context.Context, *sql.Tx) error { return nil })
}

// queue hands fn to the writer and returns without waiting for it; refused
// is called with the error if its transaction refuses it. Writes queued
// before a write that is waited on go in the same transaction or an earlier
// one.
func (s *Store) queue(fn func(ctx context.Context, tx *sql.Tx) error, refused func(error), sess *sessionWrite) error {
	return s.writer.enqueue(&writeOp{fn: fn, refused: refused, sess: sess})
}

// enqueue adds op to the queued writes and wakes the writer.
func (w *writer) enqueue(op *writeOp) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return errClosed
	}
	w.queued = append(w.queued, op)
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
	return nil
}

// take appends the queued writes to batch; last refuses any more.
func (w *writer) take(batch []*writeOp, last bool) []*writeOp {
	w.mu.Lock()
	defer w.mu.Unlock()
	batch = append(batch, w.queued...)
	clear(w.queued)
	w.queued = w.queued[:0]
	w.closed = last
	return batch
}

func (s *Store) writeLoop() {
	w := s.writer
	defer w.done.Done()
	batch := make([]*writeOp, 0, maxBatch)
	for {
		var first *writeOp
		select {
		case first = <-w.ops:
		case <-w.kick:
			t := time.NewTimer(writeLinger)
			select {
			case first = <-w.ops:
			case <-t.C:
			case <-w.quit:
			}
			t.Stop()
		case <-w.quit:
			if batch = w.take(batch[:0], true); len(batch) > 0 {
				s.commit(batch)
			}
			return
		}
		// The queued writes first: a write made with write may depend on
		// them (a session's verdicts on its start), never the other way
		// round. So each write is taken after what was queued before it
		// was sent: its caller may have queued a row it depends on since
		// the last take.
		batch = w.take(batch[:0], false)
		if first != nil {
			batch = append(batch, first)
		more:
			for len(batch) < maxBatch {
				select {
				case op := <-w.ops:
					batch = append(w.take(batch, false), op)
				default:
					break more
				}
			}
		}
		if len(batch) > 0 {
			s.commit(batch)
			// The array is reused: it must not keep the writes it held,
			// and the rows their closures hold, alive until it is
			// overwritten.
			clear(batch)
		}
	}
}

// commit runs batch in one transaction and tells each write its outcome.
// Writes are isolated without a savepoint each (two more statements per
// write, and SQLite copying every page a write changes into a statement
// journal): a write that fails rolls the transaction back, the writes
// before it are committed again without it, it gets its error, and the
// writes after it go on in a transaction of their own. Failures are rare;
// a write is then run more than once, so a write's fn does nothing but
// its statements.
func (s *Store) commit(batch []*writeOp) {
	for len(batch) > 0 {
		failed, err := s.tryCommit(batch)
		if failed < 0 {
			// Every write ran: the commit's outcome is theirs.
			for _, op := range batch {
				op.tell(err)
			}
			return
		}
		s.commit(batch[:failed])
		batch[failed].tell(err)
		batch = batch[failed+1:]
	}
}

// tryCommit runs batch in one transaction. It returns the index of the
// write that failed and its error, the transaction rolled back; or -1 and
// the error of beginning or committing the transaction, which is every
// write's.
//
// The sessions' rows and ends among the writes are run together, a few
// statements for all of them (runSessions): a statement per row cost about
// as much as the row itself, and a short session made four. When any of
// those statements fails, the transaction is rolled back and the batch
// runs again a write at a time, which finds the write that failed.
func (s *Store) tryCommit(batch []*writeOp) (int, error) {
	ctx := context.Background()
	if hasSessions(batch) {
		if st, err := s.sessionStatements(ctx); err == nil {
			tx, err := s.w.BeginTx(ctx, nil)
			if err != nil {
				return -1, err
			}
			if s.runTogether(ctx, tx, st, batch) == nil {
				return -1, tx.Commit()
			}
			tx.Rollback()
		}
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return -1, err
	}
	defer tx.Rollback()
	for i, op := range batch {
		if err := op.fn(ctx, tx); err != nil {
			return i, err
		}
	}
	return -1, tx.Commit()
}

// hasSessions reports whether batch holds two writes of sessions, which
// runTogether then runs in fewer statements than they would alone.
func hasSessions(batch []*writeOp) bool {
	n := 0
	for _, op := range batch {
		if op.sess != nil {
			if n++; n == 2 {
				return true
			}
		}
	}
	return false
}

// runTogether runs batch in tx, in order, each run of sessions' writes
// between other writes in a few statements (runSessions). Its error is the
// first statement's that failed.
func (s *Store) runTogether(ctx context.Context, tx *sql.Tx, st *sessionStmts, batch []*writeOp) error {
	var run []*sessionWrite
	for _, op := range batch {
		if op.sess != nil {
			run = append(run, op.sess)
			continue
		}
		if err := runSessions(ctx, tx, st, run); err != nil {
			return err
		}
		run = run[:0]
		if err := op.fn(ctx, tx); err != nil {
			return err
		}
	}
	return runSessions(ctx, tx, st, run)
}

// tell gives op its outcome.
func (op *writeOp) tell(err error) {
	switch {
	case op.done != nil:
		op.done <- err
	case err != nil:
		op.refused(err)
	}
}
