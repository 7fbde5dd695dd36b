// Package packaging holds what `make install` and `make deb` put on a host:
// the systemd unit, the default configuration and the Debian maintainer
// scripts. Its tests check them the way systemd and the daemon will.
package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/config"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestUnitVerifies runs `systemd-analyze verify` on interlock.service, with
// ExecStart pointed at an executable that exists on this machine (verify
// checks that the binary is there).
func TestUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testenv.Unavailable(t, "systemd-analyze not installed (apt-get install systemd)")
		return
	}
	unit, err := os.ReadFile("interlock.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "interlockd")
	if err := os.Symlink("/bin/true", fake); err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(unit), "/usr/bin/interlockd", fake)
	if text == string(unit) {
		t.Fatal("interlock.service does not run /usr/bin/interlockd")
	}
	path := filepath.Join(dir, "interlock.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestUnitContract checks the settings other parts rely on: readiness is
// reported by interlockd itself, and the directories match the config.
func TestUnitContract(t *testing.T) {
	unit, err := os.ReadFile("interlock.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify", "NotifyAccess=main", "StateDirectory=interlock",
		"RuntimeDirectory=interlock", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_BPF ",
		"ExecStart=/usr/bin/interlockd --config /etc/interlock/interlockd.yaml",
	} {
		if !strings.Contains(string(unit), "\n"+want) {
			t.Errorf("interlock.service lacks %q", want)
		}
	}
}

// TestDefaultConfigLoads loads the packaged interlockd.yaml with the
// daemon's own loader and checks it agrees with the unit's directories.
func TestDefaultConfigLoads(t *testing.T) {
	cfg, err := config.Load("interlockd.yaml")
	if err != nil {
		t.Fatalf("load packaged config: %v", err)
	}
	def := config.Default()
	if cfg.Socket != def.Socket || cfg.StateDir != def.StateDir || cfg.BPFFS != def.BPFFS || cfg.ListenPort != def.ListenPort {
		t.Errorf("packaged config %+v drifted from the embedded default %+v", cfg, def)
	}
	if cfg.Socket != "/run/interlock/interlock.sock" || cfg.StateDir != "/var/lib/interlock" {
		t.Errorf("socket %s / state dir %s are not under the unit's RuntimeDirectory/StateDirectory", cfg.Socket, cfg.StateDir)
	}
	if cfg.Policy != "/etc/interlock/policy.yaml" {
		t.Errorf("policy %q: the package installs /etc/interlock/policy.yaml", cfg.Policy)
	}
}

// TestMaintainerScripts checks the Debian scripts are valid sh.
func TestMaintainerScripts(t *testing.T) {
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		path := filepath.Join("debian", s)
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", path)
		}
		if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", path, err, out)
		}
	}
}

// TestPostinstSSHSetup runs postinst with systemctl and interlock stood in
// for: a first install only says how to trust Interlock's SSH host CA; with
// INTERLOCK_SSH_SETUP=yes it runs interlock ssh setup, on an upgrade too,
// and a setup that fails (interlockd not running) fails nothing.
func TestPostinstSSHSetup(t *testing.T) {
	bin := t.TempDir()
	log := filepath.Join(bin, "log")
	for name, status := range map[string]string{"systemctl": "0", "interlock": "${INTERLOCK_FAKE_STATUS:-0}"} {
		script := "#!/bin/sh\necho " + name + " \"$@\" >> " + log + "\nexit " + status + "\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, setup, status string
		args                []string
		ran                 bool
		stdout, stderr      string
	}{
		{name: "first install", args: []string{"configure"}, stdout: "run: sudo interlock ssh setup"},
		{name: "upgrade", args: []string{"configure", "1.0"}},
		{name: "asked", setup: "yes", args: []string{"configure"}, ran: true},
		{name: "asked on upgrade", setup: "yes", args: []string{"configure", "1.0"}, ran: true},
		{name: "asked, daemon down", setup: "yes", status: "1", args: []string{"configure"}, ran: true, stderr: "interlock ssh setup failed"},
		{name: "other value", setup: "1", args: []string{"configure", "1.0"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			os.Remove(log)
			cmd := exec.Command("sh", append([]string{"debian/postinst"}, c.args...)...)
			cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "INTERLOCK_SSH_SETUP=" + c.setup, "INTERLOCK_FAKE_STATUS=" + c.status}
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("postinst %v: %v\n%s", c.args, err, stderr.String())
			}
			calls, _ := os.ReadFile(log)
			if ran := strings.Contains(string(calls), "interlock ssh setup\n"); ran != c.ran {
				t.Errorf("ran interlock ssh setup: %v, want %v\n%s", ran, c.ran, calls)
			}
			if !strings.Contains(stdout.String(), c.stdout) || (c.stdout == "" && strings.Contains(stdout.String(), "ssh setup")) {
				t.Errorf("stdout %q, want %q", stdout.String(), c.stdout)
			}
			if !strings.Contains(stderr.String(), c.stderr) {
				t.Errorf("stderr %q, want %q", stderr.String(), c.stderr)
			}
		})
	}
}
