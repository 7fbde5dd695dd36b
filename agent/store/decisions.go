package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unsafe"
)

// Decision is the policy verdict on one request of a session. Seq is the
// request's message index in the session recording, so a transcript can put
// the decision beside the statement it judged; one message can carry several
// statements, so several decisions can share a Seq. Index numbers the
// session's decisions from 0 and is their key: the recorder assigns it.
type Decision struct {
	SessionID string
	Index     int64
	Seq       int64
	Time      time.Time
	Action    string // "allow", "deny", "mask", "approve"
	Rule      string
	Reason    string
	// Enforced is false in audit mode: the action is what the policy would
	// have done ("would deny"), not what happened.
	Enforced  bool
	Statement string // the request as the agent sent it
	// Op is the operation the request was decided as, when its protocol
	// names one apart from its text: an SSH request ("exec", "shell",
	// "sftp-read", ...) or an HTTP method; "" for SQL. A replay decides
	// the statement again as the same operation.
	Op         string
	ApprovalID string
}

// Decisions are stored a batch to a row (decision_batches): up to
// decisionsPerRow consecutive decisions of one session, as a JSON array,
// with the first and last Index and the actions among them.
//
// Why: a row per decision cost a busy proxy more than any other part of
// deciding a statement. Most of it was the SQLite driver's work per
// argument (each text copied into a buffer of its own, bound, unbound and
// freed), not the B-tree: rows of 10 columns for every statement made that
// 3.4 µs a decision (BenchmarkAddDecisions), batches 1.25 µs, most of it
// their JSON encoding and the commit. Nothing reads one decision alone: a
// session's are read together, and sessions are found by the actions they
// had.
const decisionsPerRow = 500

// decisionJSON is a decision in its batch's array; the session is the
// row's.
type decisionJSON struct {
	Index      int64  `json:"idx"`
	Seq        int64  `json:"seq"`
	TimeNS     int64  `json:"time_ns"`
	Action     string `json:"action"`
	Rule       string `json:"rule,omitempty"`
	Reason     string `json:"reason,omitempty"`
	Enforced   bool   `json:"enforced"`
	Statement  string `json:"statement,omitempty"`
	Op         string `json:"op,omitempty"`
	ApprovalID string `json:"approval_id,omitempty"`
}

// decisionRow is one row of decision_batches, encoded.
type decisionRow struct {
	session     string
	first, last int64
	actions     string
	data        string
}

// decisionEncoding is the buffer decisionRows encodes a call's rows into,
// and the array a run is laid out in, kept for the next call (encodings).
//
// Why: at a busy proxy's rate a second's decisions are a megabyte of JSON,
// and it was allocated twice (json.Marshal's result, then its copy into a
// string), with the array of the run: under pgbench's tpcb-like at one
// client, a third or more of what interlockd allocated. On one processor a
// collection can hold a relay goroutine up for milliseconds.
type decisionEncoding struct {
	buf bytes.Buffer
	enc *json.Encoder
	run []decisionJSON
}

// encodings keeps two: a flush and an ending session may encode at once.
// Not a sync.Pool, which a collection empties: with a collection about
// every second under load, the flush's buffer was dropped and grown again
// by doubling about as often as it was kept.
var encodings = make(chan *decisionEncoding, 2)

func getEncoding() *decisionEncoding {
	select {
	case e := <-encodings:
		return e
	default:
		e := &decisionEncoding{}
		e.enc = json.NewEncoder(&e.buf)
		return e
	}
}

// encodedSize is about what batches take as JSON, a little over: the
// buffer is grown to it once, not by doubling from what it had.
//
// Why: pgbench -S at 16 clients makes about 5 MB of decisions a second, over
// what encodings kept (then 4 MiB), so every flush grew a new buffer by
// doubling, each step a fresh allocation cleared and filled by page faults
// and the last copied: 8.6 % of interlockd's CPU (runtime.memclr under
// bytes.growSlice).
func encodedSize(batches [][]Decision) int {
	n := 0
	for _, ds := range batches {
		for i := range ds {
			d := &ds[i]
			n += decisionOverhead + len(d.Action) + len(d.Rule) + len(d.Reason) + len(d.ApprovalID) + len(d.Op) + len(d.Statement)*9/8
		}
	}
	return n
}

// decisionOverhead is a decision's JSON besides its texts: the keys,
// quotes and commas (110 bytes) and the numbers (about 35 for a session's
// first ten million decisions), with room for a few escaped characters.
// An estimate short of the encoding only costs a doubling.
const decisionOverhead = 160

// decisionRows encodes batches into rows: a row for each run of one
// session's decisions, decisionsPerRow at most. ends[i] is where the rows
// of batches[i] end. The rows' data is in e's buffer: the caller gives e
// back (doneWith) only once nothing can still read a row, which a
// write abandoned on its context's end still may.
func decisionRows(batches [][]Decision) (rows []decisionRow, ends []int, e *decisionEncoding, err error) {
	e = getEncoding()
	e.buf.Reset()
	e.buf.Grow(encodedSize(batches))
	type span struct{ start, end int }
	var spans []span
	ends = make([]int, len(batches))
	for b, ds := range batches {
		for len(ds) > 0 {
			n := 1
			for n < len(ds) && n < decisionsPerRow && ds[n].SessionID == ds[0].SessionID {
				n++
			}
			run := ds[:n]
			ds = ds[n:]
			e.run = e.run[:0]
			var actions []string
			for i := range run {
				d := &run[i]
				e.run = append(e.run, decisionJSON{Index: d.Index, Seq: d.Seq, TimeNS: nanos(d.Time), Action: d.Action,
					Rule: d.Rule, Reason: d.Reason, Enforced: d.Enforced, Statement: d.Statement, Op: d.Op, ApprovalID: d.ApprovalID})
				if !slices.Contains(actions, d.Action) {
					actions = append(actions, d.Action)
				}
			}
			start := e.buf.Len()
			if err := e.enc.Encode(e.run); err != nil {
				doneWith(context.Background(), e)
				return nil, nil, nil, fmt.Errorf("encode decisions %s/%d..%d: %w", run[0].SessionID, run[0].Index, run[n-1].Index, err)
			}
			// Encode ends the value with a newline, which json.Marshal did not.
			e.buf.Truncate(e.buf.Len() - 1)
			spans = append(spans, span{start, e.buf.Len()})
			rows = append(rows, decisionRow{session: run[0].SessionID, first: run[0].Index, last: run[n-1].Index,
				actions: strings.Join(actions, ",")})
		}
		ends[b] = len(rows)
	}
	// The strings point into the buffer, which no longer grows: the rows are
	// read by the inserts, which copy them, and the buffer is not written
	// again until e is given back.
	all := e.buf.Bytes()
	for i, sp := range spans {
		rows[i].data = unsafe.String(&all[sp.start], sp.end-sp.start)
	}
	clear(e.run[:cap(e.run)]) // the statements it holds
	return rows, ends, e, nil
}

// doneWith gives e back once the writes that used its rows have returned:
// unless ctx has ended (a write abandoned on it may still run), they have
// run, and nothing reads the rows any more. A buffer is kept while the
// calls fill it: one grown for a busy second serves the next, and is let
// go at the first call that used under a quarter of it (a quiet second,
// or a session's end taking it between flushes), as is one grown over
// maxPooledEncoding for a backlog.
func doneWith(ctx context.Context, e *decisionEncoding) {
	size := e.buf.Cap()
	if ctx.Err() != nil || size > maxPooledEncoding || size > smallEncoding && e.buf.Len() < size/4 {
		return
	}
	select {
	case encodings <- e:
	default:
	}
}

// maxPooledEncoding is the largest buffer encodings keeps: a few seconds of
// a busy proxy's decisions. Buffers up to smallEncoding are kept however
// little a call used of them.
const (
	maxPooledEncoding = 16 << 20
	smallEncoding     = 256 << 10
)

// AddDecisions stores the decisions of every batch. The recorder batches
// verdicts this way so the proxy never waits for a database write per
// statement; it passes each session's verdicts as a batch of their own,
// since copying them into one slice first cost the busy proxy a tenth of
// this call. Each transaction carries whole batches, about one INSERT's
// rows (insertRows; a larger batch alone), so a large backlog never holds
// the SQLite write lock long enough to time out other writers, and a batch
// is stored whole or not at all; the rows are encoded before any is taken.
// A transaction that fails does not stop the ones after it: the error is a
// *DecisionsError naming the batches not stored, for the caller to try
// again. A failed transaction of several batches is tried again a batch
// at a time, so that one the store refuses for good (stored twice, after
// a commit whose outcome was lost) does not take the others with it at
// every try until the caller gives them up; two batches failing in a row
// end that (the store is failing, not a batch), and the rest wait for the
// caller's next try.
func (s *Store) AddDecisions(ctx context.Context, batches ...[]Decision) error {
	rows, ends, enc, err := decisionRows(batches)
	if err != nil {
		return err
	}
	defer doneWith(ctx, enc)
	var failed *DecisionsError
	unstored := func(i int, err error) {
		if failed == nil {
			failed = &DecisionsError{Err: err}
		}
		failed.Unstored = append(failed.Unstored, i)
	}
	rowsOf := func(i int) []decisionRow {
		if i == 0 {
			return rows[:ends[0]]
		}
		return rows[ends[i-1]:ends[i]]
	}
	for b, start := 0, 0; b < len(batches); {
		e := b + 1
		for e < len(batches) && ends[e]-start <= insertRows {
			e++
		}
		if ends[e-1] > start {
			err := s.addDecisionRows(ctx, rows[start:ends[e-1]])
			switch {
			case err == nil:
			case e-b == 1:
				unstored(b, err)
			default:
				inRow := 0
				for i := b; i < e; i++ {
					if len(rowsOf(i)) == 0 {
						continue
					}
					if inRow == 2 {
						unstored(i, err)
						continue
					}
					if err1 := s.addDecisionRows(ctx, rowsOf(i)); err1 != nil {
						unstored(i, err1)
						inRow++
					} else {
						inRow = 0
					}
				}
			}
		}
		b, start = e, ends[e-1]
	}
	if failed != nil {
		return failed
	}
	return nil
}

// DecisionsError is how AddDecisions failed: Unstored are the indexes of
// the batches it did not store (every other one is stored), Err the first
// failure.
type DecisionsError struct {
	Unstored []int
	Err      error
}

func (e *DecisionsError) Error() string {
	return fmt.Sprintf("%d batches of decisions not stored: %v", len(e.Unstored), e.Err)
}

func (e *DecisionsError) Unwrap() error { return e.Err }

func (s *Store) addDecisionRows(ctx context.Context, rows []decisionRow) error {
	ins, err := s.decisionsInsert(ctx, len(rows))
	if err != nil {
		return err
	}
	return s.write(ctx, func(ctx context.Context, tx *sql.Tx) error { return ins(ctx, tx, rows) })
}

// decisionsInsert returns what inserts n rows of decisions in a
// transaction; its statements are prepared here (see rowsInsert). A batch
// stored twice fails on the row's key and names its decisions.
func (s *Store) decisionsInsert(ctx context.Context, n int) (func(context.Context, *sql.Tx, []decisionRow) error, error) {
	ins, err := s.rowsInsert(ctx, "decision_batches", "session_id, first_idx, last_idx, actions, decisions", n)
	if err != nil {
		return nil, fmt.Errorf("insert decisions: %w", err)
	}
	return func(ctx context.Context, tx *sql.Tx, rows []decisionRow) error {
		err := ins(ctx, tx, func(args []any, i int) []any {
			r := &rows[i]
			return append(args, r.session, r.first, r.last, r.actions, r.data)
		})
		if err != nil {
			return fmt.Errorf("insert decisions %s/%d..%d: %w", rows[0].session, rows[0].first, rows[len(rows)-1].last, err)
		}
		return nil
	}, nil
}

// Decisions returns the decisions of session id in the order they were made.
func (s *Store) Decisions(ctx context.Context, sessionID string) ([]Decision, error) {
	rows, err := s.db.QueryContext(ctx, s.Rebind(`SELECT decisions FROM decision_batches
		WHERE session_id = ? ORDER BY first_idx`), sessionID)
	if err != nil {
		return nil, fmt.Errorf("list decisions: %w", err)
	}
	defer rows.Close()
	var (
		out []Decision
		enc []decisionJSON
	)
	for rows.Next() {
		var data string
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("list decisions: %w", err)
		}
		enc = enc[:0]
		if err := json.Unmarshal([]byte(data), &enc); err != nil {
			return nil, fmt.Errorf("list decisions of %s: a stored batch does not decode: %w", sessionID, err)
		}
		for _, d := range enc {
			out = append(out, Decision{SessionID: sessionID, Index: d.Index, Seq: d.Seq, Time: fromNanos(d.TimeNS),
				Action: d.Action, Rule: d.Rule, Reason: d.Reason, Enforced: d.Enforced, Statement: d.Statement,
				Op: d.Op, ApprovalID: d.ApprovalID})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list decisions: %w", err)
	}
	return out, nil
}
