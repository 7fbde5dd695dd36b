package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// AuditRecord is one stored link of a host's audit chain. The store keeps
// the rows; package audit builds, hashes and verifies them.
type AuditRecord struct {
	Host     string
	Seq      uint64
	Time     time.Time
	Kind     string
	Payload  string // canonical JSON, stored as text so its bytes never change
	PrevHash string // hex
	Hash     string // hex
}

// AuditHead is the last record of a chain, or Seq 0 for an empty chain.
type AuditHead struct {
	Seq  uint64
	Hash string
}

// AppendAudit appends records to host's chain. It locks the chain (a
// transaction-scoped advisory lock per host on PostgreSQL, the database
// write lock on SQLite), reads the head, calls build with it and inserts
// what build returns, all in one transaction, so two writers (goroutines or
// daemons) never fork the chain. build must return n records that continue
// the chain: the first with Seq = head.Seq+1 and PrevHash = head.Hash; the
// (host, seq) primary key rejects a fork.
func (s *Store) AppendAudit(ctx context.Context, host string, n int, build func(AuditHead) ([]AuditRecord, error)) ([]AuditRecord, error) {
	// Prepared once, and before the transaction holds a connection (the
	// first preparation takes one of its own): parsing the INSERT per
	// record was a quarter of the cost of an append on SQLite.
	headQ, err := s.prepared(ctx, "SELECT seq, hash FROM audit_records WHERE host = ? ORDER BY seq DESC LIMIT 1")
	if err != nil {
		return nil, fmt.Errorf("read audit head %s: %w", host, err)
	}
	ins, err := s.rowsInsert(ctx, "audit_records", "host, seq, time_ns, kind, payload, prev_hash, hash", n)
	if err != nil {
		return nil, fmt.Errorf("prepare audit insert: %w", err)
	}
	var rs []AuditRecord
	err = s.write(ctx, func(ctx context.Context, tx *sql.Tx) error {
		if s.backend == PostgreSQL {
			if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('interlock-audit:' || $1, 0))", host); err != nil {
				return fmt.Errorf("lock audit chain %s: %w", host, err)
			}
		}
		var head AuditHead
		err := tx.StmtContext(ctx, headQ).QueryRowContext(ctx, host).Scan(&head.Seq, &head.Hash)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("read audit head %s: %w", host, err)
		}
		if rs, err = build(head); err != nil {
			return err
		}
		if len(rs) != n {
			return fmt.Errorf("%d audit records built, %d announced", len(rs), n)
		}
		err = ins(ctx, tx, func(args []any, i int) []any {
			r := rs[i]
			return append(args, r.Host, int64(r.Seq), r.Time.UnixNano(), r.Kind, r.Payload, r.PrevHash, r.Hash)
		})
		if err != nil {
			return fmt.Errorf("insert audit records %s/%d..%d: %w", host, rs[0].Seq, rs[n-1].Seq, err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("append audit records %s: %w", host, err)
	}
	return rs, nil
}

// AuditRecords calls fn for host's records with seq > after, in seq order,
// reading in pages so a long chain never sits in memory whole. fn returning
// an error stops the walk and returns that error.
func (s *Store) AuditRecords(ctx context.Context, host string, after uint64, fn func(AuditRecord) error) error {
	const page = 1000
	for {
		rows, err := s.db.QueryContext(ctx, s.Rebind(`SELECT host, seq, time_ns, kind, payload, prev_hash, hash
			FROM audit_records WHERE host = ? AND seq > ? ORDER BY seq LIMIT ?`), host, int64(after), page)
		if err != nil {
			return fmt.Errorf("read audit records %s: %w", host, err)
		}
		var batch []AuditRecord
		for rows.Next() {
			var (
				r      AuditRecord
				seq    int64
				timeNs int64
			)
			if err := rows.Scan(&r.Host, &seq, &timeNs, &r.Kind, &r.Payload, &r.PrevHash, &r.Hash); err != nil {
				rows.Close()
				return fmt.Errorf("read audit records %s: %w", host, err)
			}
			r.Seq, r.Time = uint64(seq), time.Unix(0, timeNs).UTC()
			batch = append(batch, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read audit records %s: %w", host, err)
		}
		for _, r := range batch {
			if err := fn(r); err != nil {
				return err
			}
		}
		if len(batch) < page {
			return nil
		}
		after = batch[len(batch)-1].Seq
	}
}

// AuditHosts returns every host that has an audit chain in the store.
func (s *Store) AuditHosts(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT DISTINCT host FROM audit_records ORDER BY host")
	if err != nil {
		return nil, fmt.Errorf("list audit hosts: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return nil, fmt.Errorf("list audit hosts: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// FindAudit calls fn for host's records of kind whose payload contains
// substr (an exact substring, no wildcards), in seq order. It finds, for
// example, the RecordingSealed record of one session without walking the
// chain; the caller verifies the chain separately.
func (s *Store) FindAudit(ctx context.Context, host, kind, substr string, fn func(AuditRecord) error) error {
	contains := "instr(payload, ?) > 0"
	if s.backend == PostgreSQL {
		contains = "strpos(payload, ?) > 0"
	}
	rows, err := s.db.QueryContext(ctx, s.Rebind(`SELECT host, seq, time_ns, kind, payload, prev_hash, hash
		FROM audit_records WHERE host = ? AND kind = ? AND `+contains+` ORDER BY seq`), host, kind, substr)
	if err != nil {
		return fmt.Errorf("find audit records: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			r           AuditRecord
			seq, timeNs int64
		)
		if err := rows.Scan(&r.Host, &seq, &timeNs, &r.Kind, &r.Payload, &r.PrevHash, &r.Hash); err != nil {
			return fmt.Errorf("find audit records: %w", err)
		}
		r.Seq, r.Time = uint64(seq), time.Unix(0, timeNs).UTC()
		if err := fn(r); err != nil {
			return err
		}
	}
	return rows.Err()
}
