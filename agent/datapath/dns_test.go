package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/bpf"
)

// helperDNS sends one datagram as arg says ("sendto,ADDR": unconnected,
// from an IPv4 or IPv6 socket as ADDR is; "connect,ADDR": connected;
// "mapped,ADDR": unconnected from a dual-stack socket to an IPv4 ADDR,
// IPv4-mapped) and reports the reply and who it came from.
func helperDNS(arg string) result {
	mode, addr, _ := strings.Cut(arg, ",")
	dst := netip.MustParseAddrPort(addr)
	var (
		c    *net.UDPConn
		err  error
		r    result
		from netip.AddrPort
		n    int
	)
	buf := make([]byte, 512)
	switch mode {
	case "connect":
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err == nil {
			r.Peer = c.RemoteAddr().String()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err = c.Write([]byte("question")); err == nil {
				n, err = c.Read(buf)
			}
		}
	case "sendto", "mapped":
		network := "udp4"
		if mode == "mapped" {
			network = "udp"
			dst = netip.AddrPortFrom(netip.AddrFrom16(dst.Addr().As16()), dst.Port())
		} else if dst.Addr().Is6() {
			network = "udp6"
		}
		c, err = net.ListenUDP(network, nil)
		if err == nil {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err = c.WriteToUDPAddrPort([]byte("question"), dst); err == nil {
				n, from, err = c.ReadFromUDPAddrPort(buf)
			}
		}
	default:
		return result{Err: "unknown dns mode " + mode}
	}
	if c != nil {
		defer c.Close()
	}
	if err != nil {
		return errResult(err)
	}
	if mode == "connect" {
		// A connected socket takes datagrams from its peer only; the
		// kernel checked that, so name what getpeername says.
		r.Local = c.LocalAddr().String()
	} else {
		r.Peer = netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String()
	}
	r.Data = string(buf[:n])
	return r
}

// dnsProxy is a fake interlockd DNS proxy: it answers every datagram with
// the resolver and identity LookupDNS finds for it (or the error).
type dnsProxy struct {
	conn *net.UDPConn
	seen chan Origin
}

func newDNSProxy(t *testing.T, e *env, network, addr string) *dnsProxy {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	p := &dnsProxy{conn: c, seen: make(chan Origin, 16)}
	e.dnsConns = append(e.dnsConns, c)
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			o, err := e.dp.LookupDNS(from, local)
			reply := fmt.Sprintf("answer for %s identity %d", o.Dst, o.Identity)
			if err != nil {
				reply = "unknown: " + err.Error()
			} else {
				p.seen <- o
			}
			c.WriteToUDPAddrPort([]byte(reply), from)
		}
	}()
	return p
}

func (p *dnsProxy) addrPort() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func (p *dnsProxy) origin(t *testing.T) Origin {
	t.Helper()
	select {
	case o := <-p.seen:
		return o
	case <-time.After(5 * time.Second):
		t.Fatal("the DNS proxy saw no steered datagram")
	}
	return Origin{}
}

// TestDNSSteered: tagged UDP DNS, to port 53 of any address or to a
// configured resolver, connected or not, IPv4, IPv6 or IPv4-mapped, reaches
// interlockd's DNS proxy, which finds who asked and which resolver; the
// reply shows the resolver's address. TCP DNS reaches the proxy whatever
// the rules say. The resolver itself never sees a tagged question, and
// with the DNS proxy down nothing goes out at all.
func TestDNSSteered(t *testing.T) {
	e := newEnv(t)
	resolver, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer resolver.Close()
	resolverAddr := resolver.LocalAddr().(*net.UDPAddr).AddrPort()
	heard := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := resolver.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			heard <- string(buf[:n])
			resolver.WriteToUDPAddrPort([]byte("resolver"), from)
		}
	}()
	dns4 := newDNSProxy(t, e, "udp4", "127.0.0.1:0")
	dns6 := newDNSProxy(t, e, "udp6", "[::1]:0")
	proxy := newProxy(t, e, "tcp", "127.0.0.1:0")
	e.cfg.Proxy4, e.cfg.DNS4, e.cfg.DNS6 = proxy.addrPort(), dns4.addrPort(), dns6.addrPort()
	e.cfg.Resolvers = []netip.AddrPort{resolverAddr}
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	plain, _ := e.cgroup("plain")
	if err := dp.Tag(agentID, 5); err != nil {
		t.Fatal(err)
	}
	// Rules that refuse every TCP connect: DNS does not need one.
	err = dp.SetRules(5, []Rule{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), Verdict: Deny}, {Prefix: netip.MustParsePrefix("::/0"), Verdict: Deny}})
	if err != nil {
		t.Fatal(err)
	}
	// A UDP rule allowing the resolver directly does not either.
	err = dp.SetUDPAllow(5, []Rule{{Prefix: netip.PrefixFrom(resolverAddr.Addr(), 32), PortMin: resolverAddr.Port(), PortMax: resolverAddr.Port()}})
	if err != nil {
		t.Fatal(err)
	}

	if r := run(t, plain, "dns", "sendto,"+resolverAddr.String()); r.Err != "" || r.Data != "resolver" {
		t.Fatalf("untagged question: %+v, want the resolver's answer", r)
	}
	<-heard

	for _, c := range []struct {
		mode, dst string
		proxy     *dnsProxy
	}{
		{"sendto", "192.0.2.1:53", dns4},
		{"sendto", resolverAddr.String(), dns4},
		{"connect", "192.0.2.2:53", dns4},
		{"connect", resolverAddr.String(), dns4},
		{"sendto", "[2001:db8::1]:53", dns6},
		{"connect", "[2001:db8::2]:53", dns6},
		{"mapped", "192.0.2.3:53", dns4},
	} {
		dst := netip.MustParseAddrPort(c.dst)
		r := run(t, agent, "dns", c.mode+","+c.dst)
		want := fmt.Sprintf("answer for %s identity 5", dst)
		if r.Err != "" || r.Data != want {
			t.Errorf("%s %s: %+v, want %q", c.mode, c.dst, r, want)
			continue
		}
		if r.Peer != dst.String() {
			t.Errorf("%s %s: the answer came from %s, want the resolver asked", c.mode, c.dst, r.Peer)
		}
		o := c.proxy.origin(t)
		if o.PID != uint32(r.PID) || o.Identity != 5 || o.Dst != dst || o.Comm != comm() {
			t.Errorf("%s %s: origin %+v, want pid %d identity 5 dst %s", c.mode, c.dst, o, r.PID, dst)
		}
	}

	// TCP DNS goes to the proxy although every TCP rule denies.
	if r := run(t, agent, "tcp", "192.0.2.1:53"); r.Err != "" || r.Data != "proxy" {
		t.Errorf("tagged TCP DNS: %+v, want it at the proxy", r)
	} else if o := proxy.origin(t); o.Dst != netip.MustParseAddrPort("192.0.2.1:53") || o.Identity != 5 {
		t.Errorf("tagged TCP DNS origin %+v", o)
	}

	// With the DNS proxy gone, a question goes nowhere.
	dns4.conn.Close()
	r := run(t, agent, "dns", "sendto,"+resolverAddr.String())
	if r.Err == "" {
		t.Errorf("question with the DNS proxy down: %+v, want no answer", r)
	}
	// A tagged task may not take the DNS proxy's port.
	if r := run(t, agent, "bind", "udp|127.0.0.2:"+fmt.Sprint(dns4.addrPort().Port())); r.Errno != int(syscall.EPERM) {
		t.Errorf("tagged bind of the DNS proxy's port: %+v, want EPERM", r)
	}
	select {
	case q := <-heard:
		t.Errorf("the resolver heard a tagged question %q", q)
	case <-time.After(200 * time.Millisecond):
	}
}

// reusePort binds UDP at addr with SO_REUSEPORT, as a squatter sharing the
// DNS proxy's address would.
func reusePort(t *testing.T, addr string) *net.UDPConn {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return err
	}}
	pc, err := lc.ListenPacket(t.Context(), "udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.(*net.UDPConn)
}

// TestDNSSquatterHearsNothing: a process sharing the DNS proxy's address
// (SO_REUSEPORT), or holding it while interlockd is down, never receives a
// steered question: with no socket served they are dropped, and once one
// is, they all go to it.
func TestDNSSquatterHearsNothing(t *testing.T) {
	e := newEnv(t)
	squatter := reusePort(t, "127.0.0.1:0")
	addr := squatter.LocalAddr().(*net.UDPAddr).AddrPort()
	heard := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := squatter.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			heard <- string(buf[:n])
			squatter.WriteToUDPAddrPort([]byte("squatter"), from)
		}
	}()
	e.cfg.DNS4 = addr
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 3); err != nil {
		t.Fatal(err)
	}
	if r := run(t, agent, "dns", "sendto,192.0.2.1:53"); r.Err == "" {
		t.Errorf("question with no DNS proxy served: %+v, want no answer", r)
	}
	// interlockd comes up on the same address.
	proxy := &dnsProxy{conn: reusePort(t, addr.String()), seen: make(chan Origin, 16)}
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := proxy.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			proxy.conn.WriteToUDPAddrPort([]byte("proxy"), from)
		}
	}()
	if err := dp.ServeDNS(proxy.conn); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if r := run(t, agent, "dns", "sendto,192.0.2.1:53"); r.Err != "" || r.Data != "proxy" {
			t.Errorf("question %d: %+v, want the proxy's answer", i, r)
		}
	}
	select {
	case q := <-heard:
		t.Errorf("the squatter heard %q", q)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestOpenReplacesOlderConfig: pins left by a build whose settings were
// laid out otherwise (before the DNS proxy addresses) do not keep Open
// from arming the data path.
func TestOpenReplacesOlderConfig(t *testing.T) {
	e := newEnv(t)
	if err := os.MkdirAll(e.cfg.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 208, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(e.cfg.PinDir, bpf.InterlockMapConfigMap)); err != nil {
		t.Fatal(err)
	}
	e.cfg.DNS4 = netip.MustParseAddrPort("127.0.0.1:15053")
	dp := e.open()
	var c bpf.InterlockConfig
	if err := dp.maps.ConfigMap.Lookup(uint32(0), &c); err != nil || c.Dns4Port != 15053 {
		t.Errorf("config after Open: %+v, %v", c, err)
	}
}
