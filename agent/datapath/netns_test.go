package datapath

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// vethNet is the private /30 the tests give a namespace's veth pair: the
// host end takes .1, the namespace end .2. No other address is used.
const (
	vethHost = "10.213.7.1"
	vethNs   = "10.213.7.2"
)

// testNetns is a network namespace of the test's own (`ip netns add`) with
// a veth pair to the host on the private /30.
type testNetns struct {
	name, path string
}

// newNetns creates the namespace, removed (with its veth) at cleanup. With
// veth false it has only its loopback.
func newNetns(t testing.TB, veth bool) *testNetns {
	t.Helper()
	n := &testNetns{name: randomName("il-")}
	n.path = filepath.Join("/run/netns", n.name)
	ip(t, "netns", "add", n.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	// Up, as a container's is: in a namespace whose lo is down a connect
	// to the proxy address fails (ENETUNREACH) until EnterNetns sets it up.
	ip(t, "-n", n.name, "link", "set", "lo", "up")
	if veth {
		host := "ilh" + n.name[3:11]
		ip(t, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", n.name)
		t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
		ip(t, "addr", "add", vethHost+"/30", "dev", host)
		ip(t, "link", "set", host, "up")
		ip(t, "-n", n.name, "addr", "add", vethNs+"/30", "dev", "eth0")
		ip(t, "-n", n.name, "link", "set", "eth0", "up")
	}
	return n
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v\n%s", args, err, out)
	}
}

// runIn runs one helper action in the cgroup at dir and in namespace n,
// unprivileged (nobody) as agents run.
func (n *testNetns) run(t testing.TB, dir, action, arg string) result {
	t.Helper()
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	defer cg.Close()
	cmd := exec.Command("nsenter", "--net="+n.path, "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", os.Args[0], "-test.run=^$", arg)
	cmd.Env = append(os.Environ(), helperEnv+"="+action)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %s %s in %s: %v\n%s", action, arg, n.name, err, out)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("helper %s output %q: %v", action, out, err)
	}
	return r
}

// serveNetns accepts on the namespace's listeners, identifies each
// connection with LookupIn and greets it with "netns-proxy", sending the
// origin on origins.
func serveNetns(dp *Datapath, n *Netns, origins chan<- Origin, errs chan<- error) {
	for _, l := range n.Listeners {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
				local := c.LocalAddr().(*net.TCPAddr).AddrPort()
				o, err := dp.LookupIn(n.Cookie, peer, local)
				if err != nil {
					errs <- err
					fmt.Fprintln(c, "netns-proxy-unknown")
				} else {
					origins <- o
					fmt.Fprintln(c, "netns-proxy")
				}
				c.Close()
			}
		}()
	}
}

// TestNetnsServed: a tagged task in a namespace of its own, with a veth to
// the host, connects to a host address. Once interlockd serves the
// namespace, the connect reaches
// interlockd's listener inside that namespace, identified by the
// namespace's cookie, with getpeername showing the target (one made before
// is held until then, not refused); a deny rule
// still refuses. With the listeners closed (interlockd dead) the pinned
// link refuses every connect, even to a process in the namespace that binds
// the proxy address; released, the namespace is left as it was.
func TestNetnsServed(t *testing.T) {
	e := newEnv(t)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 7); err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t, true)
	target := listen(t, "tcp", vethHost+":0", "target", nil)
	denied := listen(t, "tcp", vethHost+":0", "denied", nil)
	if err := dp.SetRules(7, []Rule{{Prefix: netip.PrefixFrom(denied.addrPort().Addr(), 32),
		PortMin: denied.addrPort().Port(), PortMax: denied.addrPort().Port(), Verdict: Deny}}); err != nil {
		t.Fatal(err)
	}

	// A connect made before interlockd serves the namespace is held (its
	// SYN dropped until then), not refused: it completes once served.
	cg, err := os.Open(agent)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	early := exec.Command("nsenter", "--net="+ns.path, "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", os.Args[0], "-test.run=^$", target.addrPort().String())
	early.Env = append(os.Environ(), helperEnv+"=tcp")
	early.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	var earlyOut bytes.Buffer
	early.Stdout = &earlyOut
	started := time.Now()
	if err := early.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)

	n, err := dp.EnterNetns(ns.path)
	if err != nil {
		t.Fatalf("enter netns: %v", err)
	}
	origins, errs := make(chan Origin, 4), make(chan error, 4)
	serveNetns(dp, n, origins, errs)
	if n.Cookie == 0 || n.Cookie == dp.netnsCookie {
		t.Fatalf("netns cookie %d, own %d", n.Cookie, dp.netnsCookie)
	}

	if err := early.Wait(); err != nil {
		t.Fatal(err)
	}
	var held result
	if err := json.Unmarshal(earlyOut.Bytes(), &held); err != nil || held.Data != "netns-proxy" {
		t.Fatalf("connect made before the namespace was served: %q, %v; want it held, then at interlockd's listener", earlyOut.String(), err)
	}
	t.Logf("a connect made 300 ms before the namespace was served completed after %s", time.Since(started).Round(time.Millisecond))
	<-origins

	r := ns.run(t, agent, "tcp", target.addrPort().String())
	if r.Err != "" || r.Data != "netns-proxy" {
		t.Fatalf("tagged connect in the served namespace: %+v, want interlockd's listener there", r)
	}
	if r.Peer != target.addrPort().String() {
		t.Errorf("getpeername = %s, want the original peer %s", r.Peer, target.addrPort())
	}
	select {
	case o := <-origins:
		if o.Dst != target.addrPort() || o.Identity != 7 || o.CgroupID != agentID || o.PID != uint32(r.PID) || o.UID != 65534 {
			t.Errorf("origin %+v, want dst %s identity 7 cgroup %d pid %d uid 65534", o, target.addrPort(), agentID, r.PID)
		}
		if o.NetnsCookie != n.Cookie {
			t.Errorf("origin netns cookie %d, want the namespace's %d", o.NetnsCookie, n.Cookie)
		}
	case err := <-errs:
		t.Fatalf("look up in netns: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the namespace's listener saw no connection")
	}
	if r := ns.run(t, agent, "tcp", denied.addrPort().String()); r.Errno != int(syscall.EPERM) {
		t.Errorf("denied target from the namespace: %+v, want EPERM", r)
	}
	if target.accepts.Load() != 0 || denied.accepts.Load() != 0 || proxy.accepts.Load() != 0 {
		t.Errorf("reached directly: target %d, denied %d, host proxy %d", target.accepts.Load(), denied.accepts.Load(), proxy.accepts.Load())
	}

	// interlockd dies: its listeners close, the link stays pinned. A
	// process in the namespace that binds the proxy address gets nothing.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	plain, _ := e.cgroup("plain")
	sq, done := helperCmd(t, plain, "squat", proxy.addrPort().String())
	defer done()
	sq.Args = append([]string{"nsenter", "--net=" + ns.path, "--"}, sq.Args...)
	sq.Path, _ = exec.LookPath("nsenter")
	out, err := sq.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sq.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sq.Process.Kill(); sq.Wait() }()
	squatter := json.NewDecoder(out)
	var bound result
	if err := squatter.Decode(&bound); err != nil || bound.Err != "" {
		t.Fatalf("squatter in the namespace: %+v, %v", bound, err)
	}
	r = ns.run(t, agent, "tcp", target.addrPort().String())
	if r.Errno != int(syscall.ECONNREFUSED) {
		t.Errorf("tagged connect with interlockd gone and the proxy address squatted in the namespace: %+v, want ECONNREFUSED", r)
	}
	var got result
	if err := squatter.Decode(&got); err != nil || got.Peer != "" {
		t.Errorf("the squatter in the namespace accepted: %+v, %v", got, err)
	}

	if err := n.Release(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(e.cfg.PinDir, netnsPinDir)); len(left) != 0 {
		t.Errorf("pins left after release: %v", left)
	}
}

// TestNetnsChurn: 200 namespaces are created, served, connected through
// and released in turn. Nothing may be left behind: listeners (file
// descriptors), pinned links, connection records, goroutines.
func TestNetnsChurn(t *testing.T) {
	e := newEnv(t)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 7); err != nil {
		t.Fatal(err)
	}
	fds := func() int {
		ents, _ := os.ReadDir("/proc/self/fd")
		return len(ents)
	}
	runtime.GC()
	fds0, g0 := fds(), runtime.NumGoroutine()
	const rounds = 200
	decided := 0
	start := time.Now()
	for i := 0; i < rounds; i++ {
		ns := newNetns(t, false)
		n, err := dp.EnterNetns(ns.path)
		if err != nil {
			t.Fatalf("round %d: enter netns: %v", i, err)
		}
		origins, errs := make(chan Origin, 1), make(chan error, 1)
		serveNetns(dp, n, origins, errs)
		// A connect to an address on the namespace's own loopback, which
		// nothing serves but interlockd.
		r := ns.run(t, agent, "tcp", "127.0.0.1:9")
		if r.Data == "netns-proxy" {
			decided++
		} else {
			t.Errorf("round %d: %+v", i, r)
		}
		select {
		case <-origins:
		case err := <-errs:
			t.Errorf("round %d: %v", i, err)
		case <-time.After(5 * time.Second):
			t.Errorf("round %d: no connection", i)
		}
		if err := n.Release(); err != nil {
			t.Fatalf("round %d: release: %v", i, err)
		}
		ip(t, "netns", "del", ns.name)
	}
	elapsed := time.Since(start)
	var g1 int
	for try := 0; try < 50; try++ {
		runtime.GC()
		if g1 = runtime.NumGoroutine(); g1 <= g0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	fds1 := fds()
	if _, err := dp.SweepNetns(nil); err != nil {
		t.Fatal(err)
	}
	served := 0
	var k uint64
	var v uint8
	for it := dp.maps.ServedNetns.Iterate(); it.Next(&k, &v); {
		served++
	}
	pins, _ := os.ReadDir(filepath.Join(e.cfg.PinDir, netnsPinDir))
	records, err := dp.NetnsRecords()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d namespaces in %s (%.1f ms each): %d connections decided; after: fds %d -> %d, goroutines %d -> %d, netns links pinned %d, netns connection records %d, namespaces marked served %d (own)",
		rounds, elapsed.Round(time.Millisecond), float64(elapsed.Milliseconds())/rounds, decided, fds0, fds1, g0, g1, len(pins), records, served)
	if decided != rounds || fds1 > fds0 || g1 > g0 || len(pins) != 0 || records != 0 || served != 1 {
		t.Errorf("leaked or undecided: see the figures above")
	}
}

// helperSquat binds addr with SO_REUSEADDR, as a squatter would (the
// namespace may hold connections in TIME_WAIT on it), prints a first
// result, then a second one: the first connection it accepts within 3 s,
// or the error.
func helperSquat(arg string) int {
	out := json.NewEncoder(os.Stdout)
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
		return err
	}}
	ln, err := lc.Listen(context.Background(), "tcp", arg)
	if err != nil {
		out.Encode(errResult(err))
		return 0
	}
	defer ln.Close()
	out.Encode(result{PID: os.Getpid(), UID: os.Getuid(), Local: ln.Addr().String()})
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(3 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		out.Encode(errResult(err))
		return 0
	}
	c.Close()
	out.Encode(result{PID: os.Getpid(), UID: os.Getuid(), Peer: c.RemoteAddr().String()})
	return 0
}
