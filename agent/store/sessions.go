package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Session is one proxied connection: who made it (kernel-attested identity
// and process attributes), where it went, and how it ended. Ended is zero
// while the session is open.
type Session struct {
	ID       string
	Host     string
	Identity string
	PID      int32
	UID      uint32
	Exe      string
	Cgroup   string
	Target   string
	Protocol string // "postgresql", "http", ...
	// ClientAddr is the agent's side of the connection and UpstreamAddr the
	// server's (the original destination), both host:port.
	ClientAddr   string
	UpstreamAddr string
	Started      time.Time
	Ended        time.Time
	BytesIn      int64 // from the agent
	BytesOut     int64 // to the agent
	Messages     int64
	Outcome      string // "closed", "client error", "protocol violation", ...
	// Recording is the path of the session's recording file (a session
	// sealed before its first flush has none: its recording is in the
	// store, see PutRecording); RecordingSHA256 (hex) and RecordingSize are
	// set when it is sealed.
	Recording       string
	RecordingSHA256 string
	RecordingSize   int64
}

// CreateSession inserts an open session. It assigns s.ID with NewID when it
// is empty and s.Started with the current time when it is zero.
func (s *Store) CreateSession(ctx context.Context, sess *Session) error {
	return s.createSession(ctx, sess, nil)
}

// BeginSession inserts an open session as CreateSession does, but on SQLite
// returns once the row is queued for the writer's next transaction, which
// may wait a little for other writes to share it (see writeLinger): a new
// connection's first byte does not wait for a commit. refused is called,
// from the writer, if that transaction refuses the row; writes queued after
// the row (the session's verdicts and end) come after it. On PostgreSQL the
// row is inserted before BeginSession returns and refused is not called.
func (s *Store) BeginSession(ctx context.Context, sess *Session, refused func(error)) error {
	return s.createSession(ctx, sess, refused)
}

func (s *Store) createSession(ctx context.Context, sess *Session, refused func(error)) error {
	if sess.ID == "" {
		sess.ID = NewID()
	}
	if sess.Started.IsZero() {
		sess.Started = time.Now().UTC()
	}
	ins, err := s.prepared(ctx, `INSERT INTO sessions
		(id, host, identity, pid, uid, exe, cgroup, target, protocol, client_addr, upstream_addr, started_ns, recording)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return fmt.Errorf("insert session: %w", err)
	}
	args := []any{sess.ID, sess.Host, sess.Identity, int64(sess.PID), int64(sess.UID),
		sess.Exe, sess.Cgroup, sess.Target, sess.Protocol, sess.ClientAddr, sess.UpstreamAddr, nanos(sess.Started), sess.Recording}
	insert := func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.StmtContext(ctx, ins).ExecContext(ctx, args...)
		return err
	}
	sw := &sessionWrite{id: sess.ID, row: args}
	if refused != nil && s.writer != nil {
		id := sess.ID
		err = s.queue(insert, func(err error) { refused(fmt.Errorf("insert session %s: %w", id, err)) }, sw)
	} else {
		err = s.writeSession(ctx, insert, sw)
	}
	if err != nil {
		return fmt.Errorf("insert session: %w", err)
	}
	return nil
}

// SessionEnd is what is known when a session closes.
type SessionEnd struct {
	Ended           time.Time
	BytesIn         int64
	BytesOut        int64
	Messages        int64
	Outcome         string
	RecordingSHA256 string
	RecordingSize   int64
	// Recording, when set, is the whole recording, stored with the row in
	// one transaction (as PutRecording would): a session sealed before its
	// recording reached a file.
	Recording []byte
	// Decisions are the session's verdicts not yet stored, inserted with
	// the row (as AddDecisions would): a transaction less per session.
	Decisions []Decision
}

// EndSession closes session id. A session ends once; ending it again
// returns an error so a sealed recording hash is never overwritten.
func (s *Store) EndSession(ctx context.Context, id string, e SessionEnd) error {
	return s.endSession(ctx, id, e, s.writeSession)
}

// EndSessionShared closes session id as EndSession does, but on SQLite its
// transaction may wait up to writeLinger for other writes to share it: the
// sessions a busy proxy ends then take one commit among several.
func (s *Store) EndSessionShared(ctx context.Context, id string, e SessionEnd) error {
	return s.endSession(ctx, id, e, s.writeSessionShared)
}

func (s *Store) endSession(ctx context.Context, id string, e SessionEnd,
	write func(context.Context, func(context.Context, *sql.Tx) error, *sessionWrite) error) error {
	if e.Ended.IsZero() {
		e.Ended = time.Now().UTC()
	}
	upd, err := s.prepared(ctx, endQuery)
	if err != nil {
		return fmt.Errorf("end session %s: %w", id, err)
	}
	args := []any{nanos(e.Ended), e.BytesIn, e.BytesOut, e.Messages, e.Outcome, e.RecordingSHA256, e.RecordingSize, id}
	// All but the last of AddDecisions' transactions' worth go first, in
	// theirs, so the row's transaction holds the writer no longer than one.
	rows, _, enc, err := decisionRows([][]Decision{e.Decisions})
	if err != nil {
		return fmt.Errorf("end session %s: %w", id, err)
	}
	defer doneWith(ctx, enc)
	for len(rows) > insertRows {
		if err := s.addDecisionRows(ctx, rows[:insertRows]); err != nil {
			return fmt.Errorf("end session %s: %w", id, err)
		}
		rows = rows[insertRows:]
	}
	insDecisions, err := s.decisionsInsert(ctx, len(rows))
	if err != nil {
		return fmt.Errorf("end session %s: %w", id, err)
	}
	part, err := s.prepared(ctx, "INSERT INTO recording_parts (session_id, part, data) VALUES (?, ?, ?)")
	if err != nil {
		return fmt.Errorf("end session %s: %w", id, err)
	}
	var parts [][]byte
	for rest := e.Recording; len(rest) > 0; {
		n := min(len(rest), recordingPart)
		parts, rest = append(parts, rest[:n]), rest[n:]
	}
	err = write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if err := insDecisions(ctx, tx, rows); err != nil {
			return err
		}
		ins := tx.StmtContext(ctx, part)
		for i, p := range parts {
			if _, err := ins.ExecContext(ctx, id, i, p); err != nil {
				return fmt.Errorf("store recording part %d: %w", i, err)
			}
		}
		res, err := tx.StmtContext(ctx, upd).ExecContext(ctx, args...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errNotOpen
		}
		return nil
	}, &sessionWrite{id: id, end: args, decisions: rows, parts: parts})
	if err != nil {
		return fmt.Errorf("end session %s: %w", id, err)
	}
	return nil
}

// endQuery ends an open session.
const endQuery = `UPDATE sessions SET ended_ns = ?, bytes_in = ?, bytes_out = ?,
	messages = ?, outcome = ?, recording_sha256 = ?, recording_size = ?
	WHERE id = ? AND ended_ns IS NULL`

// errNotOpen is ending a session that is not open.
var errNotOpen = errors.New("not open")

// sessionWrite is a session's row (row: createSession's columns) or its
// end (end: endQuery's arguments, the columns it sets and then the id,
// with its verdicts' rows and its recording's parts), as the writer runs
// many sessions' together (runSessions).
type sessionWrite struct {
	id        string
	row       []any
	end       []any
	decisions []decisionRow
	parts     [][]byte
}

// togetherSizes is how many INSERTs runSessions has for each table: the
// i-th inserts 1<<i rows, up to 16. A statement for each row count would
// keep as many compiled statements per table, some of them large, for the
// life of the store.
const togetherSizes = 5

// sessionStmts are runSessions' statements.
type sessionStmts struct {
	sessions, decisions, parts [togetherSizes]*sql.Stmt
	end                        *sql.Stmt
}

// sessionStatements prepares runSessions' statements the first time, and
// returns them. Only the writer calls it, between transactions (a
// preparation needs the writer's one connection).
func (s *Store) sessionStatements(ctx context.Context) (*sessionStmts, error) {
	if s.together != nil {
		return s.together, nil
	}
	st := &sessionStmts{}
	var err error
	for i := range st.sessions {
		k := 1 << i
		for _, t := range []struct {
			stmt        **sql.Stmt
			table, cols string
		}{
			{&st.sessions[i], "sessions", sessionColumns},
			{&st.decisions[i], "decision_batches", "session_id, first_idx, last_idx, actions, decisions"},
			{&st.parts[i], "recording_parts", "session_id, part, data"},
		} {
			if *t.stmt, err = s.insertStmt(ctx, t.table, t.cols, k); err != nil {
				return nil, err
			}
		}
	}
	if st.end, err = s.prepared(ctx, endQuery); err != nil {
		return nil, err
	}
	s.together = st
	return st, nil
}

// errApart sends a batch whose sessions runSessions cannot run together
// (one begun or ended twice) back to the writes one at a time, which say
// which failed.
var errApart = errors.New("the batch's sessions are run one at a time")

// runSessions runs the sessions' writes of run in a few statements: the
// new sessions' rows in one INSERT per 16, each with its end when the
// session ended within run (a short session is one row, never updated),
// an UPDATE for each end of a session begun before, then every end's
// verdicts and recording parts, 16 rows to an INSERT.
func runSessions(ctx context.Context, tx *sql.Tx, st *sessionStmts, run []*sessionWrite) error {
	if len(run) == 0 {
		return nil
	}
	var (
		rows      [][]any
		begun     = make(map[string]int, len(run))
		updates   []*sessionWrite
		decisions []decisionRow
		parts     []partRow
	)
	for _, w := range run {
		if w.row != nil {
			if _, ok := begun[w.id]; ok {
				return errApart
			}
			begun[w.id] = len(rows)
			rows = append(rows, sessionRow(w.row))
			continue
		}
		if i, ok := begun[w.id]; ok {
			if rows[i][12] != nil {
				return errApart
			}
			setEnd(rows[i], w.end)
		} else {
			updates = append(updates, w)
		}
		decisions = append(decisions, w.decisions...)
		for i, p := range w.parts {
			parts = append(parts, partRow{w.id, i, p})
		}
	}
	if err := insertTogether(ctx, tx, st.sessions, len(rows), func(args []any, i int) []any { return append(args, rows[i]...) }); err != nil {
		return err
	}
	for _, w := range updates {
		res, err := tx.StmtContext(ctx, st.end).ExecContext(ctx, w.end...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errNotOpen
		}
	}
	if err := insertTogether(ctx, tx, st.decisions, len(decisions), func(args []any, i int) []any {
		r := &decisions[i]
		return append(args, r.session, r.first, r.last, r.actions, r.data)
	}); err != nil {
		return err
	}
	return insertTogether(ctx, tx, st.parts, len(parts), func(args []any, i int) []any {
		return append(args, parts[i].session, parts[i].part, parts[i].data)
	})
}

// partRow is one row of recording_parts.
type partRow struct {
	session string
	part    int
	data    []byte
}

// sessionRow is the row of sessionColumns for createSession's columns (id
// to started_ns, then recording): open, as that INSERT leaves it.
func sessionRow(c []any) []any {
	return []any{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11],
		nil, int64(0), int64(0), int64(0), "", c[12], "", int64(0)}
}

// setEnd writes into row (sessionColumns) the columns an end's endQuery
// arguments set: ended_ns, bytes_in, bytes_out, messages, outcome,
// recording_sha256, recording_size.
func setEnd(row, end []any) {
	copy(row[12:17], end[:5])
	row[18], row[19] = end[5], end[6]
}

// insertTogether inserts n rows with ins (ins[i] inserts 1<<i rows), the
// largest statements first; row appends the i-th row's values to args.
func insertTogether(ctx context.Context, tx *sql.Tx, ins [togetherSizes]*sql.Stmt, n int, row func(args []any, i int) []any) error {
	var args []any
	for done := 0; done < n; {
		i := len(ins) - 1
		for 1<<i > n-done {
			i--
		}
		k := 1 << i
		args = args[:0]
		for j := done; j < done+k; j++ {
			args = row(args, j)
		}
		if _, err := tx.StmtContext(ctx, ins[i]).ExecContext(ctx, args...); err != nil {
			return err
		}
		done += k
	}
	return nil
}

const sessionColumns = `id, host, identity, pid, uid, exe, cgroup, target, protocol, client_addr, upstream_addr,
	started_ns, ended_ns, bytes_in, bytes_out, messages, outcome, recording, recording_sha256, recording_size`

func scanSession(row interface{ Scan(...any) error }) (Session, error) {
	var (
		ss       Session
		pid, uid int64
		started  int64
		ended    sql.NullInt64
	)
	err := row.Scan(&ss.ID, &ss.Host, &ss.Identity, &pid, &uid, &ss.Exe, &ss.Cgroup, &ss.Target, &ss.Protocol,
		&ss.ClientAddr, &ss.UpstreamAddr, &started, &ended, &ss.BytesIn, &ss.BytesOut, &ss.Messages,
		&ss.Outcome, &ss.Recording, &ss.RecordingSHA256, &ss.RecordingSize)
	ss.PID, ss.UID = int32(pid), uint32(uid)
	ss.Started = fromNanos(started)
	ss.Ended = fromNanos(ended.Int64)
	return ss, err
}

// Session returns session id, or ErrNotFound.
func (s *Store) Session(ctx context.Context, id string) (Session, error) {
	ss, err := scanSession(s.db.QueryRowContext(ctx, s.Rebind("SELECT "+sessionColumns+" FROM sessions WHERE id = ?"), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Session{}, fmt.Errorf("session %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Session{}, fmt.Errorf("read session %s: %w", id, err)
	}
	return ss, nil
}

// SessionFilter selects sessions. Zero fields match everything.
type SessionFilter struct {
	Host     string
	Identity string
	Target   string
	// Since and Until bound the start time: Since <= started < Until.
	Since, Until time.Time
	// Action keeps sessions with at least one decision of this action
	// ("deny", "mask", "approve", ...), enforced or not.
	Action string
	// OpenOnly keeps sessions that have not ended.
	OpenOnly bool
	// Limit caps the result (newest first); 0 means 100.
	Limit int
}

// ListSessions returns matching sessions, newest first.
func (s *Store) ListSessions(ctx context.Context, f SessionFilter) ([]Session, error) {
	var (
		where []string
		args  []any
	)
	add := func(cond string, arg any) { where = append(where, cond); args = append(args, arg) }
	if f.Host != "" {
		add("host = ?", f.Host)
	}
	if f.Identity != "" {
		add("identity = ?", f.Identity)
	}
	if f.Target != "" {
		add("target = ?", f.Target)
	}
	if !f.Since.IsZero() {
		add("started_ns >= ?", f.Since.UnixNano())
	}
	if !f.Until.IsZero() {
		add("started_ns < ?", f.Until.UnixNano())
	}
	if f.Action != "" {
		// A batch lists its decisions' actions ("allow,deny"); a session
		// has few batches, one a flush interval while busy.
		add("EXISTS (SELECT 1 FROM decision_batches d WHERE d.session_id = sessions.id AND ',' || d.actions || ',' LIKE ?)",
			"%,"+f.Action+",%")
	}
	if f.OpenOnly {
		where = append(where, "ended_ns IS NULL")
	}
	q := "SELECT " + sessionColumns + " FROM sessions"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q += " ORDER BY started_ns DESC, id DESC LIMIT ?"
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.Rebind(q), args...)
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	defer rows.Close()
	var out []Session
	for rows.Next() {
		ss, err := scanSession(rows)
		if err != nil {
			return nil, fmt.Errorf("list sessions: %w", err)
		}
		out = append(out, ss)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return out, nil
}
