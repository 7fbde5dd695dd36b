package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPureDependencies fails when decoders or policy depend, even
// indirectly, on the kernel, Vault or logging: they must stay testable on
// any machine and never log (DESIGN.md, "Parts").
func TestPureDependencies(t *testing.T) {
	forbidden := []string{
		"github.com/cilium/ebpf",
		"github.com/vishvananda/netlink",
		"github.com/hashicorp/vault",
		"github.com/rs/zerolog",
	}
	for _, pkgs := range []string{"../../decoders/...", "../../policy/..."} {
		out, err := exec.Command("go", "list", "-deps", "-test", pkgs).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkgs, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s depends on %s", pkgs, dep)
				}
			}
		}
	}
}
