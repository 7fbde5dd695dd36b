package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestCLIDependencies fails when interlock links the daemon's heavy
// dependencies: it speaks the control API with agent/control's types and
// needs none of Vault, the store's SQLite or Prometheus (a 35 MB binary
// when it imported agent/daemon for those types). `interlock audit verify
// --store` runs interlockd for what needs the store.
func TestCLIDependencies(t *testing.T) {
	forbidden := []string{
		"github.com/hashicorp/vault",
		"modernc.org/sqlite",
		"github.com/prometheus",
		"github.com/interlock-dev/interlock/agent/daemon",
	}
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("interlock depends on %s", dep)
			}
		}
	}
}
