// Package storetest runs one test body against every store backend: a
// SQLite file in a temporary directory and a throwaway PostgreSQL cluster
// (testenv.StartPostgres). Packages built on the store (audit, recording,
// approvals) use it so their tests, like the store's, pass on both.
package storetest

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// Open returns a new handle on the subtest's database. Every call opens
// another handle on the same database, the way a second daemon (fleet mode)
// or the CLI would; handles are closed when the subtest ends.
type Open func(t testing.TB) *store.Store

var dbCounter atomic.Int64

// Run runs fn as subtest "sqlite" and subtest "postgres", each with a fresh,
// empty database. The PostgreSQL cluster is started once per Run and shared
// by nothing else.
func Run(t *testing.T, fn func(t *testing.T, open Open)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "interlock.db")
		fn(t, func(t testing.TB) *store.Store {
			t.Helper()
			s, err := store.OpenSQLite(context.Background(), path)
			if err != nil {
				t.Fatalf("open sqlite store: %v", err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		})
	})
	t.Run("postgres", func(t *testing.T) {
		pg := testenv.StartPostgres(t)
		db := fmt.Sprintf("interlock_%d", dbCounter.Add(1))
		pg.Psql(t, "CREATE DATABASE "+db)
		dsn := pg.DSN(pg.Superuser, pg.Password, db)
		fn(t, func(t testing.TB) *store.Store {
			t.Helper()
			s, err := store.OpenPostgres(context.Background(), dsn)
			if err != nil {
				t.Fatalf("open postgres store: %v", err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		})
	})
}
