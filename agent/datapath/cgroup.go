package datapath

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// KernelFloor is the oldest kernel the data path runs on, as major, minor.
//
// 5.15 because, besides what 5.8 brings (ring buffer, cgroup bpf_link with
// pinning and LINK_UPDATE, getpeername hooks), sockops needs
// bpf_get_netns_cookie (5.15) to key records per network namespace, the
// proxy side needs SO_NETNS_COOKIE (5.14) and lookup-and-delete on hash maps
// (5.14); it is also the LTS every mainstream distribution ships or exceeds.
// Below that floor already: sk_lookup programs on a network namespace with a
// pinnable bpf_link and SOCKMAP lookups from them (5.9), which steer the
// proxy address to interlockd's own listener so that no process squatting
// the port can receive a redirected connection.
var KernelFloor = [2]int{5, 15}

// UnixConnectFloor is the first kernel with cgroup/connect_unix and
// cgroup/sendmsg_unix (6.7).
var UnixConnectFloor = [2]int{6, 7}

// SetsockoptFloor is the first kernel whose cgroup/setsockopt programs may
// call bpf_get_current_ancestor_cgroup_id (6.1), which the tagged check
// needs; older ones run without the program.
var SetsockoptFloor = [2]int{6, 1}

// CgroupMount finds the cgroup v2 mount point from /proc/self/mountinfo:
// /sys/fs/cgroup on a systemd host, /sys/fs/cgroup/unified on a hybrid one.
func CgroupMount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("open mountinfo: %w", err)
	}
	defer f.Close()
	return cgroup2Mount(f)
}

// cgroup2Mount returns the mount point of the first cgroup2 filesystem
// mounted from its root in a mountinfo listing.
func cgroup2Mount(r io.Reader) (string, error) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(s.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && i >= 5 {
				if fields[i+1] == "cgroup2" && fields[3] == "/" {
					return unescapeMountinfo(fields[4]), nil
				}
				break
			}
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errors.New("find cgroup2 mount: none in /proc/self/mountinfo (cgroup v2 is required)")
}

// unescapeMountinfo undoes the octal escapes (\040 for space...) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// CgroupID returns the id of the cgroup v2 directory at path: the value
// bpf_get_current_cgroup_id reports for tasks in it.
func CgroupID(path string) (uint64, error) {
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err == nil && len(h.Bytes()) == 8 {
		return binary.NativeEndian.Uint64(h.Bytes()), nil
	}
	// The cgroup id is the kernfs inode number on 64-bit hosts.
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// CheckKernel refuses kernels older than KernelFloor, saying why.
func CheckKernel() error {
	rel, err := kernelRelease()
	if err != nil {
		return err
	}
	if !atLeast(rel, KernelFloor) {
		return fmt.Errorf("check kernel: %d.%d is older than %d.%d: interlock needs cgroup bpf_link with pinning, "+
			"the BPF ring buffer, getpeername hooks and bpf_get_netns_cookie in sockops (5.15)",
			rel[0], rel[1], KernelFloor[0], KernelFloor[1])
	}
	return nil
}

// UnixConnectSupported reports whether the running kernel has
// cgroup/connect_unix (6.7 and later), which SetDenyUnix needs.
func UnixConnectSupported() bool {
	rel, err := kernelRelease()
	return err == nil && atLeast(rel, UnixConnectFloor)
}

func kernelRelease() ([2]int, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return [2]int{}, fmt.Errorf("uname: %w", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return [2]int{}, fmt.Errorf("parse kernel release %q: %w", release, err)
	}
	return [2]int{major, minor}, nil
}

func atLeast(rel, floor [2]int) bool {
	return rel[0] > floor[0] || rel[0] == floor[0] && rel[1] >= floor[1]
}

// EnterOwnCgroup moves the calling process (all its threads) into the cgroup
// mount/name, creating it, and returns its id: the Config.SelfCgroupID that
// exempts interlockd's own sockets. A daemon must not run in the cgroup2 root,
// since every task descends from it.
func EnterOwnCgroup(mount, name string) (uint64, error) {
	dir := filepath.Join(mount, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte("0"), 0); err != nil {
		return 0, fmt.Errorf("enter cgroup %s: %w", dir, err)
	}
	return CgroupID(dir)
}
