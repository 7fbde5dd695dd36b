package daemon_test

import (
	"bytes"
	"fmt"
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

// tempGroup creates a real system group for the test and removes it after.
func tempGroup(t *testing.T) (string, int) {
	t.Helper()
	name := fmt.Sprintf("ilk%d", time.Now().UnixNano()%1e9)
	if out, err := exec.Command("groupadd", "--system", name).CombinedOutput(); err != nil {
		t.Fatalf("groupadd %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("groupdel", name).Run() })
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	return name, gid
}

// reachable lets other users traverse the directories above the daemon's
// control socket (t.TempDir makes them 0700), as /run/interlock is.
func reachable(t *testing.T, d *daemontest.Daemon) {
	t.Helper()
	for dir := filepath.Dir(d.Socket); dir != os.TempDir() && dir != "/"; dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
}

// TestControlGroup: the control socket belongs to control_group, so an
// unprivileged member can use the CLI; a non-member is told that it lacks
// permission on the socket and which group grants it, not that interlockd
// is not running.
func TestControlGroup(t *testing.T) {
	group, gid := tempGroup(t)
	cfg := filepath.Join(t.TempDir(), "interlockd.yaml")
	if err := os.WriteFile(cfg, []byte("control_group: "+group+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Config: cfg})
	reachable(t, d)
	var st syscall.Stat_t
	if err := syscall.Stat(d.Socket, &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Gid) != gid || st.Mode&0o777 != 0o660 {
		t.Fatalf("socket gid %d mode %o, want gid %d (%s) mode 660", st.Gid, st.Mode&0o777, gid, group)
	}
	cli := func(groups ...string) (string, string, error) {
		args := []string{"--reuid=65534", "--regid=65534", "--clear-groups"}
		if len(groups) > 0 {
			args = []string{"--reuid=65534", "--regid=65534", "--groups=" + strings.Join(groups, ",")}
		}
		args = append(args, "--", filepath.Join(d.Bin, "interlock"), "--socket", d.Socket, "status")
		cmd := exec.Command("setpriv", args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		return out.String(), errb.String(), err
	}
	out, errOut, err := cli(strconv.Itoa(gid))
	if err != nil || !strings.Contains(out, "interlockd") {
		t.Fatalf("member of %s: status failed: %v\n%s%s", group, err, out, errOut)
	}
	_, errOut, err = cli()
	if err == nil {
		t.Fatal("a non-member used the control socket")
	}
	for _, want := range []string{"permission denied on the control socket " + d.Socket, "group " + group} {
		if !strings.Contains(errOut, want) {
			t.Errorf("non-member's error %q does not say %q", errOut, want)
		}
	}
	if strings.Contains(errOut, "not running") {
		t.Errorf("non-member told %q", errOut)
	}
}
