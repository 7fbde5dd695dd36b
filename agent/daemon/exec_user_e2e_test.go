package daemon_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/daemontest"
)

// tempUser creates a real system user with its own group and a
// supplementary group, and removes them after the test.
func tempUser(t *testing.T, group string) *user.User {
	t.Helper()
	name := fmt.Sprintf("ilkagent%d", time.Now().UnixNano()%1e6)
	home := filepath.Join(t.TempDir(), name)
	if out, err := exec.Command("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", home,
		"--groups", group, "--shell", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestExecUser: `interlock exec --user NAME` runs the command tagged, as
// that user with its supplementary groups and HOME, so it cannot move
// itself out of its cgroup through the root-owned cgroup.procs.
func TestExecUser(t *testing.T) {
	group, gid := tempGroup(t)
	u := tempUser(t, group)
	d := daemontest.Start(t, daemontest.Options{})
	script := fmt.Sprintf(`id -u; id -G; echo "home=$HOME user=$USER logname=$LOGNAME"; grep "^0::" /proc/self/cgroup
echo $$ > %s/cgroup.procs && echo ESCAPED`, d.Root)
	cmd := d.Command(t.Context(), "exec", "--identity", "demo", "--user", u.Username, "--", "sh", "-c", script)
	cmd.Env = append(cmd.Environ(), "HOME=/root", "USER=root", "SUDO_USER=root")
	outb, _ := cmd.CombinedOutput()
	out := string(outb)
	lines := strings.Split(out, "\n")
	if len(lines) < 4 {
		t.Fatalf("exec --user printed:\n%s", out)
	}
	if lines[0] != u.Uid {
		t.Errorf("uid %q, want %s (%s)", lines[0], u.Uid, u.Username)
	}
	groups := strings.Fields(lines[1])
	if len(groups) == 0 || groups[0] != u.Gid || !strings.Contains(" "+lines[1]+" ", fmt.Sprintf(" %d ", gid)) {
		t.Errorf("groups %q, want primary %s and supplementary %d (%s)", lines[1], u.Gid, gid, group)
	}
	if want := fmt.Sprintf("home=%s user=%s logname=%s", u.HomeDir, u.Username, u.Username); lines[2] != want {
		t.Errorf("environment %q, want %q", lines[2], want)
	}
	if !strings.Contains(lines[3], "/interlock-exec/demo-") {
		t.Errorf("command ran in cgroup %q, not a tagged exec cgroup", lines[3])
	}
	if strings.Contains(out, "ESCAPED") {
		t.Errorf("the command moved itself out of its tagged cgroup:\n%s", out)
	}
}

// TestExecNoNewPrivileges: a command under `interlock exec` gains no
// privileges through a set-user-ID program: a root-owned copy of id(1)
// with the bit set reports the agent's own effective uid, not root's.
// Root, as sudo or su would make it, leaves its cgroup through
// cgroup.procs; crontab and at (set-group-ID) hand work to a daemon that
// runs it untagged.
func TestExecNoNewPrivileges(t *testing.T) {
	d := daemontest.Start(t, daemontest.Options{})
	dir := t.TempDir()
	for _, p := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	id := filepath.Join(dir, "id")
	b, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(id, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(id, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	// The bit works here: run outside interlock exec, as nobody, it makes
	// root the effective user.
	outside, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", id).CombinedOutput()
	if err != nil || !strings.Contains(string(outside), "euid=0(") {
		t.Fatalf("the set-user-ID copy of id outside interlock exec: %v %s", err, outside)
	}
	cmd := d.Command(t.Context(), "exec", "--identity", "demo", "--user", "nobody", "--", "sh", "-c", id+"; grep NoNewPrivs /proc/self/status")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Contains(string(out), "euid=") || !strings.Contains(string(out), "NoNewPrivs:\t1") {
		t.Fatalf("a set-user-ID program under interlock exec: %v\n%s", err, out)
	}
}

// TestExecWarnsOfUserManager: a command's user whose systemd user manager
// listens on a socket the identity may reach is warned of at `interlock
// exec`: asked over it (systemd-run --user), the manager would start
// commands outside the tagged cgroup. With the socket in deny_unix_paths
// there is no warning, and a tagged connect to it is refused.
func TestExecWarnsOfUserManager(t *testing.T) {
	group, _ := tempGroup(t)
	u := tempUser(t, group)
	// A stand-in for the manager's private socket, where systemd puts it.
	_, err := os.Stat("/run/user")
	made := "/run/user"
	if err == nil {
		made = filepath.Join("/run/user", u.Uid)
	}
	private := filepath.Join("/run/user", u.Uid, "systemd", "private")
	if err := os.MkdirAll(filepath.Dir(private), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(made) })
	serveUnix(t, private)
	execAs := func(d *daemontest.Daemon, argv ...string) (string, int) {
		_, errOut, st := runStatus(t, d.Command(t.Context(), append([]string{"exec", "--identity", "demo", "--user", u.Username, "--"}, argv...)...))
		return errOut, st
	}
	want := "uid " + u.Uid + " has a systemd user manager listening on " + private
	d := daemontest.Start(t, daemontest.Options{})
	if errOut, st := execAs(d, "true"); st != 0 || !strings.Contains(errOut, want) {
		t.Errorf("exec with the manager's socket reachable: status %d, stderr %q, want a warning naming it", st, errOut)
	}
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf("version: 1\nidentities: [{name: demo}]\ndeny_unix_paths: [%s]\n", private)), 0o644); err != nil {
		t.Fatal(err)
	}
	denied := daemontest.Start(t, daemontest.Options{Policy: pol})
	errOut, st := execAs(denied, "/usr/bin/python3", "-c", "import socket; socket.socket(socket.AF_UNIX).connect('"+private+"')")
	if strings.Contains(errOut, "systemd user manager") || st == 0 || !strings.Contains(errOut, "PermissionError") {
		t.Errorf("exec with the manager's socket denied: status %d, stderr %q, want no warning and the connect refused", st, errOut)
	}
}

// TestTaggingWarnsOfUnknownIdentity: `interlock exec` with an identity no
// identity of the policy matches (a typo) runs the command tagged, as a
// later policy may name it, but says so: otherwise the mistake showed only
// as refusals. So does `interlock tag`. A known identity gets no such
// warning.
func TestTaggingWarnsOfUnknownIdentity(t *testing.T) {
	d := daemontest.Start(t, daemontest.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	connect := "import socket; socket.create_connection(('127.0.0.1', " + strconv.Itoa(l.Addr().(*net.TCPAddr).Port) + "), 5)"
	execAs := func(identity string) (string, int) {
		_, errOut, st := runStatus(t, d.Command(t.Context(), "exec", "--identity", identity, "--user", "nobody", "--",
			"/usr/bin/python3", "-c", connect))
		return errOut, st
	}
	warning := `no identity of the policy in force (<default policy>) matches "dmeo"`
	if errOut, st := execAs("dmeo"); !strings.Contains(errOut, warning) || st == 0 || !strings.Contains(errOut, "PermissionError") {
		t.Errorf("exec as an unknown identity: status %d, stderr %q, want the warning and the connect refused", st, errOut)
	}
	if errOut, st := execAs("demo"); strings.Contains(errOut, "no identity of the policy") || st != 0 {
		t.Errorf("exec as the default policy's identity: status %d, stderr %q, want no warning and the connect made", st, errOut)
	}
	cg := d.Cgroup("runner")
	if out, errOut, err := d.CLI("tag", cg, "--identity", "dmeo"); err != nil || !strings.Contains(out, "as dmeo") || !strings.Contains(errOut, warning) {
		t.Errorf("tag as an unknown identity: %v, stdout %q, stderr %q, want it tagged and the warning", err, out, errOut)
	}
	if out, errOut, err := d.CLI("tag", cg, "--identity", "demo"); err != nil || !strings.Contains(out, "as demo") || errOut != "" {
		t.Errorf("tag as the default policy's identity: %v, stdout %q, stderr %q, want no warning", err, out, errOut)
	}
}

// TestUninstallQuiet: uninstall removes exec cgroups (directories) only,
// with no warning about the cgroup files beside them.
func TestUninstallQuiet(t *testing.T) {
	d := daemontest.Start(t, daemontest.Options{})
	if out, code := d.Exec("demo", "true"); code != 0 {
		t.Fatalf("exec: %d\n%s", code, out)
	}
	out, errOut, err := d.CLI("uninstall")
	if err != nil || errOut != "" {
		t.Fatalf("uninstall: %v\n%s%s", err, out, errOut)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.Logs(), `"message":"stopped"`) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	for _, line := range strings.Split(d.Logs(), "\n") {
		// The start's gap warnings may name cgroups; uninstall's may not.
		if strings.Contains(line, `"level":"warn"`) && strings.Contains(line, "cgroup") &&
			!strings.Contains(line, "not enforced on this kernel") {
			t.Errorf("uninstall warned: %s", line)
		}
	}
}

// TestExecWarnsPtraceExposure: where the kernel cannot refuse ptrace across
// identities, `interlock exec --user` warns when that user owns processes
// outside the command's cgroup (the agent could attach to one and connect
// through it), and stays quiet for a user that owns none.
func TestExecWarnsPtraceExposure(t *testing.T) {
	group, _ := tempGroup(t)
	u := tempUser(t, group)
	d := daemontest.Start(t, daemontest.Options{})
	status, _, err := d.CLI("status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	gap := strings.Contains(status, "ptrace")
	run := func() string {
		cmd := d.Command(t.Context(), "exec", "--identity", "demo", "--user", u.Username, "--", "true")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("exec: %v\n%s", err, stderr.String())
		}
		return stderr.String()
	}
	warning := fmt.Sprintf("uid %s owns 1 process(es) outside", u.Uid)
	if out := run(); strings.Contains(out, "uid "+u.Uid+" owns") {
		t.Errorf("warned for a user that owns no other process:\n%s", out)
	}
	victim := exec.Command("setpriv", "--reuid="+u.Uid, "--regid="+u.Gid, "--clear-groups", "--", "sleep", "60")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { victim.Process.Kill(); victim.Wait() })
	out := run()
	if gap != strings.Contains(out, warning) {
		t.Errorf("ptrace gap %v, stderr:\n%s\nwant the warning %q exactly when there is a gap", gap, out, warning)
	}
	t.Logf("ptrace gap on this kernel: %v; exec said: %s", gap, strings.TrimSpace(out))
}

// TestExecCgroupKeptWhileUnreadable: an exec cgroup whose agent still runs
// stays tagged while interlockd cannot read whether it has processes, both
// when the exec's command exits leaving a child behind (the CLI asks for
// the release) and when the collector looks: its connects still come to
// interlockd. Before, a failed read counted as an empty cgroup: the
// cgroup was untagged under the running child, whose connects then went
// straight out. The read is made to fail with a file that refuses to be
// read mounted over cgroup.events; out of descriptors, it fails the same.
func TestExecCgroupKeptWhileUnreadable(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp4", "127.0.0.1:0")
	var stderr bytes.Buffer
	// The command exits at once; its child goes on in the exec cgroup.
	cli := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & read go; exit 0")
	stdin, err := cli.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cli.Stderr = &stderr
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, pid := range execPIDs(f.d) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	waitFor(t, "the exec's processes in its cgroup", func() bool { return len(execPIDs(f.d)) >= 2 })
	dirs, _ := filepath.Glob(filepath.Join(f.d.Root, "interlock-exec", "ci-bot-*"))
	if len(dirs) != 1 {
		t.Fatalf("exec cgroups %v, want one", dirs)
	}
	cg, rel := dirs[0], strings.TrimPrefix(dirs[0], f.d.Mount)
	// Root is refused reading a write-only sysctl: EACCES.
	events := filepath.Join(cg, "cgroup.events")
	if out, err := exec.Command("mount", "--bind", "/proc/sys/net/ipv4/route/flush", events).CombinedOutput(); err != nil {
		t.Fatalf("mount over %s: %v\n%s", events, err, out)
	}
	t.Cleanup(func() { exec.Command("umount", events).Run() })
	untagged := func(when string) {
		t.Helper()
		for _, e := range auditEvents(f.d, "untag") {
			if e["cgroup"] == rel {
				t.Fatalf("%s: the exec cgroup was untagged with its child running: %v", when, e)
			}
		}
		r := f.runArgvIn(t, cg, "tcp", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", f.agent, tg.addr())
		if r.Line != "hello from target" {
			t.Fatalf("%s: a connect from the exec cgroup: %+v", when, r)
		}
		waitEvent(t, f.d, "connection_open", func(e map[string]any) bool {
			return e["cgroup"] == rel && e["identity"] == "ci-bot" && e["pid"] == float64(r.PID)
		})
	}

	stdin.Close() // the command exits; the CLI asks for the release
	if err := cli.Wait(); err != nil {
		t.Fatalf("exec: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "kept: whether it still has processes cannot be read") {
		t.Errorf("the CLI's release: %q, want it refused for the unreadable cgroup", stderr.String())
	}
	untagged("after the release")

	// The collector looks only at exec cgroups older than 10 s, every 10 s.
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(cg, old, old); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(11 * time.Second); !strings.Contains(f.d.Logs(), "exec cgroup kept tagged"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the collector did not say it kept the exec cgroup:\n%s", f.d.Logs())
		}
	}
	untagged("after the collector")
}
