package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// recordingProxy is a fake interlockd proxy: it looks every accepted
// connection up and sends the origin (or the lookup error) on a channel.
type recordingProxy struct {
	*server
	origins chan Origin
	errs    chan error
}

// newProxy listens on addr; e.open serves the proxy address with it.
func newProxy(t *testing.T, e *env, network, addr string) *recordingProxy {
	p := &recordingProxy{origins: make(chan Origin, 16), errs: make(chan error, 16)}
	p.server = listen(t, network, addr, "proxy", func(c net.Conn) string {
		peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		o, err := e.dp.Lookup(peer, local)
		if err != nil {
			p.errs <- err
			return "proxy-unknown"
		}
		p.origins <- o
		return "proxy"
	})
	e.listeners = append(e.listeners, p.ln)
	return p
}

func (p *recordingProxy) origin(t *testing.T) Origin {
	t.Helper()
	select {
	case o := <-p.origins:
		return o
	case err := <-p.errs:
		t.Fatalf("proxy lookup: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("proxy saw no connection")
	}
	return Origin{}
}

// comm is what the kernel reports as the helper's comm: the test binary's
// name, cut to 15 bytes.
func comm() string {
	c := filepath.Base(os.Args[0])
	if len(c) > 15 {
		c = c[:15]
	}
	return c
}

func checkOrigin(t *testing.T, o Origin, r result, cgroupID uint64, identity uint32, dst netip.AddrPort) {
	t.Helper()
	if o.PID != uint32(r.PID) || o.UID != uint32(r.UID) || o.GID != uint32(os.Getgid()) {
		t.Errorf("origin pid/uid/gid = %d/%d/%d, want %d/%d/%d", o.PID, o.UID, o.GID, r.PID, r.UID, os.Getgid())
	}
	if o.CgroupID != cgroupID || o.Identity != identity {
		t.Errorf("origin cgroup/identity = %d/%d, want %d/%d", o.CgroupID, o.Identity, cgroupID, identity)
	}
	if o.Dst != dst {
		t.Errorf("origin dst = %s, want %s", o.Dst, dst)
	}
	if o.Comm != comm() {
		t.Errorf("origin comm = %q, want %q", o.Comm, comm())
	}
	if o.NetnsCookie == 0 {
		t.Error("origin netns cookie is zero")
	}
	if d := time.Since(o.Time); d < 0 || d > time.Minute {
		t.Errorf("origin time %s is %s off", o.Time, d)
	}
}

func TestRedirectIPv4(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()

	plain, _ := e.cgroup("plain")
	agent, agentID := e.cgroup("agent")
	child, childID := e.cgroup("agent/child")
	if err := dp.Tag(agentID, 7); err != nil {
		t.Fatal(err)
	}

	r := run(t, plain, "tcp", target.addrPort().String())
	if r.Err != "" || r.Data != "target" {
		t.Fatalf("untagged connect: %+v, want it to reach the target", r)
	}
	if target.accepts.Load() != 1 {
		t.Fatalf("target accepts = %d after the untagged connect", target.accepts.Load())
	}

	for _, c := range []struct {
		name string
		dir  string
		id   uint64
	}{{"tagged", agent, agentID}, {"child of tagged", child, childID}} {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, c.dir, "tcp", target.addrPort().String())
			if r.Err != "" || r.Data != "proxy" {
				t.Fatalf("tagged connect: %+v, want it at the proxy", r)
			}
			if r.Peer != target.addrPort().String() {
				t.Errorf("getpeername = %s, want the original peer %s", r.Peer, target.addrPort())
			}
			checkOrigin(t, proxy.origin(t), r, c.id, 7, target.addrPort())
		})
	}
	if n := target.accepts.Load(); n != 1 {
		t.Errorf("target accepts = %d, want 1 (only the untagged connect)", n)
	}
	tags, err := dp.Tagged()
	if err != nil || len(tags) != 1 || tags[agentID] != 7 {
		t.Errorf("Tagged() = %v, %v", tags, err)
	}
	rel := strings.TrimPrefix(child, e.mount)
	if ident, ok, err := dp.TaggedPath(e.mount, rel); err != nil || !ok || ident != 7 {
		t.Errorf("TaggedPath(%s) = %d, %v, %v; want 7, true", rel, ident, ok, err)
	}
	if _, ok, err := dp.TaggedPath(e.mount, strings.TrimPrefix(plain, e.mount)); err != nil || ok {
		t.Errorf("TaggedPath(plain) = %v, %v; want untagged", ok, err)
	}

	// Untagged again, the agent reaches the target directly.
	if err := dp.Untag(agentID); err != nil {
		t.Fatal(err)
	}
	if r := run(t, agent, "tcp", target.addrPort().String()); r.Data != "target" {
		t.Errorf("after untag: %+v, want the target", r)
	}
}

func TestFailClosedWithoutProxy(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	// A port nothing listens on: the daemon is down. Not an ephemeral
	// one: another process could be given it meanwhile (testenv.FreePort).
	e.cfg.Proxy4 = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(testenv.FreePort(t)))
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 1); err != nil {
		t.Fatal(err)
	}
	r := run(t, agent, "tcp", target.addrPort().String())
	if r.Errno != int(syscall.ECONNREFUSED) {
		t.Errorf("tagged connect with no proxy: %+v, want ECONNREFUSED", r)
	}
	if n := target.accepts.Load(); n != 0 {
		t.Errorf("target accepted %d connections, want 0", n)
	}
	// The refused connection's records are gone.
	waitEmpty(t, dp, "conn_origins")
	waitEmpty(t, dp, "sock_origins")
}

func TestOpenRefusesNonBPFFS(t *testing.T) {
	e := newEnv(t)
	e.cfg.PinDir = t.TempDir()
	_, err := Open(e.cfg)
	if err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("Open on a tmpfs pin dir: %v, want a bpffs error", err)
	}
}

func TestUninstallStopsRedirect(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 1); err != nil {
		t.Fatal(err)
	}
	if r := run(t, agent, "tcp", target.addrPort().String()); r.Data != "proxy" {
		t.Fatalf("tagged connect: %+v, want the proxy", r)
	}
	if err := Uninstall(e.cfg.PinDir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(e.cfg.PinDir)
	if len(entries) != 0 {
		t.Errorf("pins left after uninstall: %v", entries)
	}
	// The daemon still holds its link fds: Uninstall must detach anyway.
	if r := run(t, agent, "tcp", target.addrPort().String()); r.Data != "target" {
		t.Errorf("after uninstall: %+v, want the target directly", r)
	}
	if err := dp.Close(); err != nil {
		t.Errorf("close after uninstall: %v", err)
	}
	if err := Uninstall(e.cfg.PinDir); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
}

func TestLookupUnknown(t *testing.T) {
	e := newEnv(t)
	dp := e.open()
	_, err := dp.Lookup(netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2"))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup of an unknown tuple: %v, want ErrNotFound", err)
	}
}

// collectEvents reads deny events into a channel until the Datapath closes.
func collectEvents(t *testing.T, dp *Datapath) <-chan DenyEvent {
	ch := make(chan DenyEvent, 64)
	go func() {
		for {
			ev, err := dp.ReadDenyEvent()
			if err != nil {
				if !errors.Is(err, ErrClosed) {
					t.Errorf("read deny event: %v", err)
				}
				close(ch)
				return
			}
			ch <- ev
		}
	}()
	return ch
}

func nextEvent(t *testing.T, ch <-chan DenyEvent) DenyEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("deny events closed")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no deny event")
	}
	return DenyEvent{}
}

func TestRules(t *testing.T) {
	e := newEnv(t)
	denied := listen(t, "tcp", "127.0.0.1:0", "denied", nil)
	passed := listen(t, "tcp", "127.0.0.2:0", "passed", nil)
	other := listen(t, "tcp", "127.0.0.2:0", "other", nil)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()
	events := collectEvents(t, dp)
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 3); err != nil {
		t.Fatal(err)
	}
	dport := denied.addrPort().Port()
	err := dp.SetRules(3, []Rule{
		{Prefix: netip.MustParsePrefix("127.0.0.1/32"), PortMin: dport, PortMax: dport, Verdict: Deny},
		{Prefix: netip.MustParsePrefix("127.0.0.2/32"), PortMin: passed.addrPort().Port(), PortMax: passed.addrPort().Port(), Verdict: Pass},
		{Prefix: netip.MustParsePrefix("127.0.0.0/8"), PortMin: 1, PortMax: 0, Verdict: Redirect},
	})
	if err != nil {
		t.Fatal(err)
	}

	r := run(t, agent, "tcp", denied.addrPort().String())
	if r.Errno != int(syscall.EPERM) {
		t.Errorf("connect matching a deny rule: %+v, want EPERM", r)
	}
	ev := nextEvent(t, events)
	if ev.Reason != ReasonTCPRule || ev.Dst != denied.addrPort() || ev.PID != uint32(r.PID) ||
		ev.Identity != 3 || ev.CgroupID != agentID || ev.Comm != comm() {
		t.Errorf("deny event = %+v", ev)
	}
	if r := run(t, agent, "tcp", passed.addrPort().String()); r.Data != "passed" {
		t.Errorf("connect matching a pass rule: %+v, want the target directly", r)
	}
	if r := run(t, agent, "tcp", other.addrPort().String()); r.Data != "proxy" {
		t.Errorf("connect matching a redirect rule: %+v, want the proxy", r)
	}
	proxy.origin(t)
	if denied.accepts.Load() != 0 || other.accepts.Load() != 0 {
		t.Errorf("targets reached: denied %d, other %d", denied.accepts.Load(), other.accepts.Load())
	}

	// Bounds are checked.
	if err := dp.SetRules(3, make([]Rule, MaxRules+1)); err == nil {
		t.Error("SetRules accepted more than MaxRules rules")
	}
	if err := dp.SetRules(3, []Rule{{Prefix: netip.MustParsePrefix("::/0"), PortMin: 10, PortMax: 5}}); err == nil {
		t.Error("SetRules accepted an empty port range")
	}
	// Clearing the rules restores redirect-all.
	if err := dp.SetRules(3, nil); err != nil {
		t.Fatal(err)
	}
	if r := run(t, agent, "tcp", passed.addrPort().String()); r.Data != "proxy" {
		t.Errorf("after clearing rules: %+v, want the proxy", r)
	}
	proxy.origin(t)
}

func TestRedirectIPv6(t *testing.T) {
	e := newEnv(t)
	target6 := listen(t, "tcp6", "[::1]:0", "target6", nil)
	target4 := listen(t, "tcp4", "127.0.0.1:0", "target4", nil)
	proxy6 := newProxy(t, e, "tcp6", "[::1]:0")
	proxy4 := newProxy(t, e, "tcp4", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy4.addrPort()
	e.cfg.Proxy6 = proxy6.addrPort()
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 9); err != nil {
		t.Fatal(err)
	}

	t.Run("ipv6", func(t *testing.T) {
		r := run(t, agent, "tcp6", target6.addrPort().String())
		if r.Err != "" || r.Data != "proxy" {
			t.Fatalf("tagged IPv6 connect: %+v, want the IPv6 proxy", r)
		}
		if r.Peer != target6.addrPort().String() {
			t.Errorf("getpeername = %s, want %s", r.Peer, target6.addrPort())
		}
		checkOrigin(t, proxy6.origin(t), r, agentID, 9, target6.addrPort())
	})
	t.Run("ipv4-mapped", func(t *testing.T) {
		// An AF_INET6 socket connecting to ::ffff:127.0.0.1.
		mapped := netip.AddrPortFrom(netip.AddrFrom16(target4.addrPort().Addr().As16()), target4.addrPort().Port())
		r := run(t, agent, "tcp-mapped", mapped.String())
		if r.Err != "" || r.Data != "proxy" {
			t.Fatalf("tagged v4-mapped connect: %+v, want the IPv4 proxy", r)
		}
		if r.Peer != mapped.String() {
			t.Errorf("getpeername = %s, want %s", r.Peer, mapped)
		}
		checkOrigin(t, proxy4.origin(t), r, agentID, 9, target4.addrPort())
	})
	if target6.accepts.Load()+target4.accepts.Load() != 0 {
		t.Error("a tagged connect reached a target directly")
	}
}

func TestSelfCgroupExempt(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort()
	_, agentID := e.cgroup("agent")
	self, selfID := e.cgroup("agent/daemon")
	e.cfg.SelfCgroupID = selfID
	dp := e.open()
	if err := dp.Tag(agentID, 1); err != nil {
		t.Fatal(err)
	}
	if r := run(t, self, "tcp", target.addrPort().String()); r.Data != "target" {
		t.Errorf("connect from the daemon's own cgroup: %+v, want the target directly", r)
	}
	// The cgroup2 root would exempt everyone.
	rootID, err := CgroupID(e.mount)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.cfg
	cfg.SelfCgroupID = rootID
	if _, err := Open(cfg); err == nil {
		t.Error("Open accepted the cgroup2 root as the daemon's own cgroup")
	}
}

func TestOtherWaysOut(t *testing.T) {
	e := newEnv(t)
	resolver, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resolver.Close()
	allowed, err := net.ListenPacket("udp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer allowed.Close()
	resolverAddr := resolver.LocalAddr().(*net.UDPAddr).AddrPort()
	allowedAddr := allowed.LocalAddr().(*net.UDPAddr).AddrPort()
	e.cfg.Resolvers = []netip.AddrPort{resolverAddr}
	dp := e.open()
	events := collectEvents(t, dp)
	agent, agentID := e.cgroup("agent")
	plain, _ := e.cgroup("plain")
	if err := dp.Tag(agentID, 4); err != nil {
		t.Fatal(err)
	}
	other := netip.AddrPortFrom(resolverAddr.Addr(), resolverAddr.Port()+1).String()

	expectDeny := func(t *testing.T, r result, reason DenyReason) {
		t.Helper()
		if r.Errno != int(syscall.EPERM) {
			t.Errorf("got %+v, want EPERM", r)
		}
		if ev := nextEvent(t, events); ev.Reason != reason || ev.PID != uint32(r.PID) || ev.Identity != 4 {
			t.Errorf("deny event = %+v, want %s from pid %d", ev, reason, r.PID)
		}
	}
	t.Run("udp", func(t *testing.T) {
		// DNS goes to interlockd's DNS proxy, of which there is none
		// here: it fails closed, to the resolver too (TestDNSSteered).
		expectDeny(t, run(t, agent, "udp", resolverAddr.String()), ReasonNoProxy)
		expectDeny(t, run(t, agent, "udp6", "[::1]:53"), ReasonNoProxy)
		expectDeny(t, run(t, agent, "udp", other), ReasonUDP)
		expectDeny(t, run(t, agent, "sendto", other), ReasonUDP)
		expectDeny(t, run(t, agent, "uring-sendto", other), ReasonUDP)
		expectDeny(t, run(t, agent, "udp", allowedAddr.String()), ReasonUDP)
		if r := run(t, plain, "udp", other); r.Err != "" {
			t.Errorf("untagged UDP: %+v", r)
		}
		err := dp.SetUDPAllow(4, []Rule{{Prefix: netip.PrefixFrom(allowedAddr.Addr(), 32), PortMin: allowedAddr.Port(), PortMax: allowedAddr.Port()}})
		if err != nil {
			t.Fatal(err)
		}
		if r := run(t, agent, "udp", allowedAddr.String()); r.Err != "" {
			t.Errorf("UDP to an allowed destination: %+v", r)
		}
		if r := run(t, agent, "sendto", allowedAddr.String()); r.Err != "" {
			t.Errorf("unconnected UDP to an allowed destination: %+v", r)
		}
		if r := run(t, agent, "uring-sendto", allowedAddr.String()); r.Err != "" {
			t.Errorf("unconnected UDP through io_uring to an allowed destination: %+v", r)
		}
	})
	t.Run("raw", func(t *testing.T) {
		expectDeny(t, run(t, agent, "raw", "-"), ReasonSocket)
		expectDeny(t, run(t, agent, "uring-raw", "-"), ReasonSocket)
		if gap := packetGap(dp); gap != "" {
			// The kernel cannot refuse packet sockets: say so, and
			// check the gap is reported rather than enforcement.
			t.Logf("known gap: %s", gap)
			if r := run(t, agent, "packet", "-"); r.Err != "" {
				t.Errorf("packet socket with the gap reported: %+v", r)
			}
		} else {
			expectDeny(t, run(t, agent, "packet", "-"), ReasonSocket)
			// AF_VSOCK reaches the hypervisor host; only the allow-list
			// of families refuses it.
			expectDeny(t, run(t, agent, "vsock", "-"), ReasonSocket)
		}
		if r := run(t, plain, "raw", "-"); r.Err != "" {
			t.Errorf("untagged raw socket as root: %+v", r)
		}
	})
	t.Run("unix", func(t *testing.T) {
		dir := t.TempDir()
		deniedPath, okPath := filepath.Join(dir, "denied.sock"), filepath.Join(dir, "ok.sock")
		for _, p := range []string{deniedPath, okPath} {
			ln, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		}
		err := dp.SetDenyUnix([]string{deniedPath})
		if !UnixConnectSupported() {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("SetDenyUnix below 6.7: %v, want ErrUnsupported", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		r := run(t, agent, "unix", deniedPath)
		expectDenyPath := func() {
			if r.Errno != int(syscall.EPERM) {
				t.Errorf("unix connect to a denied path: %+v, want EPERM", r)
			}
			if ev := nextEvent(t, events); ev.Reason != ReasonUnixPath || ev.Path != deniedPath || ev.PID != uint32(r.PID) {
				t.Errorf("deny event = %+v", ev)
			}
		}
		expectDenyPath()
		r = run(t, agent, "uring-unix", deniedPath)
		expectDenyPath()
		if r := run(t, agent, "unix", okPath); r.Err != "" {
			t.Errorf("unix connect to another path: %+v", r)
		}
		if r := run(t, agent, "uring-unix", okPath); r.Err != "" {
			t.Errorf("unix connect through io_uring to another path: %+v", r)
		}
		if r := run(t, plain, "unix", deniedPath); r.Err != "" {
			t.Errorf("untagged unix connect: %+v", r)
		}
		if err := dp.SetDenyUnix(nil); err != nil {
			t.Fatal(err)
		}
		if r := run(t, agent, "unix", deniedPath); r.Err != "" {
			t.Errorf("unix connect after clearing the list: %+v", r)
		}
	})
}

func packetGap(dp *Datapath) string {
	for _, g := range dp.Gaps() {
		if strings.Contains(g, "socket families") {
			return g
		}
	}
	return ""
}

// linkIDs returns the kernel ids of the pinned links and of the programs they
// run, by program name.
func linkIDs(t *testing.T, pinDir string) (links, progs map[string]uint32) {
	t.Helper()
	links, progs = map[string]uint32{}, map[string]uint32{}
	for _, name := range linkNames() {
		l, err := link.LoadPinnedLink(linkPin(pinDir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		links[name], progs[name] = uint32(info.ID), uint32(info.Program)
	}
	return links, progs
}

func TestRestartKeepsEnforcement(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	var dp atomic.Pointer[Datapath]
	lookup := func(c net.Conn) string {
		_, err := dp.Load().Lookup(c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort())
		if err != nil {
			return "proxy-unknown"
		}
		return "proxy"
	}
	proxy1 := listen(t, "tcp", "127.0.0.1:0", "proxy", lookup)
	e.cfg.Proxy4 = proxy1.addrPort()
	dp1, err := Open(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	dp.Store(dp1)
	if err := dp1.ServeListener(proxy1.ln); err != nil {
		t.Fatal(err)
	}
	agent, agentID := e.cgroup("agent")
	if err := dp1.Tag(agentID, 5); err != nil {
		t.Fatal(err)
	}
	links1, progs1 := linkIDs(t, e.cfg.PinDir)

	cmd, done := helperCmd(t, agent, "loop", target.addrPort().String())
	defer done()
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
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 100000)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	counts := map[string]int{}
	// waitFor reads loop lines until want has been seen n more times.
	waitFor := func(want string, n int) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for seen := 0; seen < n; {
			select {
			case l := <-lines:
				counts[l]++
				if l == want {
					seen++
				}
			case <-deadline:
				t.Fatalf("waiting for %q: saw %v", want, counts)
			}
		}
	}
	waitFor("ok proxy", 5)

	// The daemon dies: its listener and file descriptors go.
	proxy1.ln.Close()
	if err := dp1.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(fmt.Sprintf("error %d", syscall.ECONNREFUSED), 5)

	// It comes back and re-adopts the pinned links.
	dp2, err := Open(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp2.Close() })
	dp.Store(dp2)
	// Its new listener is bound elsewhere and still gets the proxy address.
	proxy2 := listen(t, "tcp", "127.0.0.1:0", "proxy", lookup)
	if err := dp2.ServeListener(proxy2.ln); err != nil {
		t.Fatal(err)
	}
	waitFor("ok proxy", 5)

	stdin.Close()
	for l := range lines {
		counts[l]++
	}
	cmd.Wait()
	if n := target.accepts.Load(); n != 0 || counts["ok target"] != 0 {
		t.Errorf("the target was reached directly %d times across the restart (loop: %v)", n, counts)
	}
	if counts["ok proxy-unknown"] != 0 {
		t.Errorf("the proxy could not identify %d connections (loop: %v)", counts["ok proxy-unknown"], counts)
	}
	links2, progs2 := linkIDs(t, e.cfg.PinDir)
	for name, id := range links1 {
		if links2[name] != id {
			t.Errorf("link %s was replaced (%d -> %d), not re-adopted", name, id, links2[name])
		}
		if progs2[name] == progs1[name] {
			t.Errorf("link %s still runs the old program %d", name, progs1[name])
		}
	}
	if tags, err := dp2.Tagged(); err != nil || tags[agentID] != 5 {
		t.Errorf("tags after restart = %v, %v; want the tag kept", tags, err)
	}
	t.Logf("loop across the restart: %v", counts)
}

// TestOtherConnectsRedirected: the other ways to connect a TCP socket are
// redirected as connect(2) is: TCP Fast Open's sendto(MSG_FASTOPEN), and a
// socket made and connected through io_uring, whose requests the kernel
// runs in its own context rather than in a system call of the agent's.
func TestOtherConnectsRedirected(t *testing.T) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_fastopen"); err != nil || (len(b) > 0 && (b[0]-'0')&1 == 0) {
		t.Logf("TCP Fast Open client side is off (%q); sendto(MSG_FASTOPEN) then connects normally", b)
	}
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 2); err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"tfo", "uring"} {
		t.Run(how, func(t *testing.T) {
			r := run(t, agent, how, target.addrPort().String())
			if r.Err != "" || r.Data != "proxy" {
				t.Fatalf("tagged connect: %+v, want the proxy", r)
			}
			if r.Peer != target.addrPort().String() {
				t.Errorf("getpeername = %s, want the original peer %s", r.Peer, target.addrPort())
			}
			checkOrigin(t, proxy.origin(t), r, agentID, 2, target.addrPort())
		})
	}
	if target.accepts.Load() != 0 {
		t.Error("a connect reached the target directly")
	}
}

func TestNoProxyForFamily(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp6", "[::1]:0", "target", nil)
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4 = proxy.addrPort() // no Proxy6
	dp := e.open()
	events := collectEvents(t, dp)
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 2); err != nil {
		t.Fatal(err)
	}
	r := run(t, agent, "tcp6", target.addrPort().String())
	if r.Errno != int(syscall.EPERM) {
		t.Errorf("tagged IPv6 connect with no IPv6 proxy: %+v, want EPERM", r)
	}
	if ev := nextEvent(t, events); ev.Reason != ReasonNoProxy || ev.Dst != target.addrPort() {
		t.Errorf("deny event = %+v, want no-proxy to %s", ev, target.addrPort())
	}
	if target.accepts.Load() != 0 {
		t.Error("the target was reached")
	}
}

func TestMapFill(t *testing.T) {
	e := newEnv(t)
	dp := e.open()
	for i := uint64(1); i <= 3; i++ {
		if err := dp.Tag(1000+i, uint32(i)); err != nil {
			t.Fatal(err)
		}
	}
	fill, err := dp.MapFill()
	if err != nil {
		t.Fatal(err)
	}
	if f := fill["tagged_cgroups"]; f != [2]int{3, 4096} {
		t.Errorf("tagged_cgroups fill = %v, want [3 4096]", f)
	}
	if _, ok := fill["conn_origins"]; !ok {
		t.Errorf("MapFill lacks conn_origins: %v", fill)
	}
}

// A client may close before the proxy gets to accept: the record must
// still be there, or the proxy could not tell who sent the bytes it holds.
func TestLookupAfterAgentClosed(t *testing.T) {
	e := newEnv(t)
	ln := tcpListen(t, "tcp", "127.0.0.1:0")
	defer ln.Close()
	e.cfg.Proxy4 = ln.Addr().(*net.TCPAddr).AddrPort()
	e.listeners = append(e.listeners, ln)
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 6); err != nil {
		t.Fatal(err)
	}
	dst := netip.MustParseAddrPort("192.0.2.1:5432")
	if r := run(t, agent, "hit-and-run", dst.String()); r.Err != "" {
		t.Fatalf("hit-and-run: %+v", r)
	}
	// The helper has exited: its socket is closed.
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o, err := dp.Lookup(c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort())
	if err != nil {
		t.Fatalf("lookup after the agent closed: %v", err)
	}
	if o.Dst != dst || o.Identity != 6 {
		t.Errorf("origin = %+v, want dst %s identity 6", o, dst)
	}
	// Each connection is looked up once.
	if _, err := dp.Lookup(c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort()); !errors.Is(err, ErrNotFound) {
		t.Errorf("second lookup: %v, want ErrNotFound", err)
	}
	// The socket-cookie record goes when the agent's socket reaches
	// TCP_CLOSE, a moment after the process exits.
	waitEmpty(t, dp, "sock_origins")
}

// waitEmpty waits for the map to empty: records go when sockets close,
// which may trail the process that owned them by a moment.
func waitEmpty(t *testing.T, dp *Datapath, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fill, err := dp.MapFill()
		if err != nil {
			t.Fatal(err)
		}
		if fill[name][0] == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still holds %d records after the sockets closed", name, fill[name][0])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
