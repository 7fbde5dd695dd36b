package datapath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/bpf"
)

// netnsPinDir is the directory under the pin dir holding the proxy_lookup
// link of every other network namespace interlockd serves, one pin per
// namespace named by its inode.
const netnsPinDir = "netns"

// Netns is interlockd's presence in a network namespace other than its own,
// one where tagged tasks run: the connect hooks send their TCP connects to
// the proxy address of that namespace's loopback, so interlockd listens
// there too. Its listeners sit in SOCKMAPs of their own, read by a
// proxy_lookup program of their own attached to that namespace, so a
// process there that binds the proxy address receives nothing, and with
// interlockd gone (the listeners closed, the link still pinned) the connects
// are refused. Not safe for concurrent use.
type Netns struct {
	// Cookie is the namespace's netns cookie, the one the kernel records
	// with every connect made in it (LookupIn).
	Cookie uint64
	// Inode is the namespace's inode number, as /proc/PID/ns/net shows it.
	Inode uint64
	// Listeners are the proxy's listening sockets inside the namespace,
	// on 127.0.0.1 and, where the namespace has it, ::1: serve them with
	// LookupIn(Cookie, ...) as the identifier.
	Listeners []*net.TCPListener
	// DNS are the DNS proxy's sockets inside the namespace, bound to the
	// addresses EnterNetns was given (the DNS proxy's own, so the answers
	// come from the address the agent's socket is connected to): serve
	// them with LookupDNSIn(Cookie, ...).
	DNS []*net.UDPConn
	// DNSErr says why a DNS address given to EnterNetns has no socket.
	DNSErr error

	d         *Datapath
	prog      *ebpf.Program
	link      link.Link
	listeners *ebpf.Map
	dns       *ebpf.Map
}

// EnterNetns serves the network namespace at path (such as
// /proc/PID/ns/net): it brings the namespace's loopback up (the redirect
// targets it), opens the proxy's listeners there on ephemeral ports, and
// attaches, or re-adopts from the pin a previous interlockd left, a
// proxy_lookup program that delivers the proxy address to them. With dns
// (the DNS proxy's addresses, Config.DNS4 and DNS6) it also binds a UDP
// socket at each there, which the program delivers the namespace's steered
// DNS to; an address it cannot bind (the namespace has no ::1, or one of
// its processes holds the port) leaves that family's DNS refused there.
func (d *Datapath) EnterNetns(path string, dns ...netip.AddrPort) (*Netns, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer h.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return nil, fmt.Errorf("stat network namespace %s: %w", path, err)
	}
	n := &Netns{d: d, Inode: st.Ino}
	ok := false
	defer func() {
		if !ok {
			n.Release()
		}
	}()
	if err := loopbackUp(h); err != nil {
		return nil, err
	}
	if err := inNetns(h, func() error {
		if err := n.listen(); err != nil {
			return err
		}
		n.DNSErr = n.listenDNS(dns)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := n.load(); err != nil {
		return nil, err
	}
	for _, l := range n.Listeners {
		raw, err := l.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("serve listener: %w", err)
		}
		if err := putByFamily(raw, n.listeners, nil); err != nil {
			return nil, fmt.Errorf("serve listener %s in netns %d: %w", l.Addr(), n.Inode, err)
		}
	}
	for _, c := range n.DNS {
		raw, err := c.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("serve dns socket: %w", err)
		}
		if err := putByFamily(raw, n.dns, nil); err != nil {
			return nil, fmt.Errorf("serve dns socket %s in netns %d: %w", c.LocalAddr(), n.Inode, err)
		}
	}
	if n.link, err = n.adoptOrAttach(h); err != nil {
		return nil, err
	}
	// Served now: SYNs the egress program held go through on their
	// next retransmission.
	if err := d.maps.ServedNetns.Put(n.Cookie, uint8(1)); err != nil {
		return nil, fmt.Errorf("mark netns %d served: %w", n.Inode, err)
	}
	d.mu.Lock()
	d.entered[n.Cookie] = true
	d.mu.Unlock()
	ok = true
	return n, nil
}

// loopbackUp sets the namespace's lo up: a fresh `ip netns add` namespace
// has it down, and the redirected connects go to its 127.0.0.1 and ::1.
func loopbackUp(h netns.NsHandle) error {
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return fmt.Errorf("open netlink in network namespace: %w", err)
	}
	defer nl.Close()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo in network namespace: %w", err)
	}
	if lo.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := nl.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in network namespace: %w", err)
	}
	return nil
}

// inNetns runs fn on an OS thread that has entered the namespace h, so the
// sockets fn creates belong to it. The thread returns to its own namespace
// afterwards; if it cannot, it is never handed back to the Go scheduler
// (the goroutine exits locked, and Go ends the thread).
func inNetns(h netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer own.Close()
		if err := netns.Set(h); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(own); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return to own network namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listen opens the listeners on the calling thread, which is in the
// namespace, and reads the namespace's cookie from the first. IPv6 is
// optional: a namespace without ::1 gets none, and its IPv6 connects to the
// proxy address are refused. Like proxy.Listen's, the listeners give their
// connections no keepalive (the agents are local).
func (n *Netns) listen() error {
	lc := net.ListenConfig{KeepAlive: -1}
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen in network namespace: %w", err)
	}
	n.Listeners = append(n.Listeners, l.(*net.TCPListener))
	raw, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		return fmt.Errorf("get netns cookie: %w", err)
	}
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		n.Cookie, cerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	}); err != nil || cerr != nil {
		return fmt.Errorf("get netns cookie: %w", errors.Join(err, cerr))
	}
	if l6, err := lc.Listen(context.Background(), "tcp6", "[::1]:0"); err == nil {
		n.Listeners = append(n.Listeners, l6.(*net.TCPListener))
	}
	return nil
}

// listenDNS binds a UDP socket at each of addrs on the calling thread,
// which is in the namespace. An address that cannot be bound is reported,
// not fatal: TCP is served all the same.
func (n *Netns) listenDNS(addrs []netip.AddrPort) error {
	var errs []error
	for _, a := range addrs {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(a))
		if err != nil {
			errs = append(errs, fmt.Errorf("listen dns %s in network namespace: %w", a, err))
			continue
		}
		n.DNS = append(n.DNS, c)
	}
	return errors.Join(errs...)
}

// load creates the namespace's listener maps (not pinned: the pinned link
// holds the program, which holds them) and its proxy_lookup program, which
// shares the pinned config map.
func (n *Netns) load() error {
	spec := n.d.spec.Copy()
	var err error
	for _, m := range []struct {
		name string
		dst  **ebpf.Map
	}{{bpf.InterlockMapProxyListeners, &n.listeners}, {bpf.InterlockMapDnsListeners, &n.dns}} {
		ms := spec.Maps[m.name].Copy()
		ms.Pinning = ebpf.PinNone
		if *m.dst, err = ebpf.NewMap(ms); err != nil {
			return fmt.Errorf("create %s for netns %d: %w", m.name, n.Inode, err)
		}
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"proxy_lookup"`
	}
	err = spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpf.InterlockMapConfigMap:      n.d.maps.ConfigMap,
		bpf.InterlockMapProxyListeners: n.listeners,
		bpf.InterlockMapDnsListeners:   n.dns,
	}})
	if err != nil {
		return fmt.Errorf("load %s for netns %d: %w", bpf.InterlockProgProxyLookup, n.Inode, verbose(err))
	}
	n.prog = objs.Prog
	return nil
}

func (n *Netns) pin() string {
	return filepath.Join(n.d.pinDir, netnsPinDir, strconv.FormatUint(n.Inode, 10))
}

// adoptOrAttach swaps the program into the link a previous interlockd
// pinned for this namespace, so it never goes unsteered, or attaches and
// pins a new one.
func (n *Netns) adoptOrAttach(h netns.NsHandle) (link.Link, error) {
	path := n.pin()
	l, err := link.LoadPinnedLink(path, nil)
	if err == nil {
		info, err := l.Info()
		if err == nil && info.NetNs() != nil && uint64(info.NetNs().NetnsInode) == n.Inode {
			if err := l.Update(n.prog); err != nil {
				l.Close()
				return nil, fmt.Errorf("update %s for netns %d: %w", bpf.InterlockProgProxyLookup, n.Inode, err)
			}
			return l, nil
		}
		// A namespace that went away, whose inode number was reused.
		l.Unpin()
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create netns pin dir: %w", err)
	}
	nl, err := link.AttachNetNs(int(h), n.prog)
	if err != nil {
		return nil, fmt.Errorf("attach %s to netns %d: %w", bpf.InterlockProgProxyLookup, n.Inode, err)
	}
	if err := nl.Pin(path); err != nil {
		nl.Close()
		return nil, fmt.Errorf("pin %s for netns %d: %w", bpf.InterlockProgProxyLookup, n.Inode, err)
	}
	return nl, nil
}

// Close closes the listeners and the loader's handles, as when interlockd
// stops: the pinned link stays, so tagged connects in the namespace are
// refused until an interlockd serves it again (or SweepNetns drops it).
// Closing twice does nothing.
func (n *Netns) Close() error {
	var errs []error
	for _, l := range n.Listeners {
		errs = append(errs, l.Close())
	}
	n.Listeners = nil
	for _, c := range n.DNS {
		errs = append(errs, c.Close())
	}
	n.DNS = nil
	if n.link != nil {
		errs = append(errs, n.link.Close())
		n.link = nil
	}
	if n.prog != nil {
		errs = append(errs, n.prog.Close())
		n.prog = nil
	}
	for _, m := range []**ebpf.Map{&n.listeners, &n.dns} {
		if *m != nil {
			errs = append(errs, (*m).Close())
			*m = nil
		}
	}
	return errors.Join(errs...)
}

// Release stops serving the namespace, as when its last tagged task is
// gone: the listeners close, the link is detached and unpinned, and the
// records of connections made in it that nobody accepted are deleted.
func (n *Netns) Release() error {
	var errs []error
	if n.link != nil {
		errs = append(errs, n.link.Unpin())
	} else if err := unpinLink(n.pin()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	errs = append(errs, n.Close())
	if n.Cookie != 0 {
		n.d.mu.Lock()
		delete(n.d.entered, n.Cookie)
		n.d.mu.Unlock()
		if err := n.d.maps.ServedNetns.Delete(n.Cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("unmark netns %d: %w", n.Inode, err))
		}
		errs = append(errs, n.d.forgetNetns(n.Cookie))
	}
	return errors.Join(errs...)
}

// forgetNetns deletes the connection and DNS records keyed by a network
// namespace that is no longer served.
func (d *Datapath) forgetNetns(cookie uint64) error {
	var errs []error
	for _, m := range []*ebpf.Map{d.maps.ConnOrigins, d.maps.DnsOrigins} {
		var k bpf.InterlockTuple
		var v bpf.InterlockOrigin
		var stale []bpf.InterlockTuple
		it := m.Iterate()
		for it.Next(&k, &v) {
			if k.NetnsCookie == cookie {
				stale = append(stale, k)
			}
		}
		errs = append(errs, it.Err())
		for _, k := range stale {
			if err := m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("forget netns %d: %w", cookie, err)
	}
	return nil
}

// NetnsRecords counts the connection and DNS records keyed by network
// namespaces other than interlockd's own, for leak checks.
func (d *Datapath) NetnsRecords() (int, error) {
	count := 0
	for _, m := range []*ebpf.Map{d.maps.ConnOrigins, d.maps.DnsOrigins} {
		var k bpf.InterlockTuple
		var v bpf.InterlockOrigin
		it := m.Iterate()
		for it.Next(&k, &v) {
			if k.NetnsCookie != d.netnsCookie {
				count++
			}
		}
		if err := it.Err(); err != nil {
			return 0, fmt.Errorf("count netns records: %w", err)
		}
	}
	return count, nil
}

// SweepNetns unpins the links of served namespaces that are not in keep
// (by inode): those a previous interlockd served whose tagged tasks are
// gone meanwhile; and forgets, as served, the namespaces no EnterNetns of
// this Datapath serves. It returns how many pins remain.
func (d *Datapath) SweepNetns(keep map[uint64]bool) (int, error) {
	if err := d.sweepServed(); err != nil {
		return 0, err
	}
	dir := filepath.Join(d.pinDir, netnsPinDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list netns pins: %w", err)
	}
	left := 0
	var errs []error
	for _, e := range entries {
		ino, err := strconv.ParseUint(e.Name(), 10, 64)
		if err == nil && keep[ino] {
			left++
			continue
		}
		errs = append(errs, unpinLink(filepath.Join(dir, e.Name())))
	}
	return left, errors.Join(errs...)
}

// sweepServed deletes from served_netns every namespace but interlockd's
// own and those it entered.
func (d *Datapath) sweepServed() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var k uint64
	var v uint8
	var stale []uint64
	it := d.maps.ServedNetns.Iterate()
	for it.Next(&k, &v) {
		if k != d.netnsCookie && !d.entered[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list served namespaces: %w", err)
	}
	for _, k := range stale {
		if err := d.maps.ServedNetns.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget served namespace %d: %w", k, err)
		}
	}
	return nil
}

// unpinLink detaches the link pinned at path and removes the pin.
func unpinLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return fmt.Errorf("load pinned link %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("detach %s: %w", path, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}

// uninstallNetns detaches and unpins every namespace's link.
func uninstallNetns(pinDir string) error {
	dir := filepath.Join(pinDir, netnsPinDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list netns pins: %w", err)
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, unpinLink(filepath.Join(dir, e.Name())))
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove netns pin dir: %w", err))
	}
	return errors.Join(errs...)
}

// OwnNetnsInode returns the inode of interlockd's own network namespace
// (the one Open attached in), to tell tasks in other namespaces apart.
func (d *Datapath) OwnNetnsInode() uint64 { return d.netnsInode }
