package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// unitOf returns the systemd unit a cgroup path belongs to: the last
// ".service" or ".scope" component, or "" when there is none.
func unitOf(cgroup string) string {
	for p := cgroup; p != "/" && p != "." && p != ""; p = path.Dir(p) {
		b := path.Base(p)
		if strings.HasSuffix(b, ".service") || strings.HasSuffix(b, ".scope") {
			return b
		}
	}
	return ""
}

// exeHash returns the hex SHA-256 of the executable pid runs, "" if
// unreadable. It reads /proc/PID/exe, the file actually mapped, not the
// path, which may have been replaced since. Computed only for policies that
// match on it.
func exeHash(pid uint32) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ensureBPFFS makes sure the pin directory lies on a bpf filesystem. Hosts
// where systemd did not mount /sys/fs/bpf (containers, minimal systems) get
// it mounted there, where every BPF tool looks for it; any other location is
// the operator's to mount.
func ensureBPFFS(pinDir string) error {
	const standard = "/sys/fs/bpf"
	var st unix.Statfs_t
	if err := unix.Statfs(standard, &st); err != nil || st.Type == unix.BPF_FS_MAGIC ||
		!strings.HasPrefix(filepath.Clean(pinDir)+"/", standard+"/") {
		return nil
	}
	if err := unix.Mount("bpf", standard, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", standard, err)
	}
	return nil
}
