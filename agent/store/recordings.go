package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
)

// recordingPart is the size of one stored piece of a recording: large enough
// that a long session is few rows, small enough that no row strains either
// backend.
const recordingPart = 1 << 20

// PutRecording copies a sealed recording from r into the store, in parts,
// in one transaction. In fleet mode this is what lets another host replay
// or export the session.
func (s *Store) PutRecording(ctx context.Context, sessionID string, r io.Reader) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store recording %s: %w", sessionID, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, s.Rebind("DELETE FROM recording_parts WHERE session_id = ?"), sessionID); err != nil {
		return fmt.Errorf("store recording %s: %w", sessionID, err)
	}
	buf := make([]byte, recordingPart)
	for part := 0; ; part++ {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, err := tx.ExecContext(ctx, s.Rebind("INSERT INTO recording_parts (session_id, part, data) VALUES (?, ?, ?)"),
				sessionID, part, buf[:n]); err != nil {
				return fmt.Errorf("store recording %s part %d: %w", sessionID, part, err)
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("read recording %s: %w", sessionID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store recording %s: %w", sessionID, err)
	}
	return nil
}

// OpenRecording returns a reader over the recording stored for sessionID,
// fetching one part at a time, or ErrNotFound when none was stored.
func (s *Store) OpenRecording(ctx context.Context, sessionID string) (io.Reader, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, s.Rebind("SELECT COUNT(*) FROM recording_parts WHERE session_id = ?"), sessionID).Scan(&n); err != nil {
		return nil, fmt.Errorf("open stored recording %s: %w", sessionID, err)
	}
	if n == 0 {
		return nil, fmt.Errorf("stored recording %s: %w", sessionID, ErrNotFound)
	}
	return &partReader{ctx: ctx, s: s, id: sessionID, parts: n}, nil
}

type partReader struct {
	ctx   context.Context
	s     *Store
	id    string
	parts int
	next  int
	cur   bytes.Reader
}

func (p *partReader) Read(b []byte) (int, error) {
	for p.cur.Len() == 0 {
		if p.next == p.parts {
			return 0, io.EOF
		}
		var data []byte
		err := p.s.db.QueryRowContext(p.ctx, p.s.Rebind("SELECT data FROM recording_parts WHERE session_id = ? AND part = ?"),
			p.id, p.next).Scan(&data)
		if errors.Is(err, sql.ErrNoRows) {
			return 0, fmt.Errorf("stored recording %s: part %d missing", p.id, p.next)
		}
		if err != nil {
			return 0, fmt.Errorf("read stored recording %s part %d: %w", p.id, p.next, err)
		}
		p.cur.Reset(data)
		p.next++
	}
	return p.cur.Read(b)
}
