package datapath

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/bpf"
)

// dial connects from the test process (outside the tagged subtree, like any
// other local process) and returns the first line the server sends.
func dial(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return line, err
}

// freeAddr returns an address on ip whose port was free a moment ago.
func freeAddr(t *testing.T, network, ip string) netip.AddrPort {
	t.Helper()
	ln := tcpListen(t, network, net.JoinHostPort(ip, "0"))
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// A process that binds the proxy address (here with SO_REUSEADDR, Go's
// default for listeners) receives nothing: connections to the proxy address
// go to the socket the daemon served, or are refused while there is none.
func TestProxyAddressSquatted(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	target6 := listen(t, "tcp6", "[::1]:0", "target6", nil)
	e.cfg.Proxy4 = freeAddr(t, "tcp4", "127.0.0.1")
	e.cfg.Proxy6 = freeAddr(t, "tcp6", "::1")
	squat4 := listen(t, "tcp4", e.cfg.Proxy4.String(), "squatter", nil)
	squat6 := listen(t, "tcp6", e.cfg.Proxy6.String(), "squatter", nil)
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 3); err != nil {
		t.Fatal(err)
	}
	squatted := func(t *testing.T) {
		t.Helper()
		if n := squat4.accepts.Load() + squat6.accepts.Load(); n != 0 {
			t.Fatalf("the squatter accepted %d connections", n)
		}
	}

	t.Run("no proxy listening", func(t *testing.T) {
		for _, c := range []struct{ action, dst string }{
			{"tcp", target.addrPort().String()}, {"tcp6", target6.addrPort().String()},
		} {
			if r := run(t, agent, c.action, c.dst); r.Errno != int(syscall.ECONNREFUSED) {
				t.Errorf("tagged %s connect: %+v, want ECONNREFUSED", c.action, r)
			}
		}
		for _, a := range []netip.AddrPort{e.cfg.Proxy4, e.cfg.Proxy6} {
			if _, err := dial("tcp", a.String()); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("untagged connect to the proxy address %s: %v, want ECONNREFUSED", a, err)
			}
		}
		squatted(t)
	})

	// The proxy listens where nobody else can bind (an ephemeral port) and
	// still receives the proxy address.
	proxy4 := newProxy(t, e, "tcp4", "127.0.0.1:0")
	proxy6 := newProxy(t, e, "tcp6", "[::1]:0")
	for _, p := range []*recordingProxy{proxy4, proxy6} {
		if err := dp.ServeListener(p.ln); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("proxy listening elsewhere", func(t *testing.T) {
		for _, c := range []struct {
			action string
			dst    netip.AddrPort
			proxy  *recordingProxy
		}{{"tcp", target.addrPort(), proxy4}, {"tcp6", target6.addrPort(), proxy6}} {
			r := run(t, agent, c.action, c.dst.String())
			if r.Err != "" || r.Data != "proxy" {
				t.Fatalf("tagged %s connect: %+v, want the proxy", c.action, r)
			}
			if r.Peer != c.dst.String() {
				t.Errorf("getpeername = %s, want %s", r.Peer, c.dst)
			}
			// Lookup found the record by the tuple the accepted socket
			// shows: its local address is the proxy address.
			checkOrigin(t, c.proxy.origin(t), r, agentID, 3, c.dst)
		}
		squatted(t)
		if n := target.accepts.Load() + target6.accepts.Load(); n != 0 {
			t.Errorf("the targets were reached directly %d times", n)
		}
	})

	t.Run("other lookups untouched", func(t *testing.T) {
		if line, err := dial("tcp", target.addrPort().String()); err != nil || line != "target\n" {
			t.Errorf("untagged connect to another port: %q, %v", line, err)
		}
		// UDP on the proxy port is not the proxy's.
		u, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(e.cfg.Proxy4))
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(e.cfg.Proxy4))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		u.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 8)
		if n, _, err := u.ReadFromUDP(buf); err != nil || string(buf[:n]) != "ping" {
			t.Errorf("UDP to the proxy port: %q, %v; want it delivered to its own socket", buf[:n], err)
		}
	})

	// The daemon dies: its sockets close and leave the map.
	proxy4.ln.Close()
	proxy6.ln.Close()
	t.Run("proxy gone", func(t *testing.T) {
		if r := run(t, agent, "tcp", target.addrPort().String()); r.Errno != int(syscall.ECONNREFUSED) {
			t.Errorf("tagged connect after the proxy closed: %+v, want ECONNREFUSED", r)
		}
		if _, err := dial("tcp", e.cfg.Proxy6.String()); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connect to the IPv6 proxy address after the proxy closed: %v, want ECONNREFUSED", err)
		}
		squatted(t)
	})
}

// Data paths with different proxy ports share the network namespace (test
// daemons do): each steers its own proxy address and passes the other's.
func TestTwoDataPathsShareNamespace(t *testing.T) {
	var envs [2]*env
	var proxies [2]*recordingProxy
	for i := range envs {
		e := newEnv(t)
		proxies[i] = newProxy(t, e, "tcp4", "127.0.0.1:0")
		e.cfg.Proxy4 = freeAddr(t, "tcp4", "127.0.0.1")
		e.open()
		envs[i] = e
	}
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	for i, e := range envs {
		agent, agentID := e.cgroup("agent")
		if err := e.dp.Tag(agentID, uint32(10+i)); err != nil {
			t.Fatal(err)
		}
		r := run(t, agent, "tcp", target.addrPort().String())
		if r.Err != "" || r.Data != "proxy" {
			t.Fatalf("data path %d: tagged connect %+v, want its proxy", i, r)
		}
		if o := proxies[i].origin(t); o.Identity != uint32(10+i) {
			t.Errorf("data path %d: its proxy got identity %d", i, o.Identity)
		}
		if line, err := dial("tcp", e.cfg.Proxy4.String()); err != nil || line != "proxy-unknown\n" {
			t.Errorf("data path %d: untagged connect to its proxy address: %q, %v", i, line, err)
		}
	}
	if target.accepts.Load() != 0 {
		t.Errorf("the target was reached directly")
	}
}

// skLookup is struct bpf_sk_lookup, the context BPF_PROG_TEST_RUN takes
// and returns for sk_lookup programs; Cookie comes back as the selected
// socket's cookie, 0 for none.
type skLookup struct {
	Cookie         uint64
	Family         uint32
	Protocol       uint32
	RemoteIP4      uint32
	RemoteIP6      [4]uint32
	RemotePort     uint16 // network byte order
	_              uint16
	LocalIP4       uint32
	LocalIP6       [4]uint32
	LocalPort      uint32 // host byte order
	IngressIfindex uint32
	_              uint32
}

// TestProxyLookupVerdicts runs proxy_lookup on lookups near the proxy
// address: only TCP to exactly the proxy address and port is steered (to
// the served socket, or dropped while none is served); everything else
// passes with no socket selected, so the kernel's own lookup proceeds.
func TestProxyLookupVerdicts(t *testing.T) {
	e := newEnv(t)
	// A port nobody uses: the program is attached to the host's namespace
	// while the test runs.
	port := freeAddr(t, "tcp4", "127.0.0.1").Port()
	e.cfg.Proxy4 = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	e.cfg.Proxy6 = netip.AddrPortFrom(netip.IPv6Loopback(), port)
	dp := e.open()
	prog := dp.progs[bpf.InterlockProgProxyLookup]

	const (
		skDrop = 0
		skPass = 1
	)
	type want struct {
		verdict uint32
		socket  int // 0: none, 4: the IPv4 listener, 6: the IPv6 one
	}
	// at is ip at the proxy port plus delta.
	at := func(ip string, delta int) string { return net.JoinHostPort(ip, strconv.Itoa(int(port)+delta)) }
	cases := []struct {
		name     string
		proto    uint32
		dst      string
		served   want // with both listeners served
		unserved want // with none
	}{
		{"ipv4 proxy", unix.IPPROTO_TCP, at("127.0.0.1", 0), want{skPass, 4}, want{skDrop, 0}},
		{"ipv6 proxy", unix.IPPROTO_TCP, at("::1", 0), want{skPass, 6}, want{skDrop, 0}},
		{"ipv4 other port", unix.IPPROTO_TCP, at("127.0.0.1", 1), want{skPass, 0}, want{skPass, 0}},
		{"ipv4 other address", unix.IPPROTO_TCP, at("127.0.0.2", 0), want{skPass, 0}, want{skPass, 0}},
		{"ipv6 other port", unix.IPPROTO_TCP, at("::1", -1), want{skPass, 0}, want{skPass, 0}},
		{"ipv6 other address", unix.IPPROTO_TCP, at("::2", 0), want{skPass, 0}, want{skPass, 0}},
		{"ipv4-mapped in ipv6", unix.IPPROTO_TCP, at("::ffff:127.0.0.1", 0), want{skPass, 0}, want{skPass, 0}},
		{"udp to the proxy address", unix.IPPROTO_UDP, at("127.0.0.1", 0), want{skPass, 0}, want{skPass, 0}},
		{"udp6 to the proxy address", unix.IPPROTO_UDP, at("::1", 0), want{skPass, 0}, want{skPass, 0}},
	}
	lookup := func(t *testing.T, proto uint32, dst string) (uint32, uint64) {
		t.Helper()
		ap := netip.MustParseAddrPort(dst)
		in := skLookup{Protocol: proto, LocalPort: uint32(ap.Port()), RemotePort: 0x3930} // port 12345
		if ap.Addr().Is4() {
			in.Family = unix.AF_INET
			in.LocalIP4 = words(ap.Addr())[3]
			in.RemoteIP4 = in.LocalIP4
		} else {
			in.Family = unix.AF_INET6
			in.LocalIP6 = words(ap.Addr())
			in.RemoteIP6 = in.LocalIP6
		}
		var out skLookup
		verdict, err := prog.Run(&ebpf.RunOptions{Context: in, ContextOut: &out})
		if err != nil {
			t.Fatalf("run proxy_lookup on %s: %v", dst, err)
		}
		return verdict, out.Cookie
	}

	for _, c := range cases {
		t.Run("unserved/"+c.name, func(t *testing.T) {
			if v, cookie := lookup(t, c.proto, c.dst); v != c.unserved.verdict || cookie != 0 {
				t.Errorf("verdict %d socket %d, want verdict %d and no socket", v, cookie, c.unserved.verdict)
			}
		})
	}

	l4 := tcpListen(t, "tcp4", "127.0.0.1:0")
	l6 := tcpListen(t, "tcp6", "[::1]:0")
	cookies := map[int]uint64{}
	for fam, l := range map[int]*net.TCPListener{4: l4, 6: l6} {
		if err := dp.ServeListener(l); err != nil {
			t.Fatal(err)
		}
		raw, _ := l.SyscallConn()
		raw.Control(func(fd uintptr) {
			c, err := unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
			if err != nil {
				t.Fatal(err)
			}
			cookies[fam] = c
		})
	}
	for _, c := range cases {
		t.Run("served/"+c.name, func(t *testing.T) {
			v, cookie := lookup(t, c.proto, c.dst)
			if v != c.served.verdict || cookie != cookies[c.served.socket] {
				t.Errorf("verdict %d socket %d, want verdict %d and socket %d", v, cookie, c.served.verdict, cookies[c.served.socket])
			}
		})
	}
}

// BenchmarkProxyLookup is what proxy_lookup adds to every listener lookup
// in the namespace (every TCP SYN and unconnected UDP datagram on the
// host): a lookup it passes (another port) and one it steers to the served
// listener. The kernel runs the program b.N times in one BPF_PROG_TEST_RUN.
func BenchmarkProxyLookup(b *testing.B) {
	e := newEnv(b)
	port := uint32(testenv.FreePort(b))
	e.cfg.Proxy4 = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port))
	dp := e.open()
	l := tcpListen(b, "tcp4", "127.0.0.1:0")
	if err := dp.ServeListener(l); err != nil {
		b.Fatal(err)
	}
	prog := dp.progs[bpf.InterlockProgProxyLookup]
	loopback := words(netip.MustParseAddr("127.0.0.1"))[3]
	for _, c := range []struct {
		name string
		port uint32
		want uint32
	}{{"pass", port + 1, 1}, {"steer", port, 1}} {
		b.Run(c.name, func(b *testing.B) {
			in := skLookup{Family: unix.AF_INET, Protocol: unix.IPPROTO_TCP, LocalIP4: loopback, RemoteIP4: loopback,
				LocalPort: c.port, RemotePort: 0x3930}
			var out skLookup
			b.ResetTimer()
			v, err := prog.Run(&ebpf.RunOptions{Context: in, ContextOut: &out, Repeat: uint32(b.N)})
			if err != nil || v != c.want {
				b.Fatalf("run: %d, %v", v, err)
			}
		})
	}
}

// helperOpen opens a Datapath with the JSON Config in arg, says "open",
// and holds it until stdin closes: a daemon in another network namespace.
func helperOpen(arg string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(arg), &cfg); err != nil {
		fmt.Println("error", err)
		return 1
	}
	dp, err := Open(cfg)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer dp.Close()
	fmt.Println("open")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// The proxy_lookup link is pinned for the namespace it steers. A daemon
// started in another namespace while that one lives is refused (it would
// leave the first unguarded); once that namespace is gone, so is the link's
// attachment, and the next Open attaches anew in its own.
func TestReadoptAcrossNetworkNamespaces(t *testing.T) {
	e := newEnv(t)
	cfg, err := json.Marshal(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--net", "--", os.Args[0], "-test.run=^$", string(cfg))
	cmd.Env = append(os.Environ(), helperEnv+"=open")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "open\n" {
		t.Fatalf("helper in a new network namespace: %q, %v", line, err)
	}

	if _, err := Open(e.cfg); err == nil || !strings.Contains(err.Error(), "another network namespace") {
		t.Fatalf("Open while the pinned link guards another live namespace: %v, want refused", err)
	}

	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
	// The kernel tears a namespace down asynchronously.
	path := linkPin(e.cfg.PinDir, bpf.InterlockProgProxyLookup)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		if info.NetNs().NetnsInode == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper's namespace still holds the link after 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	proxy := newProxy(t, e, "tcp4", "127.0.0.1:0")
	e.cfg.Proxy4 = freeAddr(t, "tcp4", "127.0.0.1")
	e.open()
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	agent, agentID := e.cgroup("agent")
	if err := e.dp.Tag(agentID, 4); err != nil {
		t.Fatal(err)
	}
	if r := run(t, agent, "tcp", target.addrPort().String()); r.Err != "" || r.Data != "proxy" {
		t.Fatalf("tagged connect after re-attaching: %+v, want the proxy", r)
	}
	proxy.origin(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st unix.Stat_t
	if err := unix.Stat(threadNetns, &st); err != nil {
		t.Fatal(err)
	}
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if info, err := l.Info(); err != nil || uint64(info.NetNs().NetnsInode) != st.Ino {
		t.Errorf("pinned link after re-attaching: %+v, %v; want this namespace %d", info.NetNs(), err, st.Ino)
	}
}

// A data path opened from a thread in another network namespace than the
// process's first thread steers that thread's namespace, where its proxy
// listens. (Test binaries get there when a test that entered a namespace
// ends on the main thread, which Go then keeps wedged in it.)
func TestOpenSteersCallersNamespace(t *testing.T) {
	// Hold this thread, which may be the first, so that the subtest more
	// likely runs on another one and the two namespaces differ.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t.Run("opener off the first thread", func(t *testing.T) {
		e := newEnv(t)
		enterNetns(t)
		var self, first unix.Stat_t
		if err := unix.Stat(threadNetns, &self); err != nil {
			t.Fatal(err)
		}
		if err := unix.Stat("/proc/self/ns/net", &first); err != nil {
			t.Fatal(err)
		}
		if self.Ino == first.Ino {
			// The subtest landed on the first thread itself: the
			// namespaces agree and the test cannot tell them apart.
			t.Logf("the subtest runs on the process's first thread")
		}
		proxy := newProxy(t, e, "tcp4", "127.0.0.1:0")
		e.cfg.Proxy4 = freeAddr(t, "tcp4", "127.0.0.1")
		e.open()
		target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
		agent, agentID := e.cgroup("agent")
		if err := e.dp.Tag(agentID, 5); err != nil {
			t.Fatal(err)
		}
		if r := run(t, agent, "tcp", target.addrPort().String()); r.Err != "" || r.Data != "proxy" {
			t.Fatalf("tagged connect in the opener's namespace: %+v, want the proxy", r)
		}
		proxy.origin(t)
		l, err := link.LoadPinnedLink(linkPin(e.cfg.PinDir, bpf.InterlockProgProxyLookup), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		if info, err := l.Info(); err != nil || uint64(info.NetNs().NetnsInode) != self.Ino {
			t.Errorf("proxy_lookup attached to %+v, %v; want the opener's namespace %d, not the first thread's %d", info.NetNs(), err, self.Ino, first.Ino)
		}
	})
}

// TestMonoToTime: a kernel stamp (CLOCK_MONOTONIC) a second old is a wall
// time a second ago, without a clock_gettime per conversion.
func TestMonoToTime(t *testing.T) {
	var ts unix.Timespec
	// The stamp is taken between two wall readings, so a test descheduled
	// between its steps (a busy machine) is not taken for a wrong
	// conversion; 5 ms of slack either side is the conversion's own.
	before := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	got := monoToTime(uint64(ts.Nano()) - uint64(time.Second))
	if got.Before(before.Add(-time.Second-5*time.Millisecond)) || got.After(after.Add(-time.Second+5*time.Millisecond)) {
		t.Errorf("a stamp a second old converts to %v, want between %v and %v", got, before.Add(-time.Second), after.Add(-time.Second))
	}
	if !monoToTime(0).IsZero() {
		t.Error("no stamp converts to a time")
	}
}
