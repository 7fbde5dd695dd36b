package daemon

import (
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

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
