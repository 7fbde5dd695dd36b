package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestDropInVerifies puts a sample agent unit, the packaged interlockd unit
// and the drop-in `interlock tag --unit` writes side by side, and has
// systemd-analyze verify load them together.
func TestDropInVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Unavailable(t, "systemd-analyze not installed (apt-get install systemd)")
		return
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "bin")
	if err := os.Mkdir(fake, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"interlock", "interlockd", "agent"} {
		if err := os.Symlink("/bin/true", filepath.Join(fake, name)); err != nil {
			t.Fatal(err)
		}
	}
	daemonUnit, err := os.ReadFile("../../packaging/interlock.service")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("interlock.service", strings.ReplaceAll(string(daemonUnit), "/usr/bin/interlockd", filepath.Join(fake, "interlockd")))
	write("agent.service", "[Unit]\nDescription=sample agent\n\n[Service]\nUser=runner\nExecStart="+filepath.Join(fake, "agent")+"\n")
	changed, err := writeDropIn(dir, "agent.service", dropIn("agent.service", "ci-bot", filepath.Join(fake, "interlock"), caVars("/run/interlock/ca.crt", "/run/interlock/ca-bundle.crt")))
	if err != nil || !changed {
		t.Fatalf("writeDropIn = %v, %v; want true, nil", changed, err)
	}
	out, err := exec.Command(analyze, "verify", filepath.Join(dir, "agent.service")).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The drop-in must really be loaded: pointed at a missing binary, the
	// same verify fails on the drop-in's ExecStartPre.
	missing := filepath.Join(dir, "missing", "interlock")
	if _, err := writeDropIn(dir, "agent.service", dropIn("agent.service", "ci-bot", missing, nil)); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(analyze, "verify", filepath.Join(dir, "agent.service")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), missing) {
		t.Fatalf("verify with a drop-in naming %s passed; the drop-in was not loaded: %v\n%s", missing, err, out)
	}
}

func TestDropIn(t *testing.T) {
	got := dropIn("runner.service", "ci-bot", "/usr/bin/interlock", caVars("/run/interlock/ca.crt", "/run/interlock/ca-bundle.crt"))
	for _, want := range []string{
		"\n[Unit]\nRequires=interlock.service\nAfter=interlock.service\n",
		"\n[Service]\nExecStartPre=+/usr/bin/interlock tag --unit %n --identity ci-bot\nNoNewPrivileges=yes\n",
		"\nEnvironment=\"SSL_CERT_FILE=/run/interlock/ca-bundle.crt\"\n",
		"\nEnvironment=\"NODE_EXTRA_CA_CERTS=/run/interlock/ca.crt\"\n",
		"\nEnvironment=\"GIT_SSL_CAINFO=/run/interlock/ca-bundle.crt\"\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("drop-in lacks %q:\n%s", want, got)
		}
	}
	slice := dropIn("agents.slice", "ci-bot", "/usr/bin/interlock", nil)
	if strings.Contains(slice, "ExecStartPre") || !strings.Contains(slice, "After=interlock.service") {
		t.Errorf("slice drop-in:\n%s", slice)
	}
}

func TestStaleDropIns(t *testing.T) {
	dir := t.TempDir()
	if _, err := writeDropIn(dir, "new.service", dropIn("new.service", "ci-bot", "/usr/bin/interlock", nil)); err != nil {
		t.Fatal(err)
	}
	// As interlock wrote it before NoNewPrivileges=yes.
	old := strings.Replace(dropIn("old.service", "ci-bot", "/usr/bin/interlock", nil), "NoNewPrivileges=yes\n", "", 1)
	if _, err := writeDropIn(dir, "old.service", old); err != nil {
		t.Fatal(err)
	}
	if _, err := writeDropIn(dir, "agents.slice", dropIn("agents.slice", "ci-bot", "/usr/bin/interlock", nil)); err != nil {
		t.Fatal(err)
	}
	got := staleDropIns(dir)
	if len(got) != 1 || !strings.Contains(got[0], "old.service.d/50-interlock.conf") ||
		!strings.Contains(got[0], "`interlock tag --unit old.service --identity ci-bot`") {
		t.Errorf("stale drop-ins = %q, want old.service's alone", got)
	}
}

func TestWriteDropInIdempotent(t *testing.T) {
	dir := t.TempDir()
	text := dropIn("runner.service", "ci-bot", "/usr/bin/interlock", nil)
	if changed, err := writeDropIn(dir, "runner.service", text); err != nil || !changed {
		t.Fatalf("first write = %v, %v", changed, err)
	}
	// Unchanged content must not trigger a daemon-reload from inside the
	// unit's own ExecStartPre.
	if changed, err := writeDropIn(dir, "runner.service", text); err != nil || changed {
		t.Fatalf("second write = %v, %v; want false", changed, err)
	}
	if changed, err := writeDropIn(dir, "runner.service", dropIn("runner.service", "other", "/usr/bin/interlock", nil)); err != nil || !changed {
		t.Fatalf("new identity = %v, %v; want true", changed, err)
	}
}

// TestTagUnitRejects checks that nothing reaches a unit file or systemctl
// from a name or identity that could smuggle unit-file syntax.
func TestTagUnitRejects(t *testing.T) {
	systemdUnitDir = t.TempDir()
	for _, tc := range []struct{ unit, identity string }{
		{"runner", "ci-bot"},
		{"runner.timer", "ci-bot"},
		{"run ner.service", "ci-bot"},
		{"runner.service", "ci bot"},
		{"runner.service", "x\nExecStartPre=/bin/sh"},
		{"runner.service", ""},
	} {
		if err := runTagUnit(t.Context(), nil, tc.unit, tc.identity, os.Stdout, os.Stderr); err == nil {
			t.Errorf("runTagUnit(%q, %q) accepted", tc.unit, tc.identity)
		}
	}
	if entries, _ := os.ReadDir(systemdUnitDir); len(entries) != 0 {
		t.Errorf("rejected calls wrote %v", entries)
	}
}
