// Package store keeps Interlock's durable state: sessions and their
// decisions, approvals and their votes, and the raw rows of the audit chain.
//
// Two backends sit behind one API. SQLite (modernc.org/sqlite, pure Go, WAL
// mode) is the embedded default and lives in the daemon's state directory.
// PostgreSQL, given by a DSN, is the fleet store that several hosts share: one
// approval queue and one audit chain per host. The schema is the same on
// both; forward-only migrations are embedded per dialect under migrations/
// and recorded in schema_migrations, so every daemon that opens a store brings
// it to the version it knows.
//
// A *Store is safe for concurrent use by many goroutines, and on PostgreSQL
// by many daemons at once: operations that must be exact across processes
// (approval votes, audit appends, migrations) run in transactions that take
// row or advisory locks. Times are stored as Unix nanoseconds and returned in
// UTC.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"embed"
	"encoding/base32"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"modernc.org/sqlite"               // also registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"
)

// Backend names a storage engine.
type Backend string

const (
	// SQLite is the embedded single-host store.
	SQLite Backend = "sqlite"
	// PostgreSQL is the shared fleet store.
	PostgreSQL Backend = "postgres"
)

// ErrNotFound is returned when a session or approval does not exist.
var ErrNotFound = errors.New("not found")

//go:embed migrations
var migrationFS embed.FS

// Store is an open SQLite or PostgreSQL store. It is safe for concurrent use.
type Store struct {
	// db serves reads; w every write and every transaction. On SQLite w is
	// one connection: each connection keeps its own page cache and drops
	// all of it when it sees that another connection wrote, so writes
	// spread over a pool reread the pages they change from the WAL every
	// time (a fifth of a short session's CPU). Writers queue for it, as
	// they queued for SQLite's write lock. On PostgreSQL w is db.
	db, w   *sql.DB
	backend Backend
	// writer, on SQLite, runs the writes of sessions, decisions and the
	// audit chain in shared transactions.
	writer *writer
	// stmts holds the statements every connection runs, prepared once
	// (query, or insertKey, -> *sql.Stmt): SQLite parses and plans an
	// INSERT in about as long as it takes to run it.
	stmts sync.Map
	// together are the writer's statements for many sessions' writes at
	// once (sessionStatements); only the writer's goroutine uses it.
	together *sessionStmts
}

// OpenSQLite opens (creating if needed) the SQLite store at path, usually
// STATEDIR/interlock.db, and migrates it. The file is opened in WAL mode with
// a busy timeout, and every transaction begins IMMEDIATE, so concurrent
// writers queue on the database lock instead of failing with SQLITE_BUSY
// half-way through a read-modify-write.
func OpenSQLite(ctx context.Context, path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	if err := ownerOnly(path); err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "temp_store(MEMORY)")
	// Each connection's page cache, 256 KiB instead of SQLite's 2 MB:
	// the pages are in the kernel's page cache too, where a miss reads
	// them from, and the daemon holds five connections. The writer's
	// work touches the right edge of a few B-trees. The store's
	// benchmarks did not move; the daemon's memory outside the Go heap
	// after a benchmark's load fell from 13.6 to 11.2 MB.
	q.Add("_pragma", "cache_size(-256)")
	q.Set("_txlock", "immediate")
	w, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	// A small pool of readers keeps the web page and the CLI from queuing
	// behind the writer; query_only makes a write sent to them fail
	// instead of taking the database lock from the writer.
	q.Add("_pragma", "query_only(1)")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	db.SetMaxOpenConns(4)
	return open(ctx, db, w, SQLite)
}

// ownerOnly creates the database file 0600 before SQLite does (SQLite
// would create it 0644 under the usual umask, and gives its -wal and -shm
// files the database file's mode), and brings an existing database and
// its -wal and -shm files back to 0600: the store holds every identity's
// sessions and statements.
func ownerOnly(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("create sqlite %s: %w", path, err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("chmod %s: %w", p, err)
		}
	}
	return nil
}

// OpenPostgres connects to the PostgreSQL store named by dsn (a libpq URL or
// key=value string) and migrates it. Several daemons may open the same
// database at once; migrations take an advisory lock.
func OpenPostgres(ctx context.Context, dsn string) (*Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db.SetMaxOpenConns(8)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return open(ctx, db, db, PostgreSQL)
}

// Open opens the store named by a daemon's configuration: a DSN starting with
// postgres:// or postgresql:// (or containing "host=") selects PostgreSQL;
// anything else is a SQLite file path.
func Open(ctx context.Context, dsnOrPath string) (*Store, error) {
	if strings.HasPrefix(dsnOrPath, "postgres://") || strings.HasPrefix(dsnOrPath, "postgresql://") ||
		strings.Contains(dsnOrPath, "host=") {
		return OpenPostgres(ctx, dsnOrPath)
	}
	return OpenSQLite(ctx, dsnOrPath)
}

func open(ctx context.Context, db, w *sql.DB, b Backend) (*Store, error) {
	s := &Store{db: db, w: w, backend: b}
	// The writer first: its first connection switches a new file to WAL.
	if err := ping(ctx, w); err != nil {
		s.close()
		return nil, fmt.Errorf("connect %s store: %w", b, err)
	}
	if err := s.migrate(ctx); err != nil {
		s.close()
		return nil, err
	}
	if b == SQLite {
		if err := s.startWriter(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// ping opens the first connection. On SQLite that runs the connection
// pragmas, and switching a new file to WAL fails with SQLITE_BUSY, without
// waiting for the busy timeout, while another process opens the same file
// (two daemons, or the CLI, starting at once): that is retried for as long
// as the busy timeout would have waited.
func ping(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(10 * time.Second)
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		err := db.PingContext(ctx)
		var se *sqlite.Error
		if err == nil || !errors.As(err, &se) || se.Code() != sqlite3.SQLITE_BUSY || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
	}
}

// Backend reports which engine the store runs on.
func (s *Store) Backend() Backend { return s.backend }

// Close waits for the write in progress, then releases the store's
// statements and connections.
func (s *Store) Close() error {
	s.stopWriter()
	s.stmts.Range(func(_, st any) bool {
		st.(*sql.Stmt).Close()
		return true
	})
	return s.close()
}

func (s *Store) close() error {
	err := s.w.Close()
	if s.db != s.w {
		err = errors.Join(err, s.db.Close())
	}
	return err
}

// prepared returns query, rebound for the backend, as a statement of the
// writer prepared once for the life of the store; database/sql prepares it
// again on each pooled connection the first time it runs there.
func (s *Store) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	return s.prepare(ctx, query, query)
}

// prepare prepares query and keeps it in stmts under key, or returns the
// statement another caller kept there first.
func (s *Store) prepare(ctx context.Context, key any, query string) (*sql.Stmt, error) {
	st, err := s.w.PrepareContext(ctx, s.Rebind(query))
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.stmts.LoadOrStore(key, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// insertRows is how many rows one INSERT of rowsInsert carries: a
// statement per row cost more than the row itself on a busy proxy
// (decisions have 10 columns, audit records 7: far below SQLite's and
// PostgreSQL's limits on parameters).
const insertRows = 64

// rowsInsert returns what inserts n rows of cols into table in a
// transaction, insertRows to a statement. Its statements (one for each row
// count: insertRows and the remainder) are prepared here, before the
// transaction holds the writer: the first preparation takes a connection
// of its own. The function it returns asks row to append the values of the
// i-th row to args.
func (s *Store) rowsInsert(ctx context.Context, table, cols string, n int) (func(ctx context.Context, tx *sql.Tx, row func(args []any, i int) []any) error, error) {
	if n == 0 {
		return func(context.Context, *sql.Tx, func([]any, int) []any) error { return nil }, nil
	}
	full, err := s.insertStmt(ctx, table, cols, min(n, insertRows))
	if err != nil {
		return nil, err
	}
	rest := full
	if n > insertRows && n%insertRows != 0 {
		if rest, err = s.insertStmt(ctx, table, cols, n%insertRows); err != nil {
			return nil, err
		}
	}
	width := strings.Count(cols, ",") + 1
	return func(ctx context.Context, tx *sql.Tx, row func(args []any, i int) []any) error {
		args := make([]any, 0, width*min(n, insertRows))
		for done := 0; done < n; {
			k, st := min(n-done, insertRows), full
			if k < min(n, insertRows) {
				st = rest
			}
			args = args[:0]
			for i := done; i < done+k; i++ {
				args = row(args, i)
			}
			if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...); err != nil {
				return err
			}
			done += k
		}
		return nil
	}, nil
}

// insertKey is the key in stmts of rowsInsert's statement for rows rows of
// cols into table.
type insertKey struct {
	table, cols string
	rows        int
}

// insertStmt returns the statement that inserts k (at least one) rows of
// cols into table. Its text is built only the first time: building it (up
// to insertRows groups of placeholders) and finding the statement by it
// took four allocations and some 0.4 KB at each session's end and each
// batch of audit records.
func (s *Store) insertStmt(ctx context.Context, table, cols string, k int) (*sql.Stmt, error) {
	key := insertKey{table, cols, k}
	if st, ok := s.stmts.Load(key); ok {
		return st.(*sql.Stmt), nil
	}
	values := "(" + strings.TrimSuffix(strings.Repeat("?, ", strings.Count(cols, ",")+1), ", ") + ")"
	return s.prepare(ctx, key, "INSERT INTO "+table+" ("+cols+") VALUES "+strings.TrimSuffix(strings.Repeat(values+", ", k), ", "))
}

// DB exposes the writer's handle for tests and tools that need raw SQL
// (for example, proving that a tampered audit row is detected). Daemon code
// uses the typed methods.
func (s *Store) DB() *sql.DB { return s.w }

// Rebind rewrites '?' placeholders to the backend's syntax ($1, $2, ... on
// PostgreSQL), so each statement is written once for both backends. Queries
// in this package never contain a literal '?'.
func (s *Store) Rebind(query string) string {
	if s.backend != PostgreSQL {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// Migration is one forward schema step.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations for backend b in order.
func Migrations(b Backend) ([]Migration, error) {
	dir := "migrations/" + string(b)
	ents, err := fs.ReadDir(migrationFS, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []Migration
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("parse migration name %q: want NNNN_name.sql", name)
		}
		body, err := fs.ReadFile(migrationFS, dir+"/"+name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		ms = append(ms, Migration{Version: v, Name: strings.TrimSuffix(name, ".sql"), SQL: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// migrationLockKey is the PostgreSQL advisory lock that serializes schema
// changes between daemons starting at the same time.
const migrationLockKey = 0x696e746c6b01 // "intlk" + 1

func (s *Store) migrate(ctx context.Context) error {
	ms, err := Migrations(s.backend)
	if err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	if s.backend == PostgreSQL {
		if _, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLockKey)); err != nil {
			return fmt.Errorf("lock migrations: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ns BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	applied := map[int]bool{}
	rows, err := tx.QueryContext(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return fmt.Errorf("read schema_migrations: %w", err)
		}
		applied[v] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read schema_migrations: %w", err)
	}
	for _, m := range ms {
		if applied[m.Version] {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
			return fmt.Errorf("apply migration %s: %w", m.Name, err)
		}
		if _, err := tx.ExecContext(ctx, s.Rebind("INSERT INTO schema_migrations (version, name, applied_ns) VALUES (?, ?, ?)"),
			m.Version, m.Name, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("record migration %s: %w", m.Name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit migrations: %w", err)
	}
	return nil
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := s.db.QueryRowContext(ctx, "SELECT MAX(version) FROM schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return int(v.Int64), nil
}

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewID returns a 16-character identifier that sorts by creation time (the
// first 48 bits are Unix milliseconds) and carries 32 random bits, so IDs made
// on different hosts do not collide in practice. Sessions and approvals use
// it; it is short enough to type in `interlock approve ID`.
func NewID() string {
	var b [10]byte
	ms := uint64(time.Now().UnixMilli())
	for i := 5; i >= 0; i-- {
		b[i] = byte(ms)
		ms >>= 8
	}
	rand.Read(b[6:]) // never fails: crypto/rand panics instead
	return idEncoding.EncodeToString(b[:])
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func nullNanos(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixNano(), Valid: true}
}
