package daemon_test

import (
	"encoding/json"
	"strings"
	"syscall"
	"testing"
)

// TestLifecycleEventsInLogAndChain: what happens to the daemon rather than
// to a session (a policy reload, a denial in the kernel, a tag and an
// untag, an uninstall) is written once to the event log and once to the
// hash chain, which then verifies.
func TestLifecycleEventsInLogAndChain(t *testing.T) {
	f := start(t)
	if out, errOut, err := f.d.CLI("policy", "reload"); err != nil {
		t.Fatalf("policy reload: %v\n%s%s", err, out, errOut)
	}
	tg := newTarget(t, "tcp", "127.0.0.3:0")
	cg := f.d.Cgroup("lifecycle")
	if _, errOut, err := f.d.CLI("tag", cg, "--identity", "ci-bot"); err != nil {
		t.Fatalf("tag: %v %s", err, errOut)
	}
	if r := f.runIn(t, cg, "tcp", tg.addr()); r.Errno != int(syscall.EPERM) {
		t.Fatalf("connect to a denied prefix: %+v, want EPERM", r)
	}
	waitEvent(t, f.d, "kernel_deny", func(m map[string]any) bool { return m["dst"] == tg.addr() })
	if _, errOut, err := f.d.CLI("untag", cg); err != nil {
		t.Fatalf("untag: %v %s", err, errOut)
	}
	if out, errOut, err := f.d.CLI("uninstall"); err != nil {
		t.Fatalf("uninstall: %v\n%s%s", err, out, errOut)
	}
	// Uninstall stops interlockd; a new one reads the chain the old one
	// wrote.
	logs := f.d.Logs()
	f.d.Restart()
	out, errOut, err := f.d.CLI("audit", "verify")
	if err != nil || !strings.Contains(out, ": ok,") {
		t.Fatalf("audit verify: %v\n%s%s", err, out, errOut)
	}
	export, _, err := f.d.CLI("audit", "export")
	if err != nil {
		t.Fatal(err)
	}
	chained := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(export), "\n") {
		var r struct {
			Kind  string          `json:"kind"`
			Event json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		if r.Kind == "kernel.denied" && !strings.Contains(string(r.Event), tg.addr()) {
			continue
		}
		if r.Kind == "cgroup.tagged" || r.Kind == "cgroup.untagged" {
			if !strings.Contains(string(r.Event), "lifecycle") {
				continue
			}
		}
		chained[r.Kind]++
	}
	logged := map[string]int{}
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["event"] == nil {
			continue
		}
		if m["event"] == "kernel_deny" && m["dst"] != tg.addr() {
			continue
		}
		if (m["event"] == "tag" || m["event"] == "untag") && !strings.Contains(m["cgroup"].(string), "lifecycle") {
			continue
		}
		logged[m["event"].(string)]++
	}
	for _, k := range []struct{ kind, event string }{
		{"policy.reloaded", "policy_reload"}, {"kernel.denied", "kernel_deny"},
		{"cgroup.tagged", "tag"}, {"cgroup.untagged", "untag"}, {"datapath.uninstalled", "uninstall"},
	} {
		if chained[k.kind] != 1 || logged[k.event] != 1 {
			t.Errorf("%s: %d in the chain, %d %s lines in the log; want one each", k.kind, chained[k.kind], logged[k.event], k.event)
		}
	}
	if !strings.Contains(export, `"kind":"policy.reloaded"`) || !strings.Contains(export, `"sha256":"`) {
		t.Errorf("the reload's record lacks the policy's SHA-256:\n%s", export)
	}
}
