package datapath

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// nobody is the unprivileged user the agents of these tests run as.
const nobody = 65534

// errnoOf returns the errno behind err, or 0.
func errnoOf(err error) int {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return int(errno)
	}
	return 0
}

// helperSourceRoute tries to send to DST by way of CANARY with a source
// route: arg is MODE|CANARY|DST. rthdr-udp and rthdr-tcp set a type-4
// segment list with setsockopt(IPV6_RTHDR); lsrr-tcp sets an IPv4 loose
// source route with setsockopt(IP_OPTIONS); lsrr-cmsg sends a UDP datagram
// with the source route in an IP_RETOPTS control message, which no
// setsockopt hook sees.
func helperSourceRoute(arg string) result {
	parts := strings.Split(arg, "|")
	mode, canary := parts[0], netip.MustParseAddr(parts[1])
	family, sa := sockaddr(parts[2])
	r := result{PID: os.Getpid(), UID: os.Getuid()}
	typ := unix.SOCK_DGRAM
	if strings.HasSuffix(mode, "-tcp") {
		typ = unix.SOCK_STREAM | unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	defer unix.Close(fd)
	// The LSRR option: NOP for alignment, type, length, pointer, the hop.
	var lsrr []byte
	if canary.Is4() {
		c4 := canary.As4()
		lsrr = []byte{1, 0x83, 7, 4, c4[0], c4[1], c4[2], c4[3]}
	}
	switch mode {
	case "rthdr-udp", "rthdr-tcp":
		// nexthdr, hdrlen, type 4, segments_left 0, first_segment 0,
		// flags, tag, then the one segment: the packet goes to it.
		c16 := canary.As16()
		srh := append([]byte{0, 2, 4, 0, 0, 0, 0, 0}, c16[:]...)
		r.SetupErrno = errnoOf(unix.SetsockoptString(fd, unix.IPPROTO_IPV6, unix.IPV6_RTHDR, string(srh)))
	case "lsrr-tcp":
		r.SetupErrno = errnoOf(unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, string(lsrr)))
	}
	switch mode {
	case "rthdr-udp":
		err = unix.Sendto(fd, []byte("canary-data"), 0, sa)
	case "lsrr-cmsg":
		oob := make([]byte, unix.CmsgSpace(len(lsrr)))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_RETOPTS
		h.SetLen(unix.CmsgLen(len(lsrr)))
		copy(oob[unix.CmsgLen(0):], lsrr)
		_, err = unix.SendmsgN(fd, []byte("canary-data"), oob, sa, 0)
	default:
		// A SYN sent the wrong way is never answered: give it time to
		// leave, then give up.
		err = unix.Connect(fd, sa)
		if errors.Is(err, unix.EINPROGRESS) {
			err = nil
			time.Sleep(300 * time.Millisecond)
		}
	}
	if err != nil {
		r.Err, r.Errno = err.Error(), errnoOf(err)
	}
	return r
}

// sockaddr parses an address for a raw socket call.
func sockaddr(addr string) (family int, sa unix.Sockaddr) {
	ap := netip.MustParseAddrPort(addr)
	if ap.Addr().Is4() {
		return unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return unix.AF_INET6, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// helperBind binds a socket: arg is NETWORK|ADDR with NETWORK tcp or udp.
// Raw calls: the net package would try MPTCP first, which sock_create
// refuses tagged tasks (a deny event of its own).
func helperBind(arg string) result {
	network, addr, _ := strings.Cut(arg, "|")
	family, sa := sockaddr(addr)
	typ := unix.SOCK_STREAM
	if network == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sa); err != nil {
		return errResult(err)
	}
	return result{PID: os.Getpid(), UID: os.Getuid()}
}

// helperListen listens on ADDR (arg), or, when arg is "-", calls listen()
// on a socket it never bound, prints its address as a first result line,
// then accepts one connection, reads a line and prints it in a second.
func helperListen(arg string) int {
	out := json.NewEncoder(os.Stdout)
	family := unix.AF_INET
	var sa unix.Sockaddr
	if arg != "-" {
		family, sa = sockaddr(arg)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err == nil && sa != nil {
		err = unix.Bind(fd, sa)
	}
	if err == nil {
		err = unix.Listen(fd, 8)
	}
	if err != nil {
		out.Encode(errResult(err))
		return 0
	}
	f := os.NewFile(uintptr(fd), "listener")
	ln, err := net.FileListener(f)
	f.Close()
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
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	out.Encode(result{PID: os.Getpid(), UID: os.Getuid(), Peer: c.RemoteAddr().String(), Data: strings.TrimSpace(line)})
	return 0
}

// helperUDPRecv binds a UDP socket to the wildcard, port 0, prints its
// port as a first result line, then the first datagram it receives within
// a second in a second line.
func helperUDPRecv(string) int {
	out := json.NewEncoder(os.Stdout)
	pc, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		out.Encode(errResult(err))
		return 0
	}
	defer pc.Close()
	out.Encode(result{PID: os.Getpid(), UID: os.Getuid(), Local: pc.LocalAddr().String()})
	pc.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 64)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		out.Encode(errResult(err))
		return 0
	}
	out.Encode(result{PID: os.Getpid(), UID: os.Getuid(), Peer: from.String(), Data: string(buf[:n])})
	return 0
}

// helperBigSockopt sets SO_BINDTODEVICE with an 8 KiB value: the kernel
// reads 15 bytes of it and finds no such device.
func helperBigSockopt(string) result {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, strings.Repeat("x", 8192)); err != nil {
		return errResult(err)
	}
	return result{PID: os.Getpid(), UID: os.Getuid()}
}

// helperUnixFull connects to a path that fills all 108 bytes of sun_path,
// with no NUL: the kernel accepts it, the net package would not.
func helperUnixFull(arg string) result {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	defer unix.Close(fd)
	sa := unix.RawSockaddrUnix{Family: unix.AF_UNIX}
	if len(arg) != len(sa.Path) {
		return result{Err: fmt.Sprintf("path of %d bytes, want %d", len(arg), len(sa.Path))}
	}
	for i := range sa.Path {
		sa.Path[i] = int8(arg[i])
	}
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if errno != 0 {
		return errResult(errno)
	}
	return result{PID: os.Getpid(), UID: os.Getuid()}
}

// helperUnixgram sends one datagram from an unbound unix datagram socket
// to the path in arg with sendto(), no connect().
func helperUnixgram(arg string) result {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, []byte("canary-data"), 0, &unix.SockaddrUnix{Name: arg}); err != nil {
		return errResult(err)
	}
	return result{PID: os.Getpid(), UID: os.Getuid()}
}

// agentBinary returns a copy of the test binary that the unprivileged user
// may run (the go test build directory is root's alone).
func agentBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "interlock-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, filepath.Base(os.Args[0]))
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// agentCmd builds a helper child running as nobody in the cgroup at dir.
func agentCmd(t *testing.T, bin, dir, action, arg string) *exec.Cmd {
	return agentCmdAs(t, nobody, bin, dir, action, arg)
}

// agentCmdAs builds a helper child running as uid in the cgroup at dir.
func agentCmdAs(t *testing.T, uid uint32, bin, dir, action, arg string) *exec.Cmd {
	t.Helper()
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	t.Cleanup(func() { cg.Close() })
	cmd := exec.Command(bin, "-test.run=^$", arg)
	cmd.Env = append(os.Environ(), helperEnv+"="+action)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true, CgroupFD: int(cg.Fd()),
		Credential: &syscall.Credential{Uid: uid, Gid: uid},
	}
	return cmd
}

// runAgent runs one helper action as nobody in the cgroup at dir.
func runAgent(t *testing.T, bin, dir, action, arg string) result {
	t.Helper()
	return runAgentAs(t, nobody, bin, dir, action, arg)
}

// runAgentAs runs one helper action as uid in the cgroup at dir.
func runAgentAs(t *testing.T, uid uint32, bin, dir, action, arg string) result {
	t.Helper()
	out, err := agentCmdAs(t, uid, bin, dir, action, arg).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("agent %s %s: %v\n%s%s", action, arg, err, out, stderr)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("agent %s output %q: %v", action, out, err)
	}
	return r
}

// enterNetns moves the test goroutine into a network namespace of its own
// with lo up and addrs (CIDRs) on it. The goroutine stays locked to its
// thread, so the thread, namespaced, ends with the test instead of going
// back to the runtime; children started from it (ip, the agents) start in
// the namespace too.
func enterNetns(t *testing.T, addrs ...string) {
	t.Helper()
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare netns: %v", err)
	}
	cmds := [][]string{{"link", "set", "lo", "up"}}
	for _, a := range addrs {
		cmds = append(cmds, []string{"addr", "add", a, "dev", "lo"})
	}
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	// IPv6 addresses go through duplicate address detection first.
	time.Sleep(50 * time.Millisecond)
}

// canary counts every packet on lo addressed to addr: what a host there
// would see on the wire, whether or not its stack accepts the packet.
type canary struct {
	addr netip.Addr
	hits atomic.Int64
}

func watchCanary(t *testing.T, addr netip.Addr) *canary {
	t.Helper()
	// The protocol of a packet socket is in network byte order.
	var be [2]byte
	binary.BigEndian.PutUint16(be[:], unix.ETH_P_ALL)
	proto := int(binary.NativeEndian.Uint16(be[:]))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: lo.Index}); err != nil {
		t.Fatalf("bind packet socket: %v", err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100000})
	c := &canary{addr: addr}
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for !stop.Load() {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 14 {
				continue
			}
			c.see(buf[:n])
		}
	}()
	t.Cleanup(func() { stop.Store(true); <-done; unix.Close(fd) })
	return c
}

// see counts an Ethernet frame whose IP destination is the canary's.
func (c *canary) see(frame []byte) {
	pkt := frame[14:]
	var dst netip.Addr
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case unix.ETH_P_IP:
		if len(pkt) >= 20 {
			dst = netip.AddrFrom4([4]byte(pkt[16:20]))
		}
	case unix.ETH_P_IPV6:
		if len(pkt) >= 40 {
			dst = netip.AddrFrom16([16]byte(pkt[24:40]))
		}
	}
	if dst == c.addr {
		c.hits.Add(1)
	}
}

// settle waits for packets in flight to reach the canary's reader.
func (c *canary) settle() int64 {
	time.Sleep(300 * time.Millisecond)
	return c.hits.Load()
}

// TestSourceRoutesRefused: a type-4 IPv6 segment list or an IPv4 loose
// source route sends a redirected TCP connect, or a UDP datagram to an
// allowed destination, to another address than the one the hooks checked. The
// untagged control proves the routes work on this kernel (the canary sees
// the packets); tagged, the options are refused and nothing reaches it.
func TestSourceRoutesRefused(t *testing.T) {
	e := newEnv(t)
	enterNetns(t, "fd00::99/128")
	canary6, canary4 := netip.MustParseAddr("fd00::99"), netip.MustParseAddr("127.0.0.99")
	resolver6, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resolver6.Close()
	resolver4, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer resolver4.Close()
	r6 := resolver6.LocalAddr().(*net.UDPAddr).AddrPort()
	r4 := resolver4.LocalAddr().(*net.UDPAddr).AddrPort()
	proxy6 := listen(t, "tcp6", "[::1]:0", "proxy", nil)
	proxy4 := listen(t, "tcp4", "127.0.0.1:0", "proxy", nil)
	e.cfg.Proxy6, e.cfg.Proxy4 = proxy6.addrPort(), proxy4.addrPort()
	dp := e.open()
	events := collectEvents(t, dp)
	agent, agentID := e.cgroup("agent")
	plain, _ := e.cgroup("plain")
	if err := dp.Tag(agentID, 12); err != nil {
		t.Fatal(err)
	}
	err = dp.SetUDPAllow(12, []Rule{
		{Prefix: netip.PrefixFrom(r6.Addr(), 128), PortMin: r6.Port(), PortMax: r6.Port()},
		{Prefix: netip.PrefixFrom(r4.Addr(), 32), PortMin: r4.Port(), PortMax: r4.Port()},
	})
	if err != nil {
		t.Fatal(err)
	}
	bin := agentBinary(t)
	sockoptFiltered := dp.progs["set_sockopt"] != nil

	// IPv4 source routes need CAP_NET_RAW on recent kernels (IPv6
	// segment lists do not): those cases run as root, an agent that kept
	// the capability.
	for _, c := range []struct {
		mode   string
		uid    uint32
		canary netip.Addr
		dst    string
		level  int
		opt    int
	}{
		{"rthdr-udp", nobody, canary6, r6.String(), unix.IPPROTO_IPV6, unix.IPV6_RTHDR},
		{"rthdr-tcp", nobody, canary6, "[2001:db8::1]:5432", unix.IPPROTO_IPV6, unix.IPV6_RTHDR},
		{"lsrr-tcp", 0, canary4, "192.0.2.1:5432", unix.IPPROTO_IP, unix.IP_OPTIONS},
		{"lsrr-cmsg", 0, canary4, r4.String(), 0, 0},
	} {
		// No subtests: they would run on other threads, outside the
		// namespace.
		arg := c.mode + "|" + c.canary.String() + "|" + c.dst
		watch := watchCanary(t, c.canary)
		if r := runAgentAs(t, c.uid, bin, plain, "srcroute", arg); r.SetupErrno != 0 || r.Errno != 0 {
			t.Fatalf("%s: untagged control: %+v", c.mode, r)
		}
		if n := watch.settle(); n == 0 {
			t.Fatalf("%s: untagged control: the canary saw nothing; the source route did not work here", c.mode)
		}
		watch.hits.Store(0)

		r := runAgentAs(t, c.uid, bin, agent, "srcroute", arg)
		if n := watch.settle(); n != 0 {
			t.Errorf("%s: tagged: the canary %s saw %d packets (%+v)", c.mode, c.canary, n, r)
		}
		switch {
		case c.opt != 0 && sockoptFiltered:
			if r.SetupErrno != int(syscall.EPERM) {
				t.Errorf("%s: tagged setsockopt: %+v, want EPERM", c.mode, r)
			}
			ev := nextEvent(t, events)
			if ev.Reason != ReasonSockopt || ev.Detail != uint32(c.level<<16|c.opt) || ev.PID != uint32(r.PID) || ev.UID != c.uid {
				t.Errorf("%s: deny event = %+v, want sockopt %d/%d from pid %d", c.mode, ev, c.level, c.opt, r.PID)
			}
			if c.mode == "rthdr-udp" && r.Err != "" {
				t.Errorf("%s: the datagram without the route: %+v, want it sent", c.mode, r)
			}
		case c.opt != 0:
			t.Logf("%s: known gap on this kernel: setsockopt is not filtered; the packets are dropped instead (%+v)", c.mode, r)
		default:
			if r.Errno != int(syscall.EPERM) {
				t.Errorf("%s: tagged sendmsg with a source route: %+v, want EPERM", c.mode, r)
			}
			if ev := nextEvent(t, events); ev.Reason != ReasonSourceRoute || ev.Identity != 12 {
				t.Errorf("%s: deny event = %+v, want source-route", c.mode, ev)
			}
		}
	}
}

// TestLargeSockoptPasses: the setsockopt program sees every call on the
// host; one whose value is over a page must still reach the kernel's own
// handler (before 6.5, unless the program says so, it failed with EFAULT).
func TestLargeSockoptPasses(t *testing.T) {
	e := newEnv(t)
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	plain, _ := e.cgroup("plain")
	if err := dp.Tag(agentID, 15); err != nil {
		t.Fatal(err)
	}
	bin := agentBinary(t)
	for _, dir := range []string{plain, agent} {
		if r := runAgent(t, bin, dir, "bigsockopt", "-"); r.Errno != int(syscall.ENODEV) {
			t.Errorf("setsockopt with 8 KiB in %s: %+v, want the kernel's own ENODEV", filepath.Base(dir), r)
		}
	}
}

// TestBindRefused: tagged tasks bind loopback (or port 0) only unless a
// listen rule allows more; a listener that got around bind() (listen() on
// an unbound socket, or on port 0) gets no SYN from another host; an
// allowed listener's accepted connections are audited.
func TestBindRefused(t *testing.T) {
	e := newEnv(t)
	enterNetns(t, "10.99.0.1/32", "fd00::1/128")
	// No proxy listens here; its port is what matters.
	e.cfg.Proxy4 = netip.MustParseAddrPort("127.0.0.1:18099")
	e.cfg.Proxy6 = netip.MustParseAddrPort("[::1]:18099")
	dp := e.open()
	events := collectEvents(t, dp)
	agent, agentID := e.cgroup("agent")
	plain, _ := e.cgroup("plain")
	if err := dp.Tag(agentID, 13); err != nil {
		t.Fatal(err)
	}
	bin := agentBinary(t)
	expectDeny := func(t *testing.T, arg string) {
		t.Helper()
		r := runAgent(t, bin, agent, "bind", arg)
		if r.Errno != int(syscall.EPERM) {
			t.Errorf("tagged bind %s: %+v, want EPERM", arg, r)
			return
		}
		if ev := nextEvent(t, events); ev.Reason != ReasonBind || ev.PID != uint32(r.PID) || ev.Identity != 13 {
			t.Errorf("deny event = %+v, want bind from pid %d", ev, r.PID)
		}
	}
	// No subtests: they would run on other threads, outside the namespace.
	{
		for _, arg := range []string{"tcp|0.0.0.0:18080", "tcp|[::]:18080", "tcp|10.99.0.1:18080", "tcp|[fd00::1]:18080",
			"udp|0.0.0.0:18080", "udp|[::]:18080",
			// The proxy's port, where other identities' connects go.
			"tcp|127.0.0.1:18099", "tcp|[::1]:18099", "udp|127.0.0.1:18099"} {
			expectDeny(t, arg)
			if r := runAgent(t, bin, plain, "bind", arg); r.Err != "" {
				t.Errorf("untagged bind %s: %+v", arg, r)
			}
		}
		// Port 0 is what connect() and sendto() bind anyway; a listener
		// bound so hears no other host (below).
		for _, arg := range []string{"tcp|127.0.0.1:18080", "tcp|127.0.0.2:0", "tcp|[::1]:18080", "udp|127.0.0.1:18080",
			"udp|0.0.0.0:0", "tcp|0.0.0.0:0", "tcp|10.99.0.1:0", "udp|[fd00::1]:0"} {
			if r := runAgent(t, bin, agent, "bind", arg); r.Err != "" {
				t.Errorf("tagged bind %s: %+v, want it allowed", arg, r)
			}
		}
		// A client's connect() binds implicitly, without the bind hooks.
		target := listen(t, "tcp", "10.99.0.1:0", "target", nil)
		if err := dp.SetRules(13, []Rule{{Prefix: netip.MustParsePrefix("10.99.0.1/32"), Verdict: Pass}}); err != nil {
			t.Fatal(err)
		}
		if r := runAgent(t, bin, agent, "tcp", target.addrPort().String()); r.Data != "target" {
			t.Errorf("tagged connect: %+v, want the target", r)
		}
	}

	// listenAndDial starts a tagged listener (ADDR or "-"), dials it from
	// 10.99.0.1 and returns the listener's second report line.
	listenAndDial := func(t *testing.T, addr string) (result, error) {
		t.Helper()
		cmd := agentCmd(t, bin, agent, "listen", addr)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		dec := json.NewDecoder(stdout)
		var first, second result
		if err := dec.Decode(&first); err != nil || first.Err != "" {
			t.Fatalf("listener: %+v, %v", first, err)
		}
		port := netip.MustParseAddrPort(first.Local).Port()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.99.0.1")}, Timeout: time.Second}
		c, dialErr := d.Dial("tcp", fmt.Sprintf("10.99.0.1:%d", port))
		if dialErr == nil {
			fmt.Fprintln(c, "hello")
			defer c.Close()
		}
		if err := dec.Decode(&second); err != nil {
			t.Fatalf("listener's second line: %v", err)
		}
		return second, dialErr
	}
	for _, addr := range []string{"-", "0.0.0.0:0"} {
		r, err := listenAndDial(t, addr)
		if err == nil || r.Data == "hello" {
			t.Errorf("a SYN from 10.99.0.1 reached a tagged listener on %s: dial %v, listener %+v", addr, err, r)
		}
		if ev := nextEvent(t, events); ev.Reason != ReasonBind || ev.Dst.Addr() != netip.MustParseAddr("10.99.0.1") {
			t.Errorf("deny event = %+v, want bind from 10.99.0.1", ev)
		}
		// Retransmitted SYNs are dropped (and reported) too.
		for quiet := false; !quiet; {
			select {
			case ev := <-events:
				if ev.Reason != ReasonBind {
					t.Errorf("deny event = %+v, want bind", ev)
				}
			case <-time.After(300 * time.Millisecond):
				quiet = true
			}
		}
	}
	{
		err := dp.SetListen(13, []Rule{{Prefix: netip.MustParsePrefix("0.0.0.0/32"), PortMin: 18081, PortMax: 18081}})
		if err != nil {
			t.Fatal(err)
		}
		if r := runAgent(t, bin, agent, "bind", "tcp|0.0.0.0:18082"); r.Errno != int(syscall.EPERM) {
			t.Errorf("bind to a port the rule does not name: %+v, want EPERM", r)
		}
		nextEvent(t, events)
		r, err := listenAndDial(t, "0.0.0.0:18081")
		if err != nil || r.Data != "hello" {
			t.Fatalf("allowed listener: dial %v, listener %+v", err, r)
		}
		ev := nextEvent(t, events)
		if ev.Reason != ReasonAccepted || ev.Identity != 13 || ev.Dst.String() != r.Peer {
			t.Errorf("accept event = %+v, want accepted from %s", ev, r.Peer)
		}
		if err := dp.SetListen(13, nil); err != nil {
			t.Fatal(err)
		}
		expectDeny(t, "tcp|0.0.0.0:18081")
	}
	// UDP: a wildcard socket (bound to port 0, or autobound by a sendto)
	// hears from other hosts only those it may send to.
	{
		sender, err := net.ListenPacket("udp4", "10.99.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer sender.Close()
		from := sender.LocalAddr().(*net.UDPAddr).AddrPort()
		receive := func(dir string, count int) result {
			t.Helper()
			cmd := agentCmd(t, bin, dir, "udprecv", "-")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			dec := json.NewDecoder(stdout)
			var first, second result
			if err := dec.Decode(&first); err != nil || first.Err != "" {
				t.Fatalf("udp receiver: %+v, %v", first, err)
			}
			to := netip.AddrPortFrom(netip.MustParseAddr("10.99.0.1"), netip.MustParseAddrPort(first.Local).Port())
			for i := 0; i < count; i++ {
				if _, err := sender.WriteTo([]byte("inbound"), net.UDPAddrFromAddrPort(to)); err != nil {
					t.Fatal(err)
				}
			}
			if err := dec.Decode(&second); err != nil {
				t.Fatalf("udp receiver's second line: %v", err)
			}
			return second
		}
		if r := receive(plain, 1); r.Data != "inbound" {
			t.Fatalf("untagged UDP receiver: %+v", r)
		}
		// Another host decides how many arrive: 2000 dropped datagrams
		// must not become 2000 audit records.
		start := time.Now()
		if r := receive(agent, 2000); r.Data != "" {
			t.Errorf("tagged UDP receiver heard from %s: %+v", from, r)
		}
		if ev := nextEvent(t, events); ev.Reason != ReasonUDP || ev.Dst != from || ev.Identity != 13 {
			t.Errorf("deny event = %+v, want udp from %s", ev, from)
		}
		reported := 1
		for quiet := false; !quiet; {
			select {
			case <-events:
				reported++
			case <-time.After(300 * time.Millisecond):
				quiet = true
			}
		}
		// One event per CPU per 10 ms at most.
		if limit := runtime.NumCPU() * (int(time.Since(start)/(10*time.Millisecond)) + 1); reported > limit {
			t.Errorf("%d events for a flood of 2000 datagrams over %s, want at most %d", reported, time.Since(start), limit)
		}
		t.Logf("2000 dropped datagrams: %d events", reported)
		err = dp.SetUDPAllow(13, []Rule{{Prefix: netip.PrefixFrom(from.Addr(), 32), PortMin: from.Port(), PortMax: from.Port()}})
		if err != nil {
			t.Fatal(err)
		}
		if r := receive(agent, 1); r.Data != "inbound" {
			t.Errorf("tagged UDP receiver, sender allowed: %+v", r)
		}
	}
}

// unixServer listens on a unix path of network (unix or unixgram) that
// nobody may reach, and counts what arrives.
func unixServer(t *testing.T, network, path string) *atomic.Int64 {
	t.Helper()
	var n atomic.Int64
	if network == "unixgram" {
		pc, err := net.ListenPacket("unixgram", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				if _, _, err := pc.ReadFrom(buf); err != nil {
					return
				}
				n.Add(1)
			}
		}()
	} else {
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				n.Add(1)
				c.Close()
			}
		}()
	}
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	return &n
}

// TestUnixPaths: denied paths are refused however they are spelled (//x,
// /./x) and to datagram sendto() as to connect(); an identity's allow-list
// refuses every other path, relative and abstract ones included.
func TestUnixPaths(t *testing.T) {
	e := newEnv(t)
	dp := e.open()
	if !UnixConnectSupported() {
		if err := dp.SetAllowUnix(1, []string{"/x"}); !errors.Is(err, ErrUnsupported) {
			t.Fatalf("SetAllowUnix below 6.7: %v, want ErrUnsupported", err)
		}
		return
	}
	events := collectEvents(t, dp)
	agent, agentID := e.cgroup("agent")
	plain, _ := e.cgroup("plain")
	if err := dp.Tag(agentID, 14); err != nil {
		t.Fatal(err)
	}
	bin := agentBinary(t)
	dir, err := os.MkdirTemp("", "interlock-unix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	deniedSock, deniedGram := filepath.Join(dir, "denied.sock"), filepath.Join(dir, "denied.dgram")
	okSock, otherSock := filepath.Join(dir, "ok.sock"), filepath.Join(dir, "other.sock")
	unixServer(t, "unix", deniedSock)
	gram := unixServer(t, "unixgram", deniedGram)
	unixServer(t, "unix", okSock)
	unixServer(t, "unix", otherSock)
	abstract, err := net.Listen("unix", "@interlock-test-"+filepath.Base(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer abstract.Close()
	go func() {
		for {
			c, err := abstract.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	if err := dp.SetDenyUnix([]string{deniedSock, deniedGram}); err != nil {
		t.Fatal(err)
	}
	expectDeny := func(t *testing.T, r result, path string) {
		t.Helper()
		if r.Errno != int(syscall.EPERM) {
			t.Errorf("got %+v, want EPERM", r)
			return
		}
		if ev := nextEvent(t, events); ev.Reason != ReasonUnixPath || ev.Path != path || ev.PID != uint32(r.PID) {
			t.Errorf("deny event = %+v, want unix-path %s", ev, path)
		}
	}

	t.Run("spellings", func(t *testing.T) {
		slashes := strings.ReplaceAll(deniedSock, "/", "//")
		dots := filepath.Dir(deniedSock) + "/./././" + filepath.Base(deniedSock)
		for _, p := range []string{deniedSock, slashes, dots, "/." + deniedSock} {
			if r := runAgent(t, bin, plain, "unix", p); r.Err != "" {
				t.Fatalf("untagged connect to %s: %+v", p, r)
			}
			expectDeny(t, runAgent(t, bin, agent, "unix", p), deniedSock)
		}
		// Padded with slashes to fill sun_path, without a NUL.
		full := strings.Repeat("/", 108-len(deniedSock)) + deniedSock
		if r := runAgent(t, bin, plain, "unixfull", full); r.Err != "" {
			t.Fatalf("untagged connect to a full sun_path: %+v", r)
		}
		expectDeny(t, runAgent(t, bin, agent, "unixfull", full), deniedSock)
	})
	t.Run("sendto", func(t *testing.T) {
		if r := runAgent(t, bin, plain, "unixgram", deniedGram); r.Err != "" {
			t.Fatalf("untagged sendto: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
		before := gram.Load()
		if before == 0 {
			t.Fatal("the untagged datagram did not arrive")
		}
		expectDeny(t, runAgent(t, bin, agent, "unixgram", deniedGram), deniedGram)
		expectDeny(t, runAgent(t, bin, agent, "unixgram", filepath.Dir(deniedGram)+"//./"+filepath.Base(deniedGram)), deniedGram)
		time.Sleep(50 * time.Millisecond)
		if n := gram.Load(); n != before {
			t.Errorf("%d tagged datagrams reached the denied socket", n-before)
		}
	})
	t.Run("allow-list", func(t *testing.T) {
		abstractName := abstract.Addr().String()
		if r := runAgent(t, bin, agent, "unix", otherSock); r.Err != "" {
			t.Fatalf("before the allow-list: %+v", r)
		}
		if err := dp.SetAllowUnix(14, []string{okSock}); err != nil {
			t.Fatal(err)
		}
		if r := runAgent(t, bin, agent, "unix", okSock); r.Err != "" {
			t.Errorf("allowed path: %+v", r)
		}
		if r := runAgent(t, bin, agent, "unix", strings.ReplaceAll(okSock, "/", "//")); r.Err != "" {
			t.Errorf("allowed path spelled with //: %+v", r)
		}
		expectDeny(t, runAgent(t, bin, agent, "unix", otherSock), otherSock)
		expectDeny(t, runAgent(t, bin, agent, "unix", "@"+strings.TrimPrefix(abstractName, "@")), abstractName)
		// Relative: the kernel side cannot resolve it, so it is refused
		// even where it names an allowed socket.
		cmd := agentCmd(t, bin, agent, "unix", filepath.Base(okSock))
		cmd.Dir = dir
		out, err := cmd.Output()
		var r result
		if err != nil || json.Unmarshal(out, &r) != nil {
			t.Fatalf("relative connect: %v %s", err, out)
		}
		expectDeny(t, r, filepath.Base(okSock))
		if r := runAgent(t, bin, plain, "unix", otherSock); r.Err != "" {
			t.Errorf("untagged, with the allow-list on: %+v", r)
		}
		if err := dp.SetAllowUnix(14, []string{okSock, abstractName}); err != nil {
			t.Fatal(err)
		}
		if r := runAgent(t, bin, agent, "unix", abstractName); r.Err != "" {
			t.Errorf("listed abstract name: %+v", r)
		}
		if err := dp.SetAllowUnix(14, nil); err != nil {
			t.Fatal(err)
		}
		if r := runAgent(t, bin, agent, "unix", otherSock); r.Err != "" {
			t.Errorf("allow-list off: %+v", r)
		}
		if fill, err := dp.MapFill(); err != nil || fill["unix_allowed"][0] != 0 {
			t.Errorf("unix_allowed after switching off: %v, %v", fill["unix_allowed"], err)
		}
	})
}

// helperUDPSelf sends arg datagrams over loopback between two sockets of
// its own, so that each one passes egress and ingress once.
func helperUDPSelf(arg string) int {
	n, err := strconv.Atoi(arg)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	rx, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer rx.Close()
	tx, err := net.Dial("udp4", rx.LocalAddr().String())
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer tx.Close()
	buf := make([]byte, 64)
	for i := 0; i < n; i++ {
		if _, err := tx.Write(buf[:32]); err != nil {
			fmt.Println("error", err)
			return 1
		}
		if _, _, err := rx.ReadFrom(buf); err != nil {
			fmt.Println("error", err)
			return 1
		}
	}
	fmt.Println("ok")
	return 0
}

// BenchmarkPacketHooks reports what the egress and ingress programs cost
// per packet of an untagged socket, which, attached at the cgroup root, is
// every packet of the host's own traffic: the kernel's run-time statistics
// (BPF_ENABLE_STATS, on only while the benchmark runs) divided by runs.
func BenchmarkPacketHooks(b *testing.B) {
	e := newEnv(b)
	dp := e.open()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf stats: %v", err)
	}
	defer stats.Close()
	plain, _ := e.cgroup("plain")
	before := map[string]*ebpf.ProgramStats{}
	for _, name := range []string{"egress", "ingress"} {
		if before[name], err = dp.progs[name].Stats(); err != nil {
			b.Fatal(err)
		}
	}
	cmd, done := helperCmd(b, plain, "udpself", strconv.Itoa(b.N))
	defer done()
	b.ResetTimer()
	if out, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "ok" {
		b.Fatalf("udpself: %v %s", err, out)
	}
	b.StopTimer()
	for _, name := range []string{"egress", "ingress"} {
		s, err := dp.progs[name].Stats()
		if err != nil {
			b.Fatal(err)
		}
		runs := s.RunCount - before[name].RunCount
		if runs == 0 {
			b.Fatalf("%s never ran", name)
		}
		b.ReportMetric(float64(s.Runtime-before[name].Runtime)/float64(runs), name+"-ns/packet")
	}
}
