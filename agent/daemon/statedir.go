package daemon

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// secureStateDir makes the state directory and everything in it root's
// alone: directories 0700, regular files 0600. The store, the lease journal
// and the recordings hold every identity's sessions and statements, and an
// interlockd started outside systemd (umask 022) used to leave them
// readable by any local user, tagged agents included; this also repairs
// such an install. It returns how many modes it changed.
func secureStateDir(dir string) (int, error) {
	changed := 0
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		switch {
		case e.IsDir():
			want = 0o700
		case !e.Type().IsRegular():
			return nil // a symlink's mode means nothing; sockets are not state
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm() == want {
			return nil
		}
		if err := os.Chmod(p, want); err != nil {
			return err
		}
		changed++
		return nil
	})
	if err != nil {
		return changed, fmt.Errorf("restrict state dir: %w", err)
	}
	return changed, nil
}
