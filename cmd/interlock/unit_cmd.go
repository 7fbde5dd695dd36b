package main

// Tagging systemd units. `interlock tag --unit NAME --identity ID` writes a
// drop-in that makes the unit tag its own cgroup every time it starts:
//
//	[Unit]
//	Requires=interlock.service
//	After=interlock.service
//	[Service]
//	ExecStartPre=+/usr/bin/interlock tag --unit %n --identity ID
//
// Why ExecStartPre=+ and not interlockd following the unit: systemd creates
// a fresh cgroup (a new cgroup id) on every start, and only a synchronous
// step inside the start job can tag it before ExecStart= runs, so the main
// process is enforced from its first connection. If interlockd is down the
// tag call fails, the start job fails, and the unit never runs untagged.
// Requires=/After= order the unit after interlockd has armed the data path
// (interlockd is Type=notify and reports READY=1 only then), and an
// explicit stop of interlockd stops the unit with it. A crash of interlockd
// leaves a running unit's cgroup tagged in the pinned maps: its connections
// fail (ECONNREFUSED) until interlockd is back.
//
// Run from that ExecStartPre, the same command recognises the unit's own
// start (INVOCATION_ID equals the unit's InvocationID) and only tags; run
// by an operator it writes the drop-in, reloads systemd when the drop-in
// changed, and tags the unit's current cgroup if it is running.
//
// The drop-in also sets NoNewPrivileges=yes and the variables that make the
// unit's runtimes trust Interlock's CA, as `interlock exec` does (see
// caVars):
//
//	Environment="SSL_CERT_FILE=/run/interlock/ca-bundle.crt"

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/interlock-dev/interlock/agent/control"
)

// systemdUnitDir is where drop-ins are written; a variable so tests can
// point it at a temporary directory.
var systemdUnitDir = "/etc/systemd/system"

// dropInName is the drop-in file inside NAME.d/.
const dropInName = "50-interlock.conf"

var (
	// unitNamePattern accepts the characters systemd allows in unit names.
	unitNamePattern = regexp.MustCompile(`^[A-Za-z0-9:_.@\\-]+\.(service|slice)$`)
	// identityPattern mirrors the daemon's rule; checked here too because
	// the identity is written into a unit file and must not carry syntax.
	identityPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
)

// runTagUnit tags a systemd service now (if it is running) and on every
// start, or a slice now. It needs root: it writes under /etc/systemd/system
// and talks to systemd with systemctl.
func runTagUnit(ctx context.Context, c *control.Client, unit, identity string, stdout, stderr io.Writer) error {
	if !unitNamePattern.MatchString(unit) {
		return fmt.Errorf("tag unit %q: want NAME.service or NAME.slice", unit)
	}
	if !identityPattern.MatchString(identity) {
		return fmt.Errorf("tag unit %s: identity %q: use letters, digits, '-', '_' and '.' (at most 64)", unit, identity)
	}
	if inv := os.Getenv("INVOCATION_ID"); inv != "" {
		if own, err := unitProperty(ctx, unit, "InvocationID"); err == nil && own == inv {
			// We are the unit's own ExecStartPre: tag the cgroup systemd
			// just created and let ExecStart run.
			return tagUnitCgroup(ctx, c, unit, identity, stdout, stderr)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find interlock binary: %w", err)
	}
	// The files interlockd publishes beside its socket, named without asking
	// it: the drop-in may be written while it is down.
	run := filepath.Dir(c.Socket)
	env := caVars(filepath.Join(run, control.CACertFile), filepath.Join(run, control.CABundleFile))
	changed, err := writeDropIn(systemdUnitDir, unit, dropIn(unit, identity, self, env))
	if err != nil {
		return err
	}
	if changed {
		if err := systemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s\n", filepath.Join(systemdUnitDir, unit+".d", dropInName))
	}
	cg, err := unitProperty(ctx, unit, "ControlGroup")
	if err != nil {
		return err
	}
	if cg == "" {
		if strings.HasSuffix(unit, ".slice") {
			return fmt.Errorf("tag unit %s: the slice has no cgroup now (start a unit in it first)", unit)
		}
		fmt.Fprintf(stdout, "%s is not running; it will be tagged as %s when it starts\n", unit, identity)
		return nil
	}
	return tagUnitCgroup(ctx, c, unit, identity, stdout, stderr)
}

// runUntagUnit removes the drop-in runTagUnit wrote and untags the unit's
// current cgroup, if any.
func runUntagUnit(ctx context.Context, c *control.Client, unit string, stdout io.Writer) error {
	if !unitNamePattern.MatchString(unit) {
		return fmt.Errorf("untag unit %q: want NAME.service or NAME.slice", unit)
	}
	path := filepath.Join(systemdUnitDir, unit+".d", dropInName)
	switch err := os.Remove(path); {
	case err == nil:
		if err := systemctl(ctx, "daemon-reload"); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s\n", path)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("remove drop-in: %w", err)
	}
	cg, err := unitProperty(ctx, unit, "ControlGroup")
	if err != nil || cg == "" {
		return err
	}
	var out control.TagEntry
	if err := c.Call(ctx, "/v1/tag", control.TagRequest{Cgroup: cg}, &out); err != nil {
		return fmt.Errorf("untag %s: %w", unit, err)
	}
	fmt.Fprintf(stdout, "untagged %s (%s)\n", unit, out.Cgroup)
	return nil
}

// tagUnitCgroup tags the unit's current cgroup through the control API.
func tagUnitCgroup(ctx context.Context, c *control.Client, unit, identity string, stdout, stderr io.Writer) error {
	cg, err := unitProperty(ctx, unit, "ControlGroup")
	if err != nil {
		return err
	}
	if cg == "" {
		return fmt.Errorf("tag unit %s: systemd reports no cgroup for it", unit)
	}
	var out control.TagAnswer
	if err := c.Call(ctx, "/v1/tag", control.TagRequest{Cgroup: cg, Identity: identity}, &out); err != nil {
		return fmt.Errorf("tag unit %s: %w", unit, err)
	}
	fmt.Fprintf(stdout, "tagged %s (%s) as %s\n", unit, out.Cgroup, out.Identity)
	printWarnings(stderr, out.Warnings)
	return nil
}

// dropIn renders the drop-in for unit. A slice cannot run commands, so its
// drop-in only orders it after interlockd; its cgroup is tagged while it
// exists (see runTagUnit). A service also gets env ("KEY=VALUE", the CA
// variables interlock exec sets) as Environment= lines; being read after
// the unit file, they win over its own settings of the same variables (a
// later drop-in, e.g. 60-ca.conf, can set them back).
func dropIn(unit, identity, interlock string, env []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by `interlock tag --unit %s --identity %s`.\n", unit, identity)
	fmt.Fprintf(&b, "# Remove with `interlock untag --unit %s`.\n", unit)
	b.WriteString("[Unit]\nRequires=interlock.service\nAfter=interlock.service\n")
	if strings.HasSuffix(unit, ".service") {
		// '+': full privileges whatever User= the unit runs as, so the
		// control socket sees root. %n is the unit's own name.
		fmt.Fprintf(&b, "\n[Service]\nExecStartPre=+%s tag --unit %%n --identity %s\n", interlock, identity)
		// As interlock exec's commands: no privileges gained through
		// set-user-ID programs, which would take the agent out of its
		// cgroup or hand its work to a daemon's (see execShim). The '+'
		// command above is exempt.
		b.WriteString("NoNewPrivileges=yes\n")
		for _, kv := range env {
			// Quoted: systemd splits unquoted values at spaces.
			fmt.Fprintf(&b, "Environment=%q\n", kv)
		}
	}
	return b.String()
}

// writtenBy is the header line dropIn writes first, read back by
// staleDropIns.
var writtenBy = regexp.MustCompile("^# Written by `interlock tag --unit (\\S+) --identity (\\S+)`\\.\n")

// staleDropIns names the services under dir whose drop-in an earlier
// interlock wrote without NoNewPrivileges=yes, and how to rewrite it: a
// drop-in is written by the operator's `interlock tag --unit`, not at the
// unit's start, so an upgrade leaves the old one in place.
func staleDropIns(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "*.service.d", dropInName))
	var stale []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		m := writtenBy.FindSubmatch(b)
		if m == nil || bytes.Contains(b, []byte("\nNoNewPrivileges=yes\n")) {
			continue
		}
		stale = append(stale, fmt.Sprintf("%s lets the unit gain privileges (sudo): run `interlock tag --unit %s --identity %s` and restart it",
			f, m[1], m[2]))
	}
	return stale
}

// writeDropIn writes content to DIR/UNIT.d/50-interlock.conf unless it is
// already there, and reports whether it changed anything.
func writeDropIn(dir, unit, content string) (bool, error) {
	path := filepath.Join(dir, unit+".d", dropInName)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, []byte(content)) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("create drop-in dir: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return false, fmt.Errorf("write drop-in: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("install drop-in: %w", err)
	}
	return true, nil
}

// unitProperty returns one property of unit as systemd reports it.
func unitProperty(ctx context.Context, unit, prop string) (string, error) {
	out, err := exec.CommandContext(ctx, "systemctl", "show", "--property", prop, "--value", "--", unit).Output()
	if err != nil {
		return "", fmt.Errorf("read %s of %s: %w%s", prop, unit, err, stderrOf(err))
	}
	return strings.TrimSpace(string(out)), nil
}

func systemctl(ctx context.Context, args ...string) error {
	if out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + string(bytes.TrimSpace(ee.Stderr))
	}
	return ""
}
