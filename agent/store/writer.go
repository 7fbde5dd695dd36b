package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
)

// errClosed is what a write gets once the store is closed.
var errClosed = errors.New("store closed")

// maxBatch bounds how many writes share one SQLite transaction.
const maxBatch = 64

// writeOp is one caller's write, run by the writer in a transaction it may
// share with others.
type writeOp struct {
	fn   func(ctx context.Context, tx *sql.Tx) error
	done chan error
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
	// savepoint, rollback, release isolate each write of a shared
	// transaction: one that fails is undone alone.
	savepoint, rollback, release *sql.Stmt
}

// startWriter starts s's writer; PostgreSQL has none (its writes run in
// transactions of their own, concurrently).
func (s *Store) startWriter(ctx context.Context) error {
	w := &writer{ops: make(chan *writeOp), quit: make(chan struct{})}
	for _, st := range []struct {
		p *(*sql.Stmt)
		q string
	}{{&w.savepoint, "SAVEPOINT write"}, {&w.rollback, "ROLLBACK TO write"}, {&w.release, "RELEASE write"}} {
		p, err := s.prepared(ctx, st.q)
		if err != nil {
			return fmt.Errorf("prepare %s: %w", st.q, err)
		}
		*st.p = p
	}
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
	if s.writer == nil {
		return s.inTx(ctx, fn)
	}
	op := &writeOp{fn: fn, done: make(chan error, 1)}
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

func (s *Store) writeLoop() {
	w := s.writer
	defer w.done.Done()
	batch := make([]*writeOp, 0, maxBatch)
	for {
		select {
		case op := <-w.ops:
			batch = append(batch[:0], op)
		more:
			for len(batch) < maxBatch {
				select {
				case op := <-w.ops:
					batch = append(batch, op)
				default:
					break more
				}
			}
			s.commit(batch)
		case <-w.quit:
			return
		}
	}
}

// commit runs batch in one transaction and tells each write its outcome.
func (s *Store) commit(batch []*writeOp) {
	ctx := context.Background()
	if len(batch) == 1 {
		batch[0].done <- s.inTx(ctx, batch[0].fn)
		return
	}
	errs := make([]error, len(batch))
	tx, err := s.w.BeginTx(ctx, nil)
	if err == nil {
		defer tx.Rollback()
		w := s.writer
		for i, op := range batch {
			if _, err := tx.StmtContext(ctx, w.savepoint).ExecContext(ctx); err != nil {
				errs[i] = err
				continue
			}
			if errs[i] = op.fn(ctx, tx); errs[i] != nil {
				_, err = tx.StmtContext(ctx, w.rollback).ExecContext(ctx)
			}
			if _, rerr := tx.StmtContext(ctx, w.release).ExecContext(ctx); err == nil {
				err = rerr
			}
			if err != nil {
				// The transaction cannot isolate this write: give up on
				// all of it rather than commit what it left.
				break
			}
		}
		if err == nil {
			err = tx.Commit()
		}
	}
	for i, op := range batch {
		if errs[i] == nil {
			errs[i] = err
		}
		op.done <- errs[i]
	}
}
