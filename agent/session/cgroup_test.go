package session

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestCgroupOfNamesTheConnectsCgroup: a cgroup ID is named by its own path,
// read once and then remembered, also for a process that has moved on.
func TestCgroupOfNamesTheConnectsCgroup(t *testing.T) {
	testenv.Privileged(t)
	mount, err := datapath.CgroupMount()
	if err != nil {
		testenv.Unavailable(t, "no cgroup2 mount: %v", err)
	}
	rel := fmt.Sprintf("/interlock-session-test-%d", os.Getpid())
	root := filepath.Join(mount, rel)
	mkdir := func(name string) uint64 {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(root, name), 0o755); err != nil {
			t.Fatal(err)
		}
		id, err := datapath.CgroupID(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	a, c := mkdir("a"), mkdir("c")
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(sleeper.Process.Pid)
	t.Cleanup(func() {
		sleeper.Process.Kill()
		sleeper.Wait()
		for _, d := range []string{"a", "c", ""} {
			os.Remove(filepath.Join(root, d))
		}
	})
	move := func(name string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, name, "cgroup.procs"), []byte(strconv.Itoa(int(pid))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	move("a")
	for i := 0; i < 2; i++ { // read, then remembered
		if got := cgroupOf(a, pid); got != rel+"/a" {
			t.Fatalf("cgroupOf(a) = %q, want %q", got, rel+"/a")
		}
	}
	move("c")
	if got := cgroupOf(a, pid); got != rel+"/a" {
		t.Fatalf("after a move cgroupOf(a) = %q, want the cgroup of the connect %q", got, rel+"/a")
	}
	if got := cgroupOf(c, pid); got != rel+"/c" {
		t.Fatalf("cgroupOf(c) = %q, want %q", got, rel+"/c")
	}
}
