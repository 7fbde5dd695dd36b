package store

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestSQLiteOwnerOnly: under the usual umask 022 SQLite creates its
// database, -wal and -shm files 0644; the store holds every identity's
// statements, so they must be 0600, and an existing 0644 database (an
// older install) is brought back to 0600 when opened.
func TestSQLiteOwnerOnly(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "interlock.db")
	check := func(when string) {
		t.Helper()
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("%s: %s is %v, want -rw-------", when, filepath.Base(p), st.Mode().Perm())
			}
		}
	}
	for _, when := range []string{"fresh", "reopened after an older install left 0644"} {
		s, err := OpenSQLite(t.Context(), path)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CreateSession(t.Context(), &Session{ID: "s-" + when, Host: "h", Identity: "ci-bot"}); err != nil {
			t.Fatal(err)
		}
		check(when)
		s.Close()
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			os.Chmod(p, 0o644)
		}
	}
}
