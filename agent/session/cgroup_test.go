package session

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/policy"
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
		if got, err := cgroupOf(a, pid); got != rel+"/a" || err != nil {
			t.Fatalf("cgroupOf(a) = %q, %v, want %q", got, err, rel+"/a")
		}
	}
	move("c")
	if got, err := cgroupOf(a, pid); got != rel+"/a" || err != nil {
		t.Fatalf("after a move cgroupOf(a) = %q, %v, want the cgroup of the connect %q", got, err, rel+"/a")
	}
	if got, err := cgroupOf(c, pid); got != rel+"/c" || err != nil {
		t.Fatalf("cgroupOf(c) = %q, %v, want %q", got, err, rel+"/c")
	}
}

// TestIdentityOfRefusesWhatItCannotRead: a caller whose cgroup cannot be
// read is an error, not a caller without one (identities select on its
// unit); a caller that is gone keeps the kernel's fields alone.
func TestIdentityOfRefusesWhatItCannotRead(t *testing.T) {
	testenv.Privileged(t)
	mount, err := datapath.CgroupMount()
	if err != nil {
		testenv.Unavailable(t, "no cgroup2 mount: %v", err)
	}
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(sleeper.Process.Pid)
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	own, err := control.CgroupOf(int(pid))
	if err != nil {
		t.Fatal(err)
	}
	id, err := datapath.CgroupID(filepath.Join(mount, own))
	if err != nil {
		t.Fatal(err)
	}
	// An ID no read has remembered, so that /proc is read.
	o := datapath.Origin{PID: pid, CgroupID: id ^ 1<<62}
	// Root is refused reading a write-only sysctl (EACCES); out of
	// descriptors the read fails the same way.
	cg := fmt.Sprintf("/proc/%d/cgroup", pid)
	if out, err := exec.Command("mount", "--bind", "/proc/sys/net/ipv4/route/flush", cg).CombinedOutput(); err != nil {
		t.Fatalf("mount over %s: %v\n%s", cg, err, out)
	}
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", cg).Run()
		}
	}()
	if got, err := IdentityOf(o, "ci-bot"); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("IdentityOf with its cgroup unreadable = %+v, %v; want the read's error", got, err)
	}
	if err := exec.Command("umount", cg).Run(); err != nil {
		t.Fatal(err)
	}
	mounted = false
	sleeper.Process.Kill()
	sleeper.Wait()
	got, err := IdentityOf(o, "ci-bot")
	if err != nil || !got.Gone || got.Cgroup != "" || got.Exe != "" || got.PID != pid {
		t.Fatalf("IdentityOf of a process gone = %+v, %v; want the kernel's fields alone, Gone", got, err)
	}
	// Gone, it can be placed by the kernel's fields only.
	for _, c := range []struct {
		identities string
		placed     bool
	}{
		{"  - name: ci-bot\n  - {name: ci-bot-psql, tag: ci-bot, comm: [psql]}\n", true},
		{"  - name: ci-bot\n  - {name: ci-bot-risky, tag: ci-bot, unit: [risky.service]}\n", false},
		{"  - name: ci-bot\n  - {name: psql-anywhere, exe: [/usr/bin/psql]}\n", false},
		{"  - name: ci-bot\n  - {name: other-risky, tag: other, unit: [risky.service]}\n", true},
	} {
		pol, err := policy.Load(context.Background(), policy.Source{Name: "gone.yaml", Text: []byte("version: 1\nidentities:\n" + c.identities)}, policy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := SubjectOf(got, pol); (err == nil) != c.placed {
			t.Errorf("SubjectOf a caller gone under\n%s: %v, want placed %v", c.identities, err, c.placed)
		}
	}
}
