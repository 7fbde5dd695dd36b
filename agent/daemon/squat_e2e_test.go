package daemon_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// squat is the port squatter: it binds every comma-separated address with
// SO_REUSEADDR, says "listening", then reports each connection it accepts
// until it is killed.
func squat(addrs string) int {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		return err
	}}
	accepted := make(chan string)
	for _, a := range strings.Split(addrs, ",") {
		l, err := lc.Listen(context.Background(), "tcp", a)
		if err != nil {
			fmt.Printf("error %v\n", err)
			return 1
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				accepted <- c.RemoteAddr().String() + " -> " + c.LocalAddr().String()
				io.WriteString(c, "hello from the squatter\n")
				c.Close()
			}
		}()
	}
	fmt.Println("listening")
	for a := range accepted {
		fmt.Println("accepted", a)
	}
	return 0
}

// squatter is a running squat process and what it printed.
type squatter struct {
	lines chan string
	seen  []string
}

// startSquatter runs squat as nobody, in the test's own cgroup: outside the
// daemon's subtree, as any local user could.
func startSquatter(t *testing.T, agent string, port int) *squatter {
	t.Helper()
	addrs := fmt.Sprintf("127.0.0.1:%d,[::1]:%d", port, port)
	cmd := exec.CommandContext(t.Context(), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", agent, addrs)
	return runSquatter(t, cmd)
}

// runSquatter starts cmd, a squat client, and waits until it listens.
func runSquatter(t *testing.T, cmd *exec.Cmd) *squatter {
	t.Helper()
	cmd.Env = append(os.Environ(), clientEnv+"=squat")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start squatter: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s := &squatter{lines: make(chan string, 100)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	select {
	case l := <-s.lines:
		if l != "listening" {
			t.Fatalf("squatter: %s", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("squatter did not start")
	}
	return s
}

// accepted returns every connection the squatter has accepted so far.
func (s *squatter) accepted() []string {
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				return s.seen
			}
			s.seen = append(s.seen, l)
		case <-time.After(200 * time.Millisecond):
			return s.seen
		}
	}
}

// runUnprivileged runs the agent as nobody inside cgroup dir (no interlock
// exec: interlockd may be down) and decodes its report.
func (f *fixture) runUnprivileged(t *testing.T, dir, mode, arg string) report {
	t.Helper()
	return f.runArgvIn(t, dir, mode, append(append([]string{}, unprivileged...), f.agent, arg)...)
}

// TestPortSquatterGetsNothing: while interlockd is down, an unprivileged
// local user binds the proxy port on both loopback addresses. Tagged
// connects must still be refused, not delivered to the squatter; a
// restarted interlockd must start anyway, revoke what its predecessor left
// journaled, and serve; the squatter never accepts a connection.
func TestPortSquatterGetsNothing(t *testing.T) {
	f := startPG(t)
	f.agent = agentBinary(t)
	cg := f.d.Cgroup("agent")
	if _, stderr, err := f.d.CLI("tag", cg, "--identity", "ci-bot"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	pgAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(f.pg.Port))

	// A session whose role the journal holds when interlockd dies.
	f.holdSession(t)
	f.d.Kill()

	sq := startSquatter(t, f.agent, f.d.Port)
	r := f.runUnprivileged(t, cg, "tcp", pgAddr)
	if r.Errno != int(syscall.ECONNREFUSED) {
		t.Errorf("tagged connect with interlockd down and the port squatted: %+v, want ECONNREFUSED", r)
	}
	if got := sq.accepted(); len(got) != 0 {
		t.Fatalf("the squatter accepted a tagged connection: %v", got)
	}

	// interlockd starts although the port is held (Restart fails the test
	// otherwise), and its lease recovery ran before it served.
	f.d.Restart()
	if got := sessionRoles(t, f.pg); len(got) != 0 {
		t.Errorf("journaled role %v survived the restart\n%s", got, f.d.Logs())
	}
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}
	if out, err := f.psqlAs(t, nobody, "SELECT 41 + 1"); err != nil || out != "42" {
		t.Errorf("psql through interlockd with the port squatted: %q, %v\n%s", out, err, f.d.Logs())
	}
	if got := sq.accepted(); len(got) != 0 {
		t.Fatalf("the squatter accepted connections with interlockd up: %v", got)
	}
	opened := 0
	for _, e := range auditEvents(f.d, "connection_open") {
		if e["dst"] == pgAddr {
			opened++
		}
	}
	if opened == 0 {
		t.Errorf("interlockd served no connection to %s\n%s", pgAddr, f.d.Logs())
	}

	// Uninstall detaches the steering too: the port is the squatter's now.
	if out, stderr, err := f.d.CLI("uninstall"); err != nil {
		t.Fatalf("uninstall: %v %s %s", err, out, stderr)
	}
	for _, a := range []string{"127.0.0.1", "::1"} {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(a, strconv.Itoa(f.d.Port)), 5*time.Second)
		if err != nil {
			t.Errorf("connect to [%s]:%d after uninstall: %v, want the squatter", a, f.d.Port, err)
			continue
		}
		c.Close()
	}
	if got := sq.accepted(); len(got) != 2 {
		t.Errorf("after uninstall the squatter accepted %v, want the two direct connects", got)
	}
}

// TestOwnListenersUnreachableThroughProxy: interlockd's listeners sit on
// ephemeral ports besides the proxy port; a tagged agent dialing any of
// them is refused at identification, never relayed into interlockd itself.
func TestOwnListenersUnreachableThroughProxy(t *testing.T) {
	f := start(t)
	var own []string
	for _, line := range strings.Split(f.d.Logs(), "\n") {
		var m struct {
			Message   string   `json:"message"`
			Listeners []string `json:"listeners"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.Message == "data path armed; serving" {
			own = m.Listeners
		}
	}
	if len(own) != 2 {
		t.Fatalf("listeners in the start line: %v\n%s", own, f.d.Logs())
	}
	for _, dst := range append(own, net.JoinHostPort("127.0.0.1", strconv.Itoa(f.d.Port))) {
		f.run(t, "ci-bot", "tcp", dst)
		want := "targets interlockd itself (" + dst + ")"
		waitFor(t, "the refusal of "+dst, func() bool { return strings.Contains(f.d.Logs(), want) })
	}
	for _, e := range auditEvents(f.d, "connection_open") {
		t.Errorf("a connection to interlockd itself was relayed: %v", e)
	}
}
