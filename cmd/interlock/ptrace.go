package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/interlock-dev/interlock/agent/control"
)

// warnPtraceExposure warns when the kernel cannot refuse ptrace across
// identities (no bpf LSM, Yama off) and uid owns processes outside the
// tagged cgroup rel: the agent, running as uid, could attach to one of them
// and make it connect for it, unseen. uids nil means the uids of the
// processes in the cgroup now. Best effort: it never fails the command it
// warns about.
func warnPtraceExposure(ctx context.Context, c *control.Client, rel string, uids []uint32, stderr io.Writer) {
	var st control.Status
	if err := c.Call(ctx, "/v1/status", nil, &st); err != nil || !ptraceGap(st.Gaps) {
		return
	}
	if uids == nil {
		uids = cgroupUIDs(filepath.Join(st.CgroupMount, rel))
	}
	for _, uid := range uids {
		// Root owns most of the host and has worse ways out than ptrace
		// without the bpf LSM; the start log and status say so already.
		if uid == 0 {
			continue
		}
		if n := processesOutside(rel, uid); n > 0 {
			fmt.Fprintf(stderr, "interlock: warning: uid %d owns %d process(es) outside %s, and this kernel "+
				"cannot refuse ptrace across identities (no bpf LSM, kernel.yama.ptrace_scope 0): the agent "+
				"could make one of them connect for it; run the agent as a user of its own (--user)\n", uid, n, rel)
		}
	}
}

func ptraceGap(gaps []string) bool {
	for _, g := range gaps {
		if strings.Contains(g, "ptrace") {
			return true
		}
	}
	return false
}

// processesOutside counts the processes of uid (real uid) whose cgroup is
// neither rel nor below it, as /proc shows them.
func processesOutside(rel string, uid uint32) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	n := 0
	for _, dir := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(dir))
		if u, err := control.RealUID(pid); err != nil || u != uid {
			continue
		}
		cg, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil {
			continue
		}
		path := ""
		for _, line := range strings.Split(string(cg), "\n") {
			if p, ok := strings.CutPrefix(line, "0::"); ok {
				path = p
			}
		}
		if path != "" && path != rel && !strings.HasPrefix(path, rel+"/") {
			n++
		}
	}
	return n
}

// cgroupUIDs lists the real uids of the processes in the cgroup dir.
func cgroupUIDs(dir string) []uint32 {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	seen := map[uint32]bool{}
	var uids []uint32
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		if u, err := control.RealUID(pid); err == nil && !seen[u] {
			seen[u] = true
			uids = append(uids, u)
		}
	}
	return uids
}
