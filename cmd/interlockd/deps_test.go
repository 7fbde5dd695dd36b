package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPureDependencies fails when decoders or policy depend, even
// indirectly, on the kernel, Vault, logging or the daemon (README.md,
// "Parts"; decoders/postgres/doc.go states the same for its package):
// they must stay testable on any machine, never log, and know nothing of
// how interlockd wires them. The daemon's packages under agent/ import
// decoders and policy, never the other way round. Their tests may use the
// daemon's stdlib-only test helpers (agent/testenv, agent/rawsock), so the
// agent/ fence applies to what the packages themselves import; the external
// fence applies to their tests too.
func TestPureDependencies(t *testing.T) {
	external := []string{
		"github.com/cilium/ebpf",
		"github.com/vishvananda/netlink",
		"github.com/hashicorp/vault",
		"github.com/rs/zerolog",
	}
	for _, c := range []struct {
		args      []string
		forbidden []string
	}{
		{[]string{"-test"}, external},
		{nil, []string{"github.com/interlock-dev/interlock/agent"}},
	} {
		for _, pkgs := range []string{"../../decoders/...", "../../policy/..."} {
			args := append(append([]string{"list", "-deps"}, c.args...), pkgs)
			out, err := exec.Command("go", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, f := range c.forbidden {
					if dep == f || strings.HasPrefix(dep, f+"/") {
						t.Errorf("%s depends on %s", pkgs, dep)
					}
				}
			}
		}
	}
}

// TestDaemonLinksNoPacketLibrary fails when interlockd links gopacket:
// its layers package holds 5 MB of pointer tables that the garbage
// collector scanned at every cycle, 5 % of the daemon's CPU on a proxied
// PostgreSQL statement. Packet captures are written by the interlock
// command (package agent/recording/pcap).
func TestDaemonLinksNoPacketLibrary(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/google/gopacket") {
			t.Errorf("interlockd depends on %s", dep)
		}
	}
}
