package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/config"
)

func TestVersionFlag(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--version"}, &out, &errOut); code != 0 {
		t.Fatalf("--version: exit %d, stderr %s", code, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "interlockd dev (commit ") {
		t.Fatalf("--version printed %q", out.String())
	}
}

// TestStrayArgument: `interlockd version` used to start the daemon on its
// defaults. The paths given would make a start fail differently (no such
// cgroup), so the message proves nothing was started.
func TestStrayArgument(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{{"version"}, {"--policy", "p.yaml", "start"}} {
		var out, errOut bytes.Buffer
		args = append([]string{"--cgroup-root", filepath.Join(dir, "none"), "--bpffs", filepath.Join(dir, "bpffs"),
			"--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "s.sock")}, args...)
		if code := run(args, &out, &errOut); code != 2 {
			t.Fatalf("%v: exit %d, want 2; stderr %s", args, code, errOut.String())
		}
		if !strings.Contains(errOut.String(), "unexpected argument") {
			t.Fatalf("%v: stderr %q", args, errOut.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
			t.Fatalf("%v: the daemon got as far as creating its state directory", args)
		}
	}
}

func TestConsoleLogFormat(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		var buf bytes.Buffer
		cfg := config.Default()
		cfg.LogFormat = format
		log := newLogger(cfg, &buf)
		log.Info().Str("identity", "ci-bot").Msg("decided")
		line := buf.String()
		isJSON := strings.HasPrefix(line, "{")
		if isJSON != (format == "json") || !strings.Contains(line, "decided") || !strings.Contains(line, "ci-bot") {
			t.Errorf("log_format %s wrote %q", format, line)
		}
	}
}
