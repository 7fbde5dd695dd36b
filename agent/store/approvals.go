package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ApprovalState is where an approval stands. Every state but Pending is
// final: once a request is approved, denied, expired or cancelled, no vote
// changes it.
type ApprovalState string

const (
	Pending   ApprovalState = "pending"
	Approved  ApprovalState = "approved"
	Denied    ApprovalState = "denied"
	Expired   ApprovalState = "expired"   // the deadline passed; the request is denied
	Cancelled ApprovalState = "cancelled" // the session ended while the request was held
)

var (
	// ErrDecided is returned by Vote when the approval is no longer pending
	// (including when its deadline has just passed).
	ErrDecided = errors.New("approval already decided")
	// ErrDuplicateVote is returned by Vote when the reviewer has voted on
	// this approval before; quorum counts distinct reviewers.
	ErrDuplicateVote = errors.New("reviewer already voted")
)

// Approval is a request held until reviewers decide. Host is the daemon
// holding it; in fleet mode any host can list it and vote on it.
type Approval struct {
	ID        string
	Host      string
	SessionID string
	Identity  string
	PID       int32
	Exe       string
	Target    string
	Statement string
	Rule      string
	// Reviewers are the principals the policy names (users, groups); the
	// approvals layer checks a voter against them before calling Vote.
	Reviewers []string
	// Quorum is how many distinct reviewers must approve; one deny decides.
	Quorum    int
	Requested time.Time
	Deadline  time.Time
	State     ApprovalState
	Decided   time.Time
	Votes     []Vote
}

// Vote is one reviewer's verdict.
type Vote struct {
	Reviewer string
	Approve  bool
	Comment  string
	Time     time.Time
}

// CreateApproval inserts a pending approval. It assigns a.ID when empty,
// a.Requested when zero, Quorum 1 when below 1, and State Pending.
func (s *Store) CreateApproval(ctx context.Context, a *Approval) error {
	if a.ID == "" {
		a.ID = NewID()
	}
	if a.Requested.IsZero() {
		a.Requested = time.Now().UTC()
	}
	if a.Quorum < 1 {
		a.Quorum = 1
	}
	if a.Deadline.IsZero() {
		return fmt.Errorf("create approval %s: no deadline", a.ID)
	}
	a.State = Pending
	reviewers, err := json.Marshal(a.Reviewers)
	if err != nil {
		return fmt.Errorf("encode reviewers: %w", err)
	}
	if a.Reviewers == nil {
		reviewers = []byte("[]")
	}
	_, err = s.w.ExecContext(ctx, s.Rebind(`INSERT INTO approvals
		(id, host, session_id, identity, pid, exe, target, statement, rule, reviewers, quorum, requested_ns, deadline_ns, state)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		a.ID, a.Host, a.SessionID, a.Identity, int64(a.PID), a.Exe, a.Target, a.Statement, a.Rule,
		string(reviewers), a.Quorum, nanos(a.Requested), nanos(a.Deadline), string(Pending))
	if err != nil {
		return fmt.Errorf("insert approval: %w", err)
	}
	return nil
}

const approvalColumns = `id, host, session_id, identity, pid, exe, target, statement, rule, reviewers, quorum,
	requested_ns, deadline_ns, state, decided_ns`

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func scanApproval(row interface{ Scan(...any) error }) (Approval, error) {
	var (
		a                   Approval
		pid                 int64
		reviewers, state    string
		requested, deadline int64
		decided             sql.NullInt64
	)
	if err := row.Scan(&a.ID, &a.Host, &a.SessionID, &a.Identity, &pid, &a.Exe, &a.Target, &a.Statement, &a.Rule,
		&reviewers, &a.Quorum, &requested, &deadline, &state, &decided); err != nil {
		return a, err
	}
	a.PID = int32(pid)
	a.State = ApprovalState(state)
	a.Requested, a.Deadline, a.Decided = fromNanos(requested), fromNanos(deadline), fromNanos(decided.Int64)
	if err := json.Unmarshal([]byte(reviewers), &a.Reviewers); err != nil {
		return a, fmt.Errorf("decode reviewers of %s: %w", a.ID, err)
	}
	return a, nil
}

func (s *Store) loadVotes(ctx context.Context, q querier, a *Approval) error {
	rows, err := q.QueryContext(ctx, s.Rebind(`SELECT reviewer, approve, comment, time_ns FROM approval_votes
		WHERE approval_id = ? ORDER BY time_ns, reviewer`), a.ID)
	if err != nil {
		return fmt.Errorf("read votes of %s: %w", a.ID, err)
	}
	defer rows.Close()
	a.Votes = a.Votes[:0]
	for rows.Next() {
		var (
			v  Vote
			ns int64
		)
		if err := rows.Scan(&v.Reviewer, &v.Approve, &v.Comment, &ns); err != nil {
			return fmt.Errorf("read votes of %s: %w", a.ID, err)
		}
		v.Time = fromNanos(ns)
		a.Votes = append(a.Votes, v)
	}
	return rows.Err()
}

// Approval returns approval id with its votes, or ErrNotFound.
func (s *Store) Approval(ctx context.Context, id string) (Approval, error) {
	return s.approval(ctx, s.db, id, "")
}

func (s *Store) approval(ctx context.Context, q querier, id, suffix string) (Approval, error) {
	a, err := scanApproval(q.QueryRowContext(ctx, s.Rebind("SELECT "+approvalColumns+" FROM approvals WHERE id = ?"+suffix), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Approval{}, fmt.Errorf("approval %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Approval{}, fmt.Errorf("read approval %s: %w", id, err)
	}
	if err := s.loadVotes(ctx, q, &a); err != nil {
		return Approval{}, err
	}
	return a, nil
}

// ApprovalFilter selects approvals. Zero fields match everything.
type ApprovalFilter struct {
	Host  string
	State ApprovalState
	Since time.Time // requested at or after
	Limit int       // newest first; 0 means 100
}

// ListApprovals returns matching approvals with their votes, newest first.
func (s *Store) ListApprovals(ctx context.Context, f ApprovalFilter) ([]Approval, error) {
	var (
		where []string
		args  []any
	)
	if f.Host != "" {
		where, args = append(where, "host = ?"), append(args, f.Host)
	}
	if f.State != "" {
		where, args = append(where, "state = ?"), append(args, string(f.State))
	}
	if !f.Since.IsZero() {
		where, args = append(where, "requested_ns >= ?"), append(args, f.Since.UnixNano())
	}
	q := "SELECT " + approvalColumns + " FROM approvals"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q += " ORDER BY requested_ns DESC, id DESC LIMIT ?"
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.Rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	var out []Approval
	for rows.Next() {
		a, err := scanApproval(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("list approvals: %w", err)
		}
		out = append(out, a)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list approvals: %w", err)
	}
	for i := range out {
		if err := s.loadVotes(ctx, s.db, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Vote records v on approval id and returns the approval as it stands after
// the vote. The approval row is locked for the transaction (SELECT ... FOR
// UPDATE on PostgreSQL, an IMMEDIATE transaction on SQLite), so concurrent
// votes from several hosts are counted exactly: a deny vote decides Denied at
// once, the Quorum-th distinct approving reviewer decides Approved, and a
// decided approval never changes again (ErrDecided, with the final approval
// returned). A vote after the deadline marks the approval Expired and returns
// ErrDecided. Checking that v.Reviewer may vote at all is the caller's job.
func (s *Store) Vote(ctx context.Context, id string, v Vote) (Approval, error) {
	if v.Reviewer == "" {
		return Approval{}, fmt.Errorf("vote on %s: empty reviewer", id)
	}
	if v.Time.IsZero() {
		v.Time = time.Now().UTC()
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return Approval{}, fmt.Errorf("vote on %s: %w", id, err)
	}
	defer tx.Rollback()
	lock := ""
	if s.backend == PostgreSQL {
		lock = " FOR UPDATE"
	}
	a, err := s.approval(ctx, tx, id, lock)
	if err != nil {
		return Approval{}, err
	}
	if a.State != Pending {
		return a, fmt.Errorf("vote on %s: %w (%s)", id, ErrDecided, a.State)
	}
	if !v.Time.Before(a.Deadline) {
		if err := s.setState(ctx, tx, &a, Expired, a.Deadline); err != nil {
			return Approval{}, err
		}
		if err := tx.Commit(); err != nil {
			return Approval{}, fmt.Errorf("expire approval %s: %w", id, err)
		}
		return a, fmt.Errorf("vote on %s: %w (%s)", id, ErrDecided, a.State)
	}
	for _, old := range a.Votes {
		if old.Reviewer == v.Reviewer {
			return a, fmt.Errorf("vote on %s by %s: %w", id, v.Reviewer, ErrDuplicateVote)
		}
	}
	if _, err := tx.ExecContext(ctx, s.Rebind(`INSERT INTO approval_votes (approval_id, reviewer, approve, comment, time_ns)
		VALUES (?, ?, ?, ?, ?)`), id, v.Reviewer, v.Approve, v.Comment, nanos(v.Time)); err != nil {
		return Approval{}, fmt.Errorf("insert vote on %s: %w", id, err)
	}
	a.Votes = append(a.Votes, v)
	approvals := 0
	for _, old := range a.Votes {
		if old.Approve {
			approvals++
		}
	}
	switch {
	case !v.Approve:
		err = s.setState(ctx, tx, &a, Denied, v.Time)
	case approvals >= a.Quorum:
		err = s.setState(ctx, tx, &a, Approved, v.Time)
	}
	if err != nil {
		return Approval{}, err
	}
	if err := tx.Commit(); err != nil {
		return Approval{}, fmt.Errorf("commit vote on %s: %w", id, err)
	}
	return a, nil
}

func (s *Store) setState(ctx context.Context, tx *sql.Tx, a *Approval, st ApprovalState, at time.Time) error {
	if _, err := tx.ExecContext(ctx, s.Rebind("UPDATE approvals SET state = ?, decided_ns = ? WHERE id = ? AND state = ?"),
		string(st), nanos(at), a.ID, string(Pending)); err != nil {
		return fmt.Errorf("set approval %s %s: %w", a.ID, st, err)
	}
	a.State, a.Decided = st, at.UTC()
	return nil
}

// ExpireApprovals marks every pending approval whose deadline is at or
// before now as Expired and returns them. Each daemon calls it periodically
// for its own host; the conditional UPDATE makes concurrent callers safe.
func (s *Store) ExpireApprovals(ctx context.Context, host string, now time.Time) ([]Approval, error) {
	pending, err := s.ListApprovals(ctx, ApprovalFilter{Host: host, State: Pending, Limit: 10000})
	if err != nil {
		return nil, err
	}
	var out []Approval
	for _, a := range pending {
		if now.Before(a.Deadline) {
			continue
		}
		res, err := s.w.ExecContext(ctx, s.Rebind("UPDATE approvals SET state = ?, decided_ns = ? WHERE id = ? AND state = ?"),
			string(Expired), nanos(a.Deadline), a.ID, string(Pending))
		if err != nil {
			return out, fmt.Errorf("expire approval %s: %w", a.ID, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			a.State, a.Decided = Expired, a.Deadline
			out = append(out, a)
		}
	}
	return out, nil
}

// CancelApproval marks a pending approval Cancelled (the holding session went
// away). It returns ErrDecided if a decision was made first.
func (s *Store) CancelApproval(ctx context.Context, id string, at time.Time) error {
	res, err := s.w.ExecContext(ctx, s.Rebind("UPDATE approvals SET state = ?, decided_ns = ? WHERE id = ? AND state = ?"),
		string(Cancelled), nanos(at), id, string(Pending))
	if err != nil {
		return fmt.Errorf("cancel approval %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("cancel approval %s: %w", id, ErrDecided)
	}
	return nil
}

// WaitApproval polls approval id every interval until it is no longer
// pending, its deadline passes (it is then expired and returned), or ctx
// ends. This is how the holding host learns of a vote cast on another host;
// polling an indexed primary key is cheap on both backends.
func (s *Store) WaitApproval(ctx context.Context, id string, interval time.Duration) (Approval, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		a, err := s.Approval(ctx, id)
		if err != nil {
			return a, err
		}
		if a.State != Pending {
			return a, nil
		}
		if now := time.Now(); !now.Before(a.Deadline) {
			if _, err := s.ExpireApprovals(ctx, a.Host, now); err != nil {
				return a, err
			}
			return s.Approval(ctx, id)
		}
		select {
		case <-ctx.Done():
			return a, ctx.Err()
		case <-t.C:
		}
	}
}
