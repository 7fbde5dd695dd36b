// Package daemontest runs the real interlockd and interlock binaries for
// end-to-end tests, each daemon confined to a cgroup subtree and a bpffs
// mount of its own that are removed when the test ends, pass or fail.
package daemontest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/testenv"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds interlockd and interlock once per test process and
// returns the directory holding them. INTERLOCK_BIN_DIR names a directory
// of binaries built beforehand instead (the Makefile's, or an installed set).
func Binaries(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("INTERLOCK_BIN_DIR"); dir != "" {
		return dir
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "interlock-bin-")
		if buildErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		cmd := exec.Command("go", "build", "-o", binDir, "./cmd/interlockd", "./cmd/interlock")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// Daemon is one interlockd under test.
type Daemon struct {
	t testing.TB
	// Mount is the cgroup2 mount; Root the private subtree the daemon
	// attaches at; BPFFS its private pin directory.
	Mount, Root, BPFFS string
	Socket, StateDir   string
	Port               int
	// Policy is the policy file passed to interlockd ("" for the default).
	Policy string
	Bin    string

	args   []string
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *Buffer
}

// Options adjust a daemon before it starts.
type Options struct {
	Policy string // policy file path
	Config string // config file path
	Args   []string
}

// Start prepares a private cgroup subtree and bpffs mount and starts
// interlockd on them; everything is torn down in t.Cleanup.
func Start(t testing.TB, o Options) *Daemon {
	t.Helper()
	testenv.Privileged(t)
	bin := Binaries(t)
	mount, err := datapath.CgroupMount()
	if err != nil {
		testenv.Unavailable(t, "no cgroup2 mount: %v", err)
	}
	base := t.TempDir()
	// Agents run unprivileged and read the CA certificate published beside
	// the socket (PGSSLROOTCERT from `interlock exec`): open the way to it
	// as a real install's /run/interlock (0755) is. The state directory
	// inside stays interlockd's own (0700).
	for dir := base; dir != os.TempDir() && dir != "/"; dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	d := &Daemon{
		t: t, Mount: mount, Bin: bin, Policy: o.Policy,
		Root:     filepath.Join(mount, fmt.Sprintf("interlock-test-%d-%d", os.Getpid(), time.Now().UnixNano())),
		BPFFS:    filepath.Join(base, "bpffs"),
		Socket:   filepath.Join(base, "interlock.sock"),
		StateDir: filepath.Join(base, "state"),
		Port:     testenv.FreePort(t),
		logs:     &Buffer{},
	}
	if err := os.Mkdir(d.Root, 0o755); err != nil {
		t.Fatalf("create cgroup subtree: %v", err)
	}
	t.Cleanup(func() { removeCgroupTree(t, d.Root) })
	if err := os.MkdirAll(d.BPFFS, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("bpf", d.BPFFS, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs at %s: %v", d.BPFFS, err)
	}
	t.Cleanup(func() {
		// Uninstall detaches the programs even if a test left the daemon
		// dead; the unmount then drops whatever remained pinned.
		datapath.Uninstall(d.BPFFS)
		syscall.Unmount(d.BPFFS, syscall.MNT_DETACH)
	})
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			t.Logf("interlockd log:\n%s", d.logs.String())
		}
	})
	d.args = append([]string{}, o.Args...)
	if o.Config != "" {
		d.args = append(d.args, "--config", o.Config)
	}
	d.Restart()
	return d
}

// Restart starts interlockd again (after Kill or Stop) and waits until it
// answers on its control socket.
func (d *Daemon) Restart() {
	d.t.Helper()
	args := []string{"--cgroup-root", d.Root, "--bpffs", d.BPFFS, "--socket", d.Socket,
		"--state-dir", d.StateDir, "--listen-port", strconv.Itoa(d.Port)}
	if d.Policy != "" {
		args = append(args, "--policy", d.Policy)
	}
	d.cmd = exec.Command(filepath.Join(d.Bin, "interlockd"), append(args, d.args...)...)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	if err := d.cmd.Start(); err != nil {
		d.t.Fatalf("start interlockd: %v", err)
	}
	exited := make(chan struct{})
	go func(c *exec.Cmd) { c.Wait(); close(exited) }(d.cmd)
	d.exited = exited
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, _, err := d.CLI("status"); err == nil {
			return
		}
		select {
		case <-exited:
			d.t.Fatalf("interlockd exited at start:\n%s", d.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("interlockd did not answer within 20s:\n%s", d.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill sends SIGKILL to interlockd and waits for it to die.
func (d *Daemon) Kill() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Kill()
	<-d.exited
	d.cmd = nil
}

// Stop sends SIGTERM and waits up to 10 s, then kills.
func (d *Daemon) Stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	d.cmd = nil
}

// Logs returns everything interlockd printed so far. interlockd writes
// its lines below warn level in batches, each within 10 ms of its first
// line (cmd/interlockd's logWriter): Logs waits logSettle first, so that
// every line logged before the call is in what it returns.
func (d *Daemon) Logs() string {
	time.Sleep(logSettle)
	return d.logs.String()
}

// logSettle is interlockd's log batching (10 ms) with room for the pipe.
const logSettle = 50 * time.Millisecond

// PID returns the running interlockd's process id.
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// CLI runs `interlock --socket S args...` and returns stdout, stderr.
func (d *Daemon) CLI(args ...string) (string, string, error) {
	cmd := exec.Command(filepath.Join(d.Bin, "interlock"), append([]string{"--socket", d.Socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// Command returns `interlock --socket S args...` for the caller to run,
// e.g. with its own stdin or inside a cgroup.
func (d *Daemon) Command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, filepath.Join(d.Bin, "interlock"), append([]string{"--socket", d.Socket}, args...)...)
}

// Exec runs `interlock exec --identity id -- argv...` with a timeout and
// returns combined output and the exit code.
func (d *Daemon) Exec(identity string, argv ...string) (string, int) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := d.Command(ctx, append([]string{"exec", "--identity", identity, "--"}, argv...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		d.t.Fatalf("interlock exec: %v\n%s", err, out)
	}
	return string(out), 0
}

// Cgroup creates a cgroup under the daemon's subtree and returns its path.
func (d *Daemon) Cgroup(name string) string {
	d.t.Helper()
	p := filepath.Join(d.Root, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		d.t.Fatal(err)
	}
	return p
}

// removeCgroupTree kills whatever still runs in the subtree and removes it,
// children first.
func removeCgroupTree(t testing.TB, root string) {
	if _, err := os.Stat(root); err != nil {
		return
	}
	os.WriteFile(filepath.Join(root, "cgroup.kill"), []byte("1"), 0)
	var dirs []string
	filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	deadline := time.Now().Add(5 * time.Second)
	for i := len(dirs) - 1; i >= 0; i-- {
		for {
			err := os.Remove(dirs[i])
			if err == nil || os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup %s: %v", dirs[i], err)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Buffer collects the output of a running process while a test reads it.
// It is safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Clone(s.b.String())
}

// Recordings returns the raw bytes of every session recording of the
// daemon, by session ID, once every session it has started has ended and
// been sealed: a file in the state directory, or, for a session that ended
// before its first flush, the store's copy.
func (d *Daemon) Recordings(t testing.TB) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(d.StateDir, "interlock.db"))
	if err != nil {
		t.Fatalf("open the daemon's store: %v", err)
	}
	defer st.Close()
	deadline := time.Now().Add(15 * time.Second)
	for {
		open, err := st.ListSessions(ctx, store.SessionFilter{OpenOnly: true, Limit: 100000})
		if err != nil {
			t.Fatalf("list sessions: %v", err)
		}
		if len(open) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open, e.g. %+v", len(open), open[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
	all, err := st.ListSessions(ctx, store.SessionFilter{Limit: 100000})
	if err != nil {
		t.Fatalf("list sessions: %v", err)
	}
	out := map[string][]byte{}
	for _, ss := range all {
		b, err := os.ReadFile(ss.Recording)
		if errors.Is(err, os.ErrNotExist) {
			var r io.Reader
			if r, err = st.OpenRecording(ctx, ss.ID); err == nil {
				b, err = io.ReadAll(r)
			}
		}
		if err != nil {
			t.Fatalf("recording of session %s: %v", ss.ID, err)
		}
		out[ss.ID] = b
	}
	return out
}
