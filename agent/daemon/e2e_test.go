package daemon_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// The test binary doubles as the "legacy agent": run under `interlock exec`
// with clientEnv set, it does one network operation and prints a JSON
// report, so every check below runs through the real CLI, daemon and kernel.
const clientEnv = "INTERLOCK_E2E_CLIENT"

func TestMain(m *testing.M) {
	if mode := os.Getenv(clientEnv); mode != "" {
		os.Exit(client(mode, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

type report struct {
	PID   int    `json:"pid"`
	UID   int    `json:"uid"`
	Peer  string `json:"peer"`  // getpeername
	Local string `json:"local"` // getsockname
	Line  string `json:"line"`  // first line the server sent
	Err   string `json:"err"`
	Errno int    `json:"errno"`
	// Locals lists the local address of every connection a loop made.
	Locals []string `json:"locals"`
	OK     int      `json:"ok"`
	// P50 is the median connect+first-byte latency in µs (mode latency),
	// or look-up latency (mode dnslatency); P99 the 99th percentile.
	P50 float64 `json:"p50_us"`
	P99 float64 `json:"p99_us"`
	// Rate is what a load made a second (mode h2connect: new HTTP/2
	// connections, each with one request); Handshake the median TLS
	// handshake of those connections in µs, from the TCP connect's end.
	Rate      float64 `json:"rate,omitempty"`
	Handshake float64 `json:"handshake_us,omitempty"`
}

func client(mode, arg string) int {
	r := report{PID: os.Getpid(), UID: os.Getuid()}
	fail := func(err error) {
		r.Err = err.Error()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			r.Errno = int(errno)
		}
	}
	// greet connects to addr and reads the first line the server sends
	// within wait.
	greet := func(addr string, wait time.Duration) {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			fail(err)
			return
		}
		r.Peer, r.Local = c.RemoteAddr().String(), c.LocalAddr().String()
		c.SetDeadline(time.Now().Add(wait))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fail(err)
		}
		r.Line = strings.TrimSpace(line)
		c.Close()
	}
	switch mode {
	case "tcp":
		greet(arg, 5*time.Second)
	case "orphan":
		// Connect, leave the socket to a child (mode inherited) and exit
		// at once, without a report: the child's is the only one.
		c, err := net.DialTimeout("tcp", arg, 5*time.Second)
		if err != nil {
			fail(err)
			break
		}
		f, err := c.(*net.TCPConn).File()
		if err != nil {
			fail(err)
			break
		}
		child := exec.Command(os.Args[0], arg)
		child.Env = append(os.Environ(), clientEnv+"=inherited")
		child.Stdout, child.Stderr, child.ExtraFiles = os.Stdout, os.Stderr, []*os.File{f}
		if err := child.Start(); err != nil {
			fail(err)
			break
		}
		os.Exit(0)
	case "inherited":
		// The first line on the socket an orphan's parent left as fd 3.
		c, err := net.FileConn(os.NewFile(3, "inherited"))
		if err != nil {
			fail(err)
			break
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fail(err)
		}
		r.Line = strings.TrimSpace(line)
	case "loop":
		// Connect repeatedly for a few seconds, across a daemon restart.
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			c, err := net.DialTimeout("tcp", arg, time.Second)
			if err != nil {
				continue
			}
			r.Locals = append(r.Locals, c.LocalAddr().String())
			c.SetDeadline(time.Now().Add(time.Second))
			if line, _ := bufio.NewReader(c).ReadString('\n'); strings.HasPrefix(line, "hello") {
				r.OK++
			}
			c.Close()
		}
	case "hoard":
		// Open N connections to ADDR and hold them (arg "N|ADDR|HOLD",
		// optionally "|WAIT"): OK counts those greeted within a second.
		// HOLD later, close them all and connect once more: Line is that
		// connection's greeting, waited for WAIT (10 s).
		f := strings.Split(arg, "|")
		var n int
		fmt.Sscan(f[0], &n)
		hold, _ := time.ParseDuration(f[2])
		wait := 10 * time.Second
		if len(f) > 3 {
			wait, _ = time.ParseDuration(f[3])
		}
		var held []net.Conn
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp", f[1], 5*time.Second)
			if err != nil {
				fail(fmt.Errorf("connect %d: %w", i, err))
				break
			}
			held = append(held, c)
		}
		greeted := time.Now().Add(time.Second)
		for _, c := range held {
			c.SetReadDeadline(greeted)
			if line, _ := bufio.NewReader(c).ReadString('\n'); strings.HasPrefix(line, "hello") {
				r.OK++
			}
		}
		time.Sleep(hold)
		for _, c := range held {
			c.Close()
		}
		greet(f[1], wait)
	case "dns":
		// One question: arg is "NET|ADDR|NAME|TYPE"; Line is the answer's
		// rcode and records.
		f := strings.Split(arg, "|")
		m := new(dns.Msg).SetQuestion(dns.Fqdn(f[2]), dns.StringToType[f[3]])
		resp, _, err := (&dns.Client{Net: f[0], Timeout: 3 * time.Second}).Exchange(m, f[1])
		if err != nil {
			fail(err)
			break
		}
		r.Line = dns.RcodeToString[resp.Rcode]
		for _, rr := range resp.Answer {
			r.Line += " " + strings.ReplaceAll(rr.String(), "\t", " ")
		}
	case "dnsflood":
		// N questions sent at once, no answer awaited: arg is
		// "N|ADDR|DOMAIN", each name q<i>.DOMAIN; OK counts those sent.
		f := strings.Split(arg, "|")
		var n int
		fmt.Sscan(f[0], &n)
		c, err := net.Dial("udp", f[1])
		if err != nil {
			fail(err)
			break
		}
		for i := 0; i < n; i++ {
			b, _ := new(dns.Msg).SetQuestion(fmt.Sprintf("q%d.%s.", i, f[2]), dns.TypeA).Pack()
			if _, err := c.Write(b); err == nil {
				r.OK++
			}
		}
		c.Close()
	case "dnslatency":
		// 1 000 look-ups of one name: arg is "ADDR|NAME"; P50 and P99 in µs.
		f := strings.Split(arg, "|")
		client := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		m := new(dns.Msg).SetQuestion(dns.Fqdn(f[1]), dns.TypeA)
		var us []float64
		for i := 0; i < 1000; i++ {
			start := time.Now()
			if _, _, err := client.Exchange(m, f[0]); err != nil {
				fail(err)
				break
			}
			us = append(us, float64(time.Since(start).Nanoseconds())/1e3)
		}
		slices.Sort(us)
		if len(us) > 0 {
			r.P50, r.P99 = us[len(us)/2], us[len(us)*99/100]
		}
	case "dnsloop":
		// Look a name up and connect to the address the answer gave, N
		// times: arg is "N|NAME|PORT". OK counts connects that got the
		// target's greeting, Locals the addresses connected to, Err the
		// first failure.
		f := strings.Split(arg, "|")
		var n int
		fmt.Sscan(f[0], &n)
		client := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		for i := 0; i < n; i++ {
			resp, _, err := client.Exchange(new(dns.Msg).SetQuestion(dns.Fqdn(f[1]), dns.TypeA), "192.0.2.99:53")
			if err != nil || len(resp.Answer) == 0 {
				fail(fmt.Errorf("look-up %d: %v %v", i, resp, err))
				break
			}
			dst := net.JoinHostPort(resp.Answer[0].(*dns.A).A.String(), f[2])
			r.Locals = append(r.Locals, dst)
			c, err := net.DialTimeout("tcp", dst, 5*time.Second)
			if err != nil {
				fail(fmt.Errorf("connect %d to %s: %w", i, dst, err))
				break
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if line, _ := bufio.NewReader(c).ReadString('\n'); strings.HasPrefix(line, "hello") {
				r.OK++
			}
			c.Close()
		}
	case "latency":
		// connect() + first byte, repeated; the median in microseconds.
		var us []float64
		for i := 0; i < 2000; i++ {
			start := time.Now()
			c, err := net.DialTimeout("tcp", arg, 5*time.Second)
			if err != nil {
				fail(err)
				break
			}
			var b [1]byte
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(b[:])
			us = append(us, float64(time.Since(start).Nanoseconds())/1e3)
			c.Close()
			if err != nil {
				fail(err)
				break
			}
		}
		slices.Sort(us)
		if len(us) > 0 {
			r.P50 = us[len(us)/2]
		}
	case "udp":
		c, err := net.Dial("udp", arg)
		if err == nil {
			_, err = c.Write([]byte("ping"))
			c.Close()
		}
		if err != nil {
			fail(err)
		}
	case "raw":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			fail(err)
		} else {
			unix.Close(fd)
		}
	case "grpc":
		line, err := grpcClient(arg)
		r.Line = line
		if err != nil {
			fail(err)
		}
	case "pgx", "pgx-gssenc", "pgx-connect":
		line, err := pgxClient(mode, arg)
		r.Line = line
		if err != nil {
			fail(err)
		}
	case "unix":
		c, err := net.Dial("unix", arg)
		if err != nil {
			fail(err)
		} else {
			c.Close()
		}
	case "squat":
		return squat(arg)
	case "h2connect":
		rate, handshake, err := h2Connects(arg)
		r.Rate, r.Handshake = rate, float64(handshake.Microseconds())
		if err != nil {
			fail(err)
		}
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// target is a TCP server that greets every connection and remembers the
// remote address of each, to tell relayed connections from direct ones.
type target struct {
	l       net.Listener
	mu      sync.Mutex
	remotes []string
}

func newTarget(t testing.TB, network, addr string) *target {
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{l: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tg.mu.Lock()
			tg.remotes = append(tg.remotes, c.RemoteAddr().String())
			tg.mu.Unlock()
			go func() {
				defer c.Close()
				io.WriteString(c, "hello from target\n")
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return tg
}

func (tg *target) addr() string { return tg.l.Addr().String() }

func (tg *target) accepted() []string {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return append([]string(nil), tg.remotes...)
}

const testPolicy = `version: 1
identities:
  - name: ci-bot
    intercept:
      - {to: [127.0.0.3/32], ports: "1-65535", action: deny}
  - name: other
deny_unix_paths: [%s]
rules:
  - name: ci-bot-tcp
    identity: ci-bot
    protocol: tcp
    action: allow
  - name: other-tcp
    identity: other
    protocol: tcp
    action: allow
`

// agentBinary copies the test binary where any uid may execute it, so the
// agent can also run as an unprivileged user.
func agentBinary(t testing.TB) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "interlock-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	dst := filepath.Join(dir, "legacy-agent")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

type fixture struct {
	d         *daemontest.Daemon
	agent     string
	deniedSoc string
}

func start(t testing.TB) *fixture { return startConfig(t, "") }

// startConfig is start with interlockd.yaml's content, if not empty.
func startConfig(t testing.TB, config string) *fixture {
	dir := t.TempDir()
	denied := filepath.Join(dir, "denied.sock")
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(testPolicy, denied)), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := daemontest.Options{Policy: pol}
	if config != "" {
		opts.Config = filepath.Join(dir, "interlockd.yaml")
		if err := os.WriteFile(opts.Config, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return &fixture{d: daemontest.Start(t, opts), agent: agentBinary(t), deniedSoc: denied}
}

// tagged returns a new cgroup of the daemon's tagged with identity.
func (f *fixture) tagged(t testing.TB, name, identity string) string {
	t.Helper()
	dir := f.d.Cgroup(name)
	if _, stderr, err := f.d.CLI("tag", dir, "--identity", identity); err != nil {
		t.Fatalf("tag %s: %v %s", name, err, stderr)
	}
	return dir
}

// run runs the agent in mode under `interlock exec --identity id`, with an
// optional prefix (e.g. setpriv to drop privileges), and decodes its report.
func (f *fixture) run(t *testing.T, id, mode, arg string, prefix ...string) report {
	t.Helper()
	argv := append(append([]string{}, prefix...), f.agent, arg)
	cmd := f.d.Command(t.Context(), append([]string{"exec", "--identity", id, "--"}, argv...)...)
	cmd.Env = append(os.Environ(), clientEnv+"="+mode)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("interlock exec %s %s: %v\n%s%s", mode, arg, err, out, stderr)
	}
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("agent report %q: %v", out, err)
	}
	return r
}

// runIn runs the agent directly (no interlock exec) inside cgroup dir.
func (f *fixture) runIn(t testing.TB, dir, mode, arg string) report {
	t.Helper()
	return f.runArgvIn(t, dir, mode, f.agent, arg)
}

// runArgvIn runs argv (the agent, or the agent behind a wrapper such as
// setpriv) inside cgroup dir and decodes the agent's report.
func (f *fixture) runArgvIn(t testing.TB, dir, mode string, argv ...string) report {
	t.Helper()
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.CommandContext(t.Context(), argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), clientEnv+"="+mode)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("agent in %s: %v\n%s", dir, err, out)
	}
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("agent report %q: %v", out, err)
	}
	return r
}

// auditEvents returns the daemon's audit log lines of one event kind.
func auditEvents(d *daemontest.Daemon, event string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(d.Logs(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["event"] == event {
			out = append(out, m)
		}
	}
	return out
}

// listedSession is what the tests read of `interlock sessions --json`.
type listedSession struct {
	ID    string
	Ended time.Time
}

// endedSessions waits until identity has at least n sessions listed and
// the newest n of them have ended, and returns them, newest first. An
// agent's command returns before interlockd records its session's end,
// and an open session's recording cannot be replayed until its first
// flush.
func endedSessions(t *testing.T, d *daemontest.Daemon, identity string, n int) []listedSession {
	t.Helper()
	var sessions []listedSession
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, stderr, err := d.CLI("sessions", "--identity", identity, "--json")
		if err != nil {
			t.Fatalf("sessions: %v %s", err, stderr)
		}
		sessions = nil
		if json.Unmarshal([]byte(out), &sessions) == nil && len(sessions) >= n &&
			!slices.ContainsFunc(sessions[:n], func(s listedSession) bool { return s.Ended.IsZero() }) {
			return sessions
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d ended sessions of %s, got:\n%s", n, identity, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitEvent waits for an audit event matching pred.
func waitEvent(t *testing.T, d *daemontest.Daemon, event string, pred func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, e := range auditEvents(d, event) {
			if pred(e) {
				return e
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event matched; log:\n%s", event, d.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestUntaggedUnaffected(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	r := f.runIn(t, f.d.Cgroup("untagged"), "tcp", tg.addr())
	if r.Err != "" || r.Line != "hello from target" {
		t.Fatalf("untagged agent: %+v", r)
	}
	if got := tg.accepted(); len(got) != 1 || got[0] != r.Local {
		t.Fatalf("target saw %v, want the agent's own address %s (a direct connection)", got, r.Local)
	}
	if ev := auditEvents(f.d, "connection_open"); len(ev) != 0 {
		t.Fatalf("untagged connection went through the proxy: %v", ev)
	}
	// The same with real curl, as a user would check.
	cmd := exec.Command("curl", "-sS", "--max-time", "5", "telnet://"+tg.addr())
	cg, _ := os.Open(f.d.Cgroup("untagged"))
	defer cg.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if out, err := cmd.CombinedOutput(); !strings.Contains(string(out), "hello from target") {
		t.Fatalf("untagged curl: %v %s", err, out)
	}
}

func TestExecIsRedirectedAndIdentified(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	// Unprivileged, as agents usually are: setpriv keeps the pid (it execs).
	r := f.run(t, "ci-bot", "tcp", tg.addr(), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--")
	if r.Err != "" || r.Line != "hello from target" {
		t.Fatalf("agent: %+v\n%s", r, f.d.Logs())
	}
	if r.Peer != tg.addr() {
		t.Errorf("getpeername = %s, want the original peer %s", r.Peer, tg.addr())
	}
	if got := tg.accepted(); len(got) != 1 || got[0] == r.Local {
		t.Errorf("target saw %v; the agent is %s: want one relayed connection", got, r.Local)
	}
	ev := waitEvent(t, f.d, "connection_open", func(m map[string]any) bool { return m["pid"] == float64(r.PID) })
	want := map[string]any{
		"identity": "ci-bot", "uid": float64(65534), "gid": float64(65534), "comm": "legacy-agent",
		"exe": f.agent, "dst": tg.addr(),
	}
	for k, v := range want {
		if ev[k] != v {
			t.Errorf("audit %s = %v, want %v", k, ev[k], v)
		}
	}
	if cg, _ := ev["cgroup"].(string); !strings.HasPrefix(cg, strings.TrimPrefix(f.d.Root, f.d.Mount)+"/interlock-exec/ci-bot-") {
		t.Errorf("audit cgroup = %q, want an exec cgroup under %s", cg, f.d.Root)
	}
	waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
		return m["conn"] == ev["conn"] && m["bytes_received"] == float64(len("hello from target\n"))
	})
}

func TestChildOfTaggedCgroupIsCovered(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	parent := f.d.Cgroup("runner")
	if _, stderr, err := f.d.CLI("tag", parent, "--identity", "ci-bot"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	child := f.d.Cgroup("runner/job-1/step")
	r := f.runIn(t, child, "tcp", tg.addr())
	if r.Err != "" || r.Line != "hello from target" || r.Peer != tg.addr() {
		t.Fatalf("agent in child cgroup: %+v", r)
	}
	waitEvent(t, f.d, "connection_open", func(m map[string]any) bool {
		return m["pid"] == float64(r.PID) && m["identity"] == "ci-bot"
	})
	if out, _, _ := f.d.CLI("status"); !strings.Contains(out, "ci-bot") || !strings.Contains(out, "/runner") {
		t.Errorf("status does not list the tag:\n%s", out)
	}
	// Untag: the same child connects directly again.
	if _, stderr, err := f.d.CLI("untag", parent); err != nil {
		t.Fatalf("untag: %v %s", err, stderr)
	}
	r = f.runIn(t, child, "tcp", tg.addr())
	if got := tg.accepted(); r.Err != "" || got[len(got)-1] != r.Local {
		t.Fatalf("after untag: %+v, target saw %v", r, got)
	}
}

func TestFailClosedAcrossKillAndRestart(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	cg := f.d.Cgroup("agent")
	if _, stderr, err := f.d.CLI("tag", cg, "--identity", "ci-bot"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	f.d.Kill()
	r := f.runIn(t, cg, "tcp", tg.addr())
	if r.Errno != int(syscall.ECONNREFUSED) {
		t.Fatalf("tagged connect with interlockd dead: %+v, want ECONNREFUSED", r)
	}
	if got := tg.accepted(); len(got) != 0 {
		t.Fatalf("target accepted %v with interlockd dead", got)
	}

	// A loop of connects across a restart: some fail while the daemon is
	// down, the rest are relayed, none reaches the target directly.
	done := make(chan report, 1)
	go func() { done <- f.runIn(t, cg, "loop", tg.addr()) }()
	time.Sleep(1500 * time.Millisecond)
	f.d.Restart()
	r = <-done
	if r.OK == 0 {
		t.Fatalf("no connection succeeded after the restart: %+v\n%s", r, f.d.Logs())
	}
	// Every connection the target accepted must be one interlockd relayed.
	// (Comparing addresses would not do: the proxy's upstream socket may
	// get the same ephemeral port as an agent socket.)
	time.Sleep(200 * time.Millisecond)
	relayed := 0
	for _, e := range auditEvents(f.d, "connection_open") {
		if e["dst"] == tg.addr() {
			relayed++
		}
	}
	if got := len(tg.accepted()); got > relayed {
		t.Fatalf("target accepted %d connections, interlockd relayed %d: some went direct", got, relayed)
	}
	t.Logf("%d connects relayed after restart; none direct", r.OK)
}

func TestDenyRuleGivesEPERMAndEvent(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp", "127.0.0.3:0")
	r := f.run(t, "ci-bot", "tcp", tg.addr())
	if r.Errno != int(syscall.EPERM) {
		t.Fatalf("connect to a denied prefix: %+v, want EPERM", r)
	}
	waitEvent(t, f.d, "kernel_deny", func(m map[string]any) bool {
		return m["reason"] == "tcp-rule" && m["dst"] == tg.addr() && m["identity"] == "ci-bot"
	})
	if len(tg.accepted()) != 0 {
		t.Fatal("denied connect reached the target")
	}
}

func TestIPv6AndMapped(t *testing.T) {
	f := start(t)
	tg6 := newTarget(t, "tcp6", "[::1]:0")
	r := f.run(t, "ci-bot", "tcp", tg6.addr())
	if r.Err != "" || r.Line != "hello from target" || r.Peer != tg6.addr() {
		t.Fatalf("IPv6 agent: %+v\n%s", r, f.d.Logs())
	}
	// An IPv4 destination written as IPv4-mapped IPv6 on an AF_INET6 socket.
	tg4 := newTarget(t, "tcp4", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(tg4.addr())
	r = f.run(t, "ci-bot", "tcp", "[::ffff:127.0.0.1]:"+port)
	if r.Err != "" || r.Line != "hello from target" {
		t.Fatalf("v4-mapped agent: %+v\n%s", r, f.d.Logs())
	}
	if got := tg4.accepted(); len(got) != 1 || strings.Contains(r.Local, got[0]) {
		t.Fatalf("v4-mapped: target saw %v, agent %s", got, r.Local)
	}
}

func TestOtherWaysOutAreClosed(t *testing.T) {
	f := start(t)
	// UDP that is neither DNS nor in udp_allow.
	if r := f.run(t, "ci-bot", "udp", "127.0.0.9:9999"); r.Errno != int(syscall.EPERM) {
		t.Errorf("tagged UDP send: %+v, want EPERM", r)
	}
	if r := f.run(t, "ci-bot", "raw", "-"); r.Errno != int(syscall.EPERM) && r.Errno != int(syscall.EACCES) {
		t.Errorf("tagged raw socket: %+v, want EPERM", r)
	}
	l, err := net.Listen("unix", f.deniedSoc)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(f.deniedSoc, 0o777)
	r := f.run(t, "ci-bot", "unix", f.deniedSoc)
	if r.Err == "" {
		t.Errorf("tagged connect to denied unix socket %s succeeded", f.deniedSoc)
	}
	// The audit line names the path, and no address it does not have.
	ev := waitEvent(t, f.d, "kernel_deny", func(m map[string]any) bool { return m["reason"] == "unix-path" })
	if ev["path"] != f.deniedSoc || ev["dst"] != nil {
		t.Errorf("unix deny event %v: want path %s and no dst", ev, f.deniedSoc)
	}
	// Untagged, the same socket works: the denial is the tag's doing.
	if r := f.runIn(t, f.d.Cgroup("untagged"), "unix", f.deniedSoc); r.Err != "" {
		t.Errorf("untagged unix connect: %+v", r)
	}
}

func TestTaggedCallerCannotUntagItself(t *testing.T) {
	f := start(t)
	// The agent runs the CLI against the daemon on its own cgroup: refused,
	// although it runs as root.
	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "sh", "-c",
		fmt.Sprintf(`%s --socket %s untag "$(sed -n 's/^0:://p' /proc/self/cgroup)"`,
			filepath.Join(f.d.Bin, "interlock"), f.d.Socket))
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("tagged untag: err=%v\n%s", err, out)
	}
	// And exec from inside, and uninstall, likewise.
	cmd = f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--",
		filepath.Join(f.d.Bin, "interlock"), "--socket", f.d.Socket, "uninstall")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("tagged uninstall: err=%v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(f.d.BPFFS)); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, f.d, "control_refused", func(m map[string]any) bool { return m["identity"] == "ci-bot" })
}

// TestTaggedCallerMayReapplyItsOwnTag is the restart of a unit whose old
// processes outlived it (KillMode=process): its ExecStartPre runs
// `interlock tag` from the still-tagged cgroup. Re-applying the identity the
// cgroup already has is allowed; any other identity is refused.
func TestTaggedCallerMayReapplyItsOwnTag(t *testing.T) {
	f := start(t)
	tagSelf := func(identity string) (string, error) {
		cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "sh", "-c",
			fmt.Sprintf(`%s --socket %s tag "$(sed -n 's/^0:://p' /proc/self/cgroup)" --identity %s`,
				filepath.Join(f.d.Bin, "interlock"), f.d.Socket, identity))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := tagSelf("ci-bot"); err != nil {
		t.Fatalf("re-applying its own identity: %v\n%s", err, out)
	}
	if out, err := tagSelf("someone-else"); err == nil || !strings.Contains(out, "refused") {
		t.Fatalf("a tagged caller re-tagged itself as another identity: err=%v\n%s", err, out)
	}
	// Nor may it tag a cgroup that is not already held to its identity.
	other := f.d.Cgroup("not-yet-tagged")
	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--",
		filepath.Join(f.d.Bin, "interlock"), "--socket", f.d.Socket, "tag", other, "--identity", "ci-bot")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("a tagged caller tagged another cgroup: err=%v\n%s", err, out)
	}
}

func TestExecPassesExitCodeStdioAndSignals(t *testing.T) {
	f := start(t)
	cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "sh", "-c", "cat; echo err >&2; exit 7")
	cmd.Stdin = strings.NewReader("from stdin\n")
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.ProcessState.ExitCode() != 7 || stdout.String() != "from stdin\n" || stderr.String() != "err\n" {
		t.Fatalf("exit %d (%v), stdout %q, stderr %q", cmd.ProcessState.ExitCode(), err, stdout.String(), stderr.String())
	}
	// A signal sent to interlock reaches the command; its death by signal
	// is reported as 128+signal, as a shell does.
	cmd = f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Signal once the command runs tagged (interlock handles signals by then).
	waitEvent(t, f.d, "exec", func(map[string]any) bool { return len(auditEvents(f.d, "exec")) == 2 })
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != 128+int(syscall.SIGTERM) {
		t.Fatalf("exit after SIGTERM = %d, want %d", got, 128+int(syscall.SIGTERM))
	}
	// The exec cgroups are released once their command exits.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var dirs []string
		entries, _ := os.ReadDir(filepath.Join(f.d.Root, "interlock-exec"))
		for _, e := range entries {
			if e.IsDir() {
				dirs = append(dirs, e.Name())
			}
		}
		if len(dirs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exec cgroups left behind: %v", dirs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestUninstallRemovesEnforcement(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	cg := f.d.Cgroup("agent")
	if _, stderr, err := f.d.CLI("tag", cg, "--identity", "ci-bot"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	if out, stderr, err := f.d.CLI("uninstall"); err != nil {
		t.Fatalf("uninstall: %v %s %s", err, out, stderr)
	}
	entries, _ := os.ReadDir(f.d.BPFFS)
	for _, e := range entries {
		// maps.debug and progs.debug come with every bpffs mount (bpf_preload).
		if !strings.HasSuffix(e.Name(), ".debug") {
			t.Fatalf("pin left after uninstall: %s", e.Name())
		}
	}
	r := f.runIn(t, cg, "tcp", tg.addr())
	if r.Err != "" || tg.accepted()[0] != r.Local {
		t.Fatalf("after uninstall the agent should connect directly: %+v", r)
	}
}

// With interlockd down the pins still enforce; uninstall removes them
// itself, and says so only when it did: a pin directory other than the
// daemon's is reported empty, not uninstalled.
func TestUninstallWithDaemonStopped(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	cg := f.d.Cgroup("agent")
	if _, stderr, err := f.d.CLI("tag", cg, "--identity", "ci-bot"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	f.d.Stop()
	other := t.TempDir()
	out, stderr, err := f.d.CLI("uninstall", "--bpffs", other)
	if err != nil || !strings.Contains(out, "nothing of Interlock's is pinned under "+other) {
		t.Fatalf("uninstall of an empty pin directory: %v\n%s%s", err, out, stderr)
	}
	if r := f.runIn(t, cg, "tcp", tg.addr()); r.Err == "" {
		t.Fatalf("the pins no longer enforce after uninstall of another directory: %+v", r)
	}
	out, stderr, err = f.d.CLI("uninstall", "--bpffs", f.d.BPFFS)
	if err != nil || !strings.Contains(out, "removed the programs pinned under "+f.d.BPFFS) {
		t.Fatalf("uninstall: %v\n%s%s", err, out, stderr)
	}
	if r := f.runIn(t, cg, "tcp", tg.addr()); r.Err != "" {
		t.Fatalf("after uninstall the agent should connect directly: %+v", r)
	}
}

// BenchmarkProxyConnectFirstByte measures what the redirect costs an agent:
// connect() until the first byte of the server's greeting, from a tagged
// cgroup through interlockd's proxy (policy decision, upstream dial, relay),
// from an untagged sibling cgroup directly and through HAProxy in TCP mode
// (a proxy that decides nothing: what any user-space relay costs here), in
// the same run, alternating. Each iteration is 2000 connects per path; the
// figures are medians.
func BenchmarkProxyConnectFirstByte(b *testing.B) {
	f := start(b)
	tg := newTarget(b, "tcp", "127.0.0.1:0")
	tagged := f.d.Cgroup("tagged")
	if _, stderr, err := f.d.CLI("tag", tagged, "--identity", "ci-bot"); err != nil {
		b.Fatalf("tag: %v %s", err, stderr)
	}
	direct := f.d.Cgroup("direct")
	paths := []struct{ name, cgroup, addr string }{
		{"interlock", tagged, tg.addr()}, {"direct", direct, tg.addr()},
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		b.Logf("haproxy not installed: no figures for it")
	} else {
		port, _ := testenv.HAProxyTCP(b, tg.addr())
		paths = append(paths, struct{ name, cgroup, addr string }{"haproxy", direct, fmt.Sprintf("127.0.0.1:%d", port)})
	}
	p50s := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		for _, p := range paths {
			r := f.runIn(b, p.cgroup, "latency", p.addr)
			if r.Err != "" {
				b.Fatalf("latency through %s: %+v", p.name, r)
			}
			p50s[p.name] = append(p50s[p.name], r.P50)
		}
	}
	mid := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	q := mid(p50s["direct"])
	b.ReportMetric(q, "direct-p50-µs")
	for _, p := range paths {
		if p.name != "direct" {
			m := mid(p50s[p.name])
			b.ReportMetric(m, p.name+"-p50-µs")
			b.ReportMetric(m/q, p.name+"-ratio")
		}
	}
}

// TestMonitorKeptAwake: interlockd runs with the Go runtime's monitor kept
// out of its deep sleep (cmd/interlockd's keepMonitorAwake), having
// executed itself again under the same PID: the process the test started
// is the daemon that answers, and relays.
func TestMonitorKeptAwake(t *testing.T) {
	f := start(t)
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", f.d.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(environ), "\x00"), "GODEBUG=schedtrace=2147483647") {
		t.Fatalf("interlockd's environment has no GODEBUG=schedtrace=2147483647: %q", environ)
	}
	tg := newTarget(t, "tcp", "127.0.0.1:0")
	if r := f.runIn(t, f.tagged(t, "agent", "ci-bot"), "tcp", tg.addr()); r.Err != "" {
		t.Fatalf("a connection through interlockd: %+v", r)
	}
	if strings.Contains(f.d.Logs(), "cannot run again") {
		t.Fatalf("interlockd warned:\n%s", f.d.Logs())
	}
}

// TestRemovedCgroupLosesItsTag: a systemd unit gets a fresh cgroup at every
// start; the tags of the removed ones must not pile up in the kernel map.
func TestRemovedCgroupLosesItsTag(t *testing.T) {
	f := start(t)
	cg := f.d.Cgroup("unit-run-1")
	if _, stderr, err := f.d.CLI("tag", cg, "--identity", "ci-bot"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _, _ := f.d.CLI("status", "--json")
		if !strings.Contains(out, "unit-run-1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tag of a removed cgroup still listed:\n%s", out)
		}
		time.Sleep(500 * time.Millisecond)
	}
	waitEvent(t, f.d, "untag", func(m map[string]any) bool { return m["reason"] == "cgroup removed" })
}

// TestFailedListenerStopsInterlockd: a proxy listener that can no longer
// accept (here shut down from outside, so that accept fails with EINVAL)
// stops interlockd with the error, for its service to restart it; tagged
// connects are refused meanwhile. Before, its accept loop ended unseen:
// interlockd went on answering its CLI while connections to that listener
// waited in a queue nobody served.
func TestFailedListenerStopsInterlockd(t *testing.T) {
	f := start(t)
	tg := newTarget(t, "tcp4", "127.0.0.1:0")
	agent := f.tagged(t, "agent", "ci-bot")
	pid := f.d.PID()
	// The proxy's own listener: the data path steers connections for the
	// listen port to it (a SOCKMAP), bound where no one else can bind.
	fd := listenerFD(t, pid, pid, loggedListener(t, f.d, "data path armed"))
	shutDownFD(t, pid, fd)
	for deadline := time.Now().Add(10 * time.Second); unix.Kill(pid, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("interlockd still runs with a listener that cannot accept:\n%s", f.d.Logs())
		}
	}
	for _, line := range []string{"a proxy listener failed; stopping", "stopped on error"} {
		if !strings.Contains(f.d.Logs(), line) {
			t.Errorf("the log lacks %q:\n%s", line, f.d.Logs())
		}
	}
	// Fail closed: the programs stay attached, the connect finds nobody.
	if r := f.runIn(t, agent, "tcp", tg.addr()); r.Errno != int(syscall.ECONNREFUSED) {
		t.Errorf("a connect with interlockd stopped: %+v, want it refused", r)
	}
}

// listenerFD returns the descriptor number of pid's TCP socket listening
// on addr (IPv4) in the network namespace of task nsPID, from /proc.
func listenerFD(t *testing.T, pid, nsPID int, addr netip.AddrPort) int {
	t.Helper()
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", nsPID))
	if err != nil {
		t.Fatal(err)
	}
	a := addr.Addr().As4()
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], addr.Port())
	var inode string
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == local && f[3] == "0A" {
			inode = f[9]
		}
	}
	if inode == "" {
		t.Fatalf("no socket listening on %s in %d's network namespace", addr, pid)
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fds {
		if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); link == "socket:["+inode+"]" {
			var fd int
			fmt.Sscan(e.Name(), &fd)
			return fd
		}
	}
	t.Fatalf("no descriptor of %d holds socket %s", pid, inode)
	return -1
}

// starveDescriptors leaves process pid no descriptor to open until restore
// is called (at cleanup at the latest). The limit bounds descriptor
// numbers: below the lowest free one nothing can be opened, and one let
// go meanwhile frees none unless it was among the first.
func starveDescriptors(t testing.TB, pid int) (restore func()) {
	t.Helper()
	open, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]bool{}
	for _, e := range open {
		held[e.Name()] = true
	}
	free := 0
	for held[strconv.Itoa(free)] {
		free++
	}
	var lim unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(free - 4)
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore = func() {
		if !restored {
			restored = true
			// The process may be gone by cleanup.
			unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil)
		}
	}
	t.Cleanup(restore)
	return restore
}

// scrapeMetrics returns interlockd's metrics, in the Prometheus text
// format, from its endpoint on port.
func scrapeMetrics(t testing.TB, port int) string {
	t.Helper()
	// No keep-alive: a kept connection would count as a descriptor.
	c := http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	return string(b)
}

// loggedListener returns the first proxy listener of the last log line of d
// that holds every one of match.
func loggedListener(t testing.TB, d *daemontest.Daemon, match ...string) netip.AddrPort {
	t.Helper()
	var logged struct {
		Listeners []string `json:"listeners"`
	}
lines:
	for _, line := range strings.Split(d.Logs(), "\n") {
		for _, m := range match {
			if !strings.Contains(line, m) {
				continue lines
			}
		}
		json.Unmarshal([]byte(line), &logged)
	}
	if len(logged.Listeners) == 0 {
		t.Fatalf("no listeners logged with %q:\n%s", match, d.Logs())
	}
	return netip.MustParseAddrPort(logged.Listeners[0])
}

// shutDownFD shuts down pid's socket fd from outside (through a pidfd): a
// listener's accept then fails with EINVAL, as no descriptor shortage
// would make it.
func shutDownFD(t *testing.T, pid, fd int) {
	t.Helper()
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dup)
	if err := unix.Shutdown(dup, unix.SHUT_RDWR); err != nil {
		t.Fatal(err)
	}
}

// unitDenyPolicy denies the connects of ci-bot's tasks in risky.service
// (rules are tried in order); the tag's identity allows the rest.
const unitDenyPolicy = `version: 1
identities:
  - name: ci-bot
  - name: ci-bot-risky
    tag: ci-bot
    unit: [risky.service]
rules:
  - {name: no-risky, identity: ci-bot-risky, protocol: tcp, action: deny}
  - {name: ci-bot-tcp, identity: ci-bot, protocol: tcp, action: allow}
`

// TestUnreadableCallerIsRefused: a caller whose cgroup interlockd cannot
// read (its /proc file refuses to be read; out of descriptors, the read
// fails the same) is refused, not taken for one without a cgroup. Before,
// its path was "" and its unit none: the identity that names its unit to
// deny it did not match, and the tag's own allowed the connection.
func TestUnreadableCallerIsRefused(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(unitDenyPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fixture{d: daemontest.Start(t, daemontest.Options{Policy: pol}), agent: agentBinary(t)}
	tg := newTarget(t, "tcp4", "127.0.0.1:0")
	unprivileged := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", f.agent, tg.addr()}
	// Each connect from a cgroup of its own: a path read once is
	// remembered for its cgroup.
	read, unread := f.tagged(t, "read/risky.service", "ci-bot"), f.tagged(t, "unread/risky.service", "ci-bot")
	if r := f.runArgvIn(t, read, "tcp", unprivileged...); r.Line == "hello from target" {
		t.Fatalf("risky.service's connect with its cgroup read: %+v, want it denied", r)
	}
	if n := len(tg.accepted()); n != 0 {
		t.Fatalf("the target accepted %d connections, want none", n)
	}

	cg, err := os.Open(unread)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	// The agent waits for a line, so that its /proc file is covered
	// before it connects.
	cmd := exec.CommandContext(t.Context(), "sh", append([]string{"-c", `read go; exec "$@"`, "sh"}, unprivileged...)...)
	cmd.Env = append(os.Environ(), clientEnv+"=tcp")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	procCgroup := fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid)
	// Root is refused reading a write-only sysctl: EACCES.
	if b, err := exec.Command("mount", "--bind", "/proc/sys/net/ipv4/route/flush", procCgroup).CombinedOutput(); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("mount over %s: %v\n%s", procCgroup, err, b)
	}
	defer exec.Command("umount", procCgroup).Run()
	stdin.Write([]byte("go\n"))
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent: %v\n%s", err, out.String())
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("agent report %q: %v", out.String(), err)
	}
	if r.Line == "hello from target" || len(tg.accepted()) != 0 {
		t.Fatalf("risky.service's connect with its cgroup unreadable: %+v, target accepted %v; want it refused", r, tg.accepted())
	}
	if !strings.Contains(f.d.Logs(), "refusing unidentified connection") {
		t.Errorf("no line says why the connection was refused:\n%s", f.d.Logs())
	}
}

// TestConnectorGoneIsRefused: a connect whose process exits before
// interlockd reads /proc, leaving the socket to its child, is refused when
// an identity of its tag selects on the unit /proc would have told.
// Before, the caller had no cgroup path: the identity denying risky.service
// did not match, and the tag's own allowed the child's connection.
// interlockd is stopped (SIGSTOP) while the parent connects, forks and
// exits, so that the connect waits in the listen queue until it is gone.
func TestConnectorGoneIsRefused(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(unitDenyPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol})
	f := &fixture{d: d, agent: agentBinary(t)}
	tg := newTarget(t, "tcp4", "127.0.0.1:0")
	dir := f.tagged(t, "gone/risky.service", "ci-bot")
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.CommandContext(t.Context(), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", f.agent, tg.addr())
	cmd.Env = append(os.Environ(), clientEnv+"=orphan")
	cmd.Stdout = w
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := syscall.Kill(d.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(d.PID(), syscall.SIGCONT)
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := cmd.Wait(); err != nil { // the parent, once it has forked
		t.Fatalf("connector: %v", err)
	}
	syscall.Kill(d.PID(), syscall.SIGCONT)
	stopped = false
	out, _ := io.ReadAll(r) // the child's report, once interlockd answered
	var rep report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("the child's report %q: %v", out, err)
	}
	if rep.Line == "hello from target" || len(tg.accepted()) != 0 {
		t.Fatalf("the child of a connector gone: %+v, target accepted %v; want it refused", rep, tg.accepted())
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(d.Logs(), "exited before its executable and cgroup could be read"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no line says why the connection was refused:\n%s", d.Logs())
		}
	}
}
