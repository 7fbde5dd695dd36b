package daemon_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestStateOwnerOnly: interlockd started outside systemd under umask 022
// keeps its state (SQLite store with -wal and -shm, lease journal,
// recordings, identities) in 0700 directories and 0600 files, and repairs
// an install whose state an older version left readable.
func TestStateOwnerOnly(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	f := startPG(t)
	if out, err := f.psql(t, "SELECT count(*) FROM customers"); err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	check := func(when string) {
		t.Helper()
		seen := map[string]bool{}
		filepath.WalkDir(f.d.StateDir, func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				t.Fatal(err)
			}
			info, _ := e.Info()
			want := fs.FileMode(0o600)
			if e.IsDir() {
				want = 0o700
			}
			if info.Mode().Perm() != want {
				t.Errorf("%s: %s is %v, want %v", when, p, info.Mode().Perm(), want)
			}
			seen[filepath.Base(p)] = true
			return nil
		})
		for _, name := range []string{"interlock.db", "interlock.db-wal", "interlock.db-shm", "recordings"} {
			if !seen[name] {
				t.Errorf("%s: no %s in the state directory, so its mode was not checked", when, name)
			}
		}
	}
	check("fresh")

	// An older install: everything readable by everyone.
	f.d.Stop()
	filepath.WalkDir(f.d.StateDir, func(p string, e fs.DirEntry, err error) error {
		if e.IsDir() {
			return os.Chmod(p, 0o755)
		}
		return os.Chmod(p, 0o644)
	})
	f.d.Restart()
	if out, err := f.psql(t, "SELECT count(*) FROM customers"); err != nil {
		t.Fatalf("psql after restart: %v\n%s", err, out)
	}
	check("repaired at start")

	// Days are a unit operators use for --since.
	out, errOut, err := f.d.CLI("sessions", "--since", "1d")
	if err != nil || !strings.Contains(out, "ci-bot") {
		t.Fatalf("sessions --since 1d: %v\n%s%s", err, out, errOut)
	}
}
