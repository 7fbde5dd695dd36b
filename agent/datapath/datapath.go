// Package datapath loads Interlock's eBPF programs (package bpf), attaches
// them to a cgroup v2 subtree with pinned bpf_links, and gives the daemon
// what it needs from the kernel: tagging cgroups with an identity, intercept
// rules, the record of each redirected connection and deny events.
//
// Enforcement lives in the pins, not in the process: closing a Datapath, or
// the daemon dying, leaves the programs attached, so tagged connects fail
// closed instead of escaping. The proxy address is not a port anyone may
// bind: an sk_lookup program on the network namespace delivers every
// connection for it to the listening sockets given to ServeListener, and
// refuses it while there are none, even if another process has bound that
// address meanwhile. Uninstall is the only way to detach.
//
// Everything here needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for
// cgroup attach), a cgroup v2 mount and a kernel at or above KernelFloor.
package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/bpf"
)

// ErrUnsupported is returned (wrapped) by calls the running kernel cannot
// enforce, such as SetDenyUnix below 6.7. The daemon should log it as a
// known gap, not fail.
var ErrUnsupported = errors.New("not supported by this kernel")

// ErrNotFound is returned (wrapped) by Lookup when the kernel holds no record
// for a connection: it was not redirected, or its record was consumed.
var ErrNotFound = errors.New("no record")

// ErrClosed is returned (wrapped) by ReadDenyEvent once the Datapath is closed.
var ErrClosed = os.ErrClosed

// MaxRules bounds SetRules and SetUDPAllow per identity.
const MaxRules = 16

// MaxResolvers bounds Config.Resolvers.
const MaxResolvers = 8

// MaxUnixPaths bounds SetDenyUnix.
const MaxUnixPaths = 64

// MaxAllowedUnixPaths bounds the paths of all identities' SetAllowUnix
// lists together.
const MaxAllowedUnixPaths = 1024

// Config says where the programs attach, where they pin, and where they send
// tagged traffic.
type Config struct {
	// CgroupRoot is the absolute cgroup v2 directory the programs attach
	// at: the mount's root in production, a private subtree in tests.
	CgroupRoot string
	// PinDir is a directory on a bpffs (created if missing) holding the
	// pinned links and maps, e.g. /sys/fs/bpf/interlock.
	PinDir string
	// Proxy4 receives redirected IPv4 (and IPv4-mapped IPv6) connects,
	// e.g. 127.0.0.1:15001. Zero: tagged IPv4 TCP is refused.
	Proxy4 netip.AddrPort
	// Proxy6 receives redirected IPv6 connects, e.g. [::1]:15001. Zero:
	// tagged IPv6 TCP is refused.
	Proxy6 netip.AddrPort
	// SelfCgroupID is interlockd's own cgroup: tasks in it or below it are
	// never tagged. It must not be the cgroup2 root (see EnterOwnCgroup).
	// Zero exempts nobody.
	SelfCgroupID uint64
	// Resolvers are DNS servers whose address and port, besides port 53
	// of any address, are tagged DNS: it never reaches them directly.
	// UDP to them goes to DNS4 or DNS6, TCP to the proxy (whatever the
	// identity's rules say).
	Resolvers []netip.AddrPort
	// DNS4 receives tagged UDP DNS to IPv4 (and IPv4-mapped) addresses,
	// e.g. 127.0.0.1:15001: the UDP socket bound there and given to
	// ServeDNS answers in the resolver's place (recvmsg shows its replies
	// as the resolver's) and looks the caller up with LookupDNS. Zero:
	// tagged IPv4 DNS is refused.
	DNS4 netip.AddrPort
	// DNS6 is DNS4 for IPv6. Zero: tagged IPv6 DNS is refused.
	DNS6 netip.AddrPort
}

// program is one attached program: its name in the object and attach type.
// An optional program needs more than KernelFloor: minKernel, and for LSM
// programs an active bpf LSM; without it the data path runs with a gap.
type program struct {
	name      string
	attach    ebpf.AttachType
	optional  bool
	minKernel [2]int
	gap       string // what goes unenforced without it
	// gapOnError: a kernel that refuses the program (a verifier older
	// than the one it was tested on) leaves a gap rather than failing.
	gapOnError bool
	// covered, when set, reports that the host closes the gap another way
	// while the program cannot load.
	covered func() bool
}

// programs lists every program in attach order: sockops, getpeername and
// recvmsg before the connect and sendmsg hooks, so no redirected socket
// ever lacks them.
var programs = []program{
	{name: bpf.InterlockProgSockOps, attach: ebpf.AttachCGroupSockOps},
	{name: bpf.InterlockProgGetpeername4, attach: ebpf.AttachCgroupInet4GetPeername},
	{name: bpf.InterlockProgGetpeername6, attach: ebpf.AttachCgroupInet6GetPeername},
	{name: bpf.InterlockProgSockCreate, attach: ebpf.AttachCGroupInetSockCreate},
	{name: bpf.InterlockProgEgress, attach: ebpf.AttachCGroupInetEgress},
	{name: bpf.InterlockProgIngress, attach: ebpf.AttachCGroupInetIngress},
	{name: bpf.InterlockProgBind4, attach: ebpf.AttachCGroupInet4Bind},
	{name: bpf.InterlockProgBind6, attach: ebpf.AttachCGroupInet6Bind},
	{
		name: bpf.InterlockProgSetSockopt, attach: ebpf.AttachCGroupSetsockopt,
		optional: true, minKernel: SetsockoptFloor, gapOnError: true,
		gap: "setsockopt(IP_OPTIONS, IPV6_RTHDR...) is not refused at the call (cgroup/setsockopt needs kernel 6.1 " +
			"to see the cgroup); packets carrying source routes are still dropped",
	},
	{name: bpf.InterlockProgRecvmsg4, attach: ebpf.AttachCGroupUDP4Recvmsg},
	{name: bpf.InterlockProgRecvmsg6, attach: ebpf.AttachCGroupUDP6Recvmsg},
	{name: bpf.InterlockProgSendmsg4, attach: ebpf.AttachCGroupUDP4Sendmsg},
	{name: bpf.InterlockProgSendmsg6, attach: ebpf.AttachCGroupUDP6Sendmsg},
	{name: bpf.InterlockProgConnect4, attach: ebpf.AttachCGroupInet4Connect},
	{name: bpf.InterlockProgConnect6, attach: ebpf.AttachCGroupInet6Connect},
	{
		name: bpf.InterlockProgConnectUnix, attach: ebpf.AttachCgroupUnixConnect,
		optional: true, minKernel: UnixConnectFloor,
		gap: "unix socket connects are not filtered (cgroup/connect_unix needs kernel 6.7)",
	},
	{
		name: bpf.InterlockProgSendmsgUnix, attach: ebpf.AttachCgroupUnixSendmsg,
		optional: true, minKernel: UnixConnectFloor,
		gap: "unix datagram sendto() is not filtered (cgroup/sendmsg_unix needs kernel 6.7)",
	},
	{
		name: bpf.InterlockProgSocketCreate, attach: ebpf.AttachLSMMac,
		optional: true, minKernel: KernelFloor, gapOnError: true,
		gap: "socket families other than inet, inet6, unix and netlink route (packet, vsock...) " +
			"are not refused (needs the bpf LSM active); run agents without CAP_NET_RAW",
	},
	{
		name: bpf.InterlockProgPtraceAccessCheck, attach: ebpf.AttachLSMMac,
		optional: true, minKernel: [2]int{6, 0}, gapOnError: true,
		gap: "ptrace by tagged tasks of same-uid processes outside their identity is not refused " +
			"(needs kernel 6.0 with the bpf LSM active); set kernel.yama.ptrace_scope to 1 or more",
		covered: yamaRestrictsPtrace,
	},
	{
		name: bpf.InterlockProgFileOpen, attach: ebpf.AttachLSMMac,
		optional: true, minKernel: KernelFloor, gapOnError: true,
		gap: "a tagged task running as root can move itself out by writing cgroup.procs " +
			"(needs the bpf LSM active); run agents unprivileged (interlock exec --user)",
	},
	{
		name: bpf.InterlockProgTaskAlloc, attach: ebpf.AttachLSMMac,
		optional: true, minKernel: KernelFloor, gapOnError: true,
		gap: "a tagged task running as root can start a child in another cgroup with " +
			"clone3(CLONE_INTO_CGROUP) (needs the bpf LSM active)",
	},
	{
		name: bpf.InterlockProgBpfSyscall, attach: ebpf.AttachLSMMac,
		optional: true, minKernel: KernelFloor, gapOnError: true,
		gap: "the bpf() system call is not refused to tagged tasks (needs the bpf LSM active); " +
			"run agents without CAP_BPF and CAP_SYS_ADMIN",
	},
}

// mapNames lists every pinned map, for Uninstall and MapFill.
var mapNames = []string{
	bpf.InterlockMapTaggedCgroups, bpf.InterlockMapTcpRules, bpf.InterlockMapUdpRules,
	bpf.InterlockMapConfigMap, bpf.InterlockMapSockOrigins, bpf.InterlockMapConnOrigins,
	bpf.InterlockMapDeniedUnix, bpf.InterlockMapDenyEvents, bpf.InterlockMapProxyListeners,
	bpf.InterlockMapListenRules, bpf.InterlockMapPendingAccepts, bpf.InterlockMapUnixAllowOn,
	bpf.InterlockMapUnixAllowed, bpf.InterlockMapDnsOrigins, bpf.InterlockMapDnsListeners,
	bpf.InterlockMapServedNetns,
}

// linkNames lists every pinned link by program name, for Uninstall: the
// cgroup programs and proxy_lookup, attached to the network namespace.
func linkNames() []string {
	names := []string{bpf.InterlockProgProxyLookup}
	for _, p := range programs {
		names = append(names, p.name)
	}
	return names
}

func linkPin(pinDir, prog string) string { return filepath.Join(pinDir, "link_"+prog) }

// Datapath is a loaded, attached data path. Its methods are safe for
// concurrent use; ReadDenyEvent may be called by one goroutine at a time.
type Datapath struct {
	maps        bpf.InterlockMaps
	progs       map[string]*ebpf.Program
	links       []link.Link
	events      *ringbuf.Reader
	netnsCookie uint64
	netnsInode  uint64
	gaps        []string
	// spec and pinDir load and pin the proxy_lookup program of every
	// other network namespace served (EnterNetns).
	spec   *ebpf.CollectionSpec
	pinDir string
	// entered holds the cookies of the namespaces EnterNetns serves, to
	// drop the others from served_netns (SweepNetns).
	mu      sync.Mutex
	entered map[uint64]bool
}

// Open loads the programs and attaches them at cfg.CgroupRoot, or re-adopts
// the links already pinned under cfg.PinDir by swapping in the new programs
// (so enforcement never lapses across a restart or upgrade). Maps are reused
// from their pins, so tags and rules survive. The global settings (proxy
// addresses, own cgroup, resolvers) are rewritten on every Open.
// Connections to the proxy addresses are refused until ServeListener gives
// the data path the proxy's listening sockets.
func Open(cfg Config) (*Datapath, error) {
	if err := CheckKernel(); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(cfg.CgroupRoot) {
		return nil, fmt.Errorf("open datapath: cgroup root %q is not absolute", cfg.CgroupRoot)
	}
	rootID, err := CgroupID(cfg.CgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}
	if mount, err := CgroupMount(); err == nil && cfg.SelfCgroupID != 0 {
		if id, err := CgroupID(mount); err == nil && id == cfg.SelfCgroupID {
			return nil, errors.New("open datapath: own cgroup is the cgroup2 root, which would exempt every task; move interlockd into its own cgroup")
		}
	}
	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	if err := checkBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	// The namespace the proxy listens in is the calling thread's. /proc/self
	// names the thread group leader's, which differs once any thread of
	// the process has entered another namespace (and Go keeps a main thread
	// wedged in it if a locked goroutine exits there): the cookie, the
	// pinned link's check and the attach all ask this one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	netns, err := netnsCookie()
	if err != nil {
		return nil, err
	}

	spec, err := bpf.LoadInterlock()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(threadNetns, &st); err != nil {
		return nil, fmt.Errorf("stat network namespace: %w", err)
	}
	d := &Datapath{progs: map[string]*ebpf.Program{}, netnsCookie: netns, netnsInode: st.Ino, spec: spec, pinDir: cfg.PinDir,
		entered: map[uint64]bool{}}
	ok := false
	defer func() {
		if !ok {
			d.Close()
		}
	}()
	// Maps come from their pins when present (tags and records survive),
	// and are created and pinned otherwise.
	opts := ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}}
	if err := unpinStaleConfig(cfg.PinDir, spec); err != nil {
		return nil, err
	}
	core := spec.Copy()
	delete(core.Programs, bpf.InterlockProgVerdictProbe) // tests only
	for _, p := range programs {
		if p.optional {
			delete(core.Programs, p.name)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(core, opts)
	if err != nil {
		return nil, fmt.Errorf("load programs: %w", verbose(err))
	}
	if err := coll.Assign(&d.maps); err != nil {
		coll.Close()
		return nil, fmt.Errorf("assign maps: %w", err)
	}
	for name := range coll.Programs {
		d.progs[name] = coll.DetachProgram(name)
	}
	coll.Close()
	for _, p := range programs {
		if !p.optional {
			continue
		}
		prog, err := loadOptional(spec, p, opts)
		if err != nil && !p.gapOnError {
			return nil, err
		}
		if prog == nil && p.covered != nil && p.covered() {
			continue
		}
		if err != nil {
			// Kernels may refuse LSM programs outright (lockdown,
			// hardening patches) although the bpf LSM is active.
			d.gaps = append(d.gaps, fmt.Sprintf("%s: %v", p.gap, err))
			continue
		}
		if prog == nil {
			d.gaps = append(d.gaps, p.gap)
			continue
		}
		d.progs[p.name] = prog
	}
	if err := d.writeConfig(cfg); err != nil {
		return nil, err
	}
	// Redirected connects in this namespace are served (or refused by
	// proxy_lookup), never held.
	if err := d.maps.ServedNetns.Put(netns, uint8(1)); err != nil {
		return nil, fmt.Errorf("mark own network namespace served: %w", err)
	}

	// The proxy address is steered before any connect is redirected to
	// it, so on a first install no squatter sees a single connection.
	l, err := adoptOrAttachNetns(cfg.PinDir, d.progs[bpf.InterlockProgProxyLookup])
	if err != nil {
		return nil, err
	}
	d.links = append(d.links, l)

	cg, err := os.Open(cfg.CgroupRoot)
	if err != nil {
		return nil, fmt.Errorf("open cgroup root: %w", err)
	}
	defer cg.Close()
	for _, p := range programs {
		if d.progs[p.name] == nil {
			continue
		}
		l, err := adoptOrAttach(cfg.PinDir, p, d.progs[p.name], cg, rootID)
		if err != nil {
			return nil, err
		}
		d.links = append(d.links, l)
	}

	d.events, err = ringbuf.NewReader(d.maps.DenyEvents)
	if err != nil {
		return nil, fmt.Errorf("open deny events: %w", err)
	}
	ok = true
	return d, nil
}

// unpinStaleConfig removes a pinned config map whose layout is not this
// build's (an upgrade that added settings): it holds nothing but what Open
// writes anew, and the running programs keep the old one until their links
// are updated, so enforcement does not lapse.
func unpinStaleConfig(pinDir string, spec *ebpf.CollectionSpec) error {
	path := filepath.Join(pinDir, bpf.InterlockMapConfigMap)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned config map: %w", err)
	}
	defer m.Close()
	if m.ValueSize() == spec.Maps[bpf.InterlockMapConfigMap].ValueSize {
		return nil
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("unpin the previous config map: %w", err)
	}
	return nil
}

// loadOptional loads one optional program against the pinned maps, or
// returns nil when the kernel lacks what it needs.
func loadOptional(spec *ebpf.CollectionSpec, p program, opts ebpf.CollectionOptions) (*ebpf.Program, error) {
	if rel, err := kernelRelease(); err != nil || !atLeast(rel, p.minKernel) {
		return nil, nil
	}
	if p.attach == ebpf.AttachLSMMac && !bpfLSMActive() {
		return nil, nil
	}
	one := spec.Copy()
	one.Programs = map[string]*ebpf.ProgramSpec{p.name: one.Programs[p.name]}
	coll, err := ebpf.NewCollectionWithOptions(one, opts)
	if err != nil && p.attach == ebpf.AttachLSMMac && errors.Is(err, unix.EPERM) {
		return nil, lsmRefused(p.name)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", p.name, verbose(err))
	}
	defer coll.Close()
	return coll.DetachProgram(p.name), nil
}

// lsmRefused says why the kernel refused an LSM program with EPERM while
// the cgroup programs loaded. Not RLIMIT_MEMLOCK, which cilium/ebpf guesses
// for an EPERM before the verifier: kernels since 5.11 (the floor is 5.15)
// charge BPF memory to the cgroup. It is the kernel's policy.
func lsmRefused(name string) error {
	why := "kernel lockdown or a security module forbids bpf LSM programs"
	if b, err := os.ReadFile("/sys/kernel/security/lockdown"); err == nil {
		// "none integrity [confidentiality]": the bracketed mode is in force.
		if _, rest, ok := strings.Cut(string(b), "["); ok {
			if mode, _, ok := strings.Cut(rest, "]"); ok && mode != "none" {
				why = "kernel lockdown is " + mode
			}
		}
	}
	return fmt.Errorf("load %s: the kernel refused it (%w): %s", name, unix.EPERM, why)
}

// bpfLSMActive reports whether the bpf LSM is in the kernel's active list;
// when securityfs is not mounted it cannot tell and assumes so (attaching
// still succeeds, the test suite checks enforcement).
func bpfLSMActive() bool {
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return true
	}
	for _, name := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if name == "bpf" {
			return true
		}
	}
	return false
}

// yamaRestrictsPtrace reports whether Yama limits ptrace to descendants or
// stricter (ptrace_scope 1 to 3): a tagged task's descendants are tagged
// too, so it can then trace nothing outside its identity.
func yamaRestrictsPtrace() bool {
	b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope")
	if err != nil {
		return false
	}
	scope, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && scope >= 1
}

// Gaps lists, in words fit for a log, what the running kernel cannot
// enforce; empty when everything is.
func (d *Datapath) Gaps() []string { return d.gaps }

// adoptOrAttach re-adopts the link pinned for p, swapping in prog, or
// attaches a new link at the cgroup and pins it.
func adoptOrAttach(pinDir string, p program, prog *ebpf.Program, cg *os.File, rootID uint64) (link.Link, error) {
	path := linkPin(pinDir, p.name)
	if p.attach == ebpf.AttachLSMMac {
		return replaceLSM(path, p, prog)
	}
	l, err := link.LoadPinnedLink(path, nil)
	if err == nil {
		info, err := l.Info()
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("inspect pinned link %s: %w", path, err)
		}
		if c := info.Cgroup(); c == nil || c.CgroupId != rootID {
			l.Close()
			return nil, fmt.Errorf("re-adopt %s: pinned link is attached to another cgroup; run uninstall first", path)
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return nil, fmt.Errorf("update %s: %w", p.name, err)
		}
		return l, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	l, err = link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: prog, Attach: p.attach})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", p.name, err)
	}
	if err := l.Pin(path); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin %s: %w", p.name, err)
	}
	return l, nil
}

// adoptOrAttachNetns re-adopts the pinned proxy_lookup link, swapping in
// prog, or attaches prog to the calling thread's network namespace (the
// one the proxy listens in) and pins the link. The caller holds its thread.
func adoptOrAttachNetns(pinDir string, prog *ebpf.Program) (link.Link, error) {
	path := linkPin(pinDir, bpf.InterlockProgProxyLookup)
	var st unix.Stat_t
	if err := unix.Stat(threadNetns, &st); err != nil {
		return nil, fmt.Errorf("stat network namespace: %w", err)
	}
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		info, err := l.Info()
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("inspect pinned link %s: %w", path, err)
		}
		ns := info.NetNs()
		if ns != nil && uint64(ns.NetnsInode) == st.Ino {
			if err := l.Update(prog); err != nil {
				l.Close()
				return nil, fmt.Errorf("update %s: %w", bpf.InterlockProgProxyLookup, err)
			}
			return l, nil
		}
		if ns == nil || ns.NetnsInode != 0 {
			l.Close()
			return nil, fmt.Errorf("re-adopt %s: pinned link is attached to another network namespace; run uninstall first", path)
		}
		// The namespace it was attached to is gone, and the link with it.
		err = l.Unpin()
		l.Close()
		if err != nil {
			return nil, fmt.Errorf("unpin %s: %w", path, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	ns, err := os.Open(threadNetns)
	if err != nil {
		return nil, fmt.Errorf("open network namespace: %w", err)
	}
	defer ns.Close()
	nl, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", bpf.InterlockProgProxyLookup, err)
	}
	if err := nl.Pin(path); err != nil {
		nl.Close()
		return nil, fmt.Errorf("pin %s: %w", bpf.InterlockProgProxyLookup, err)
	}
	return nl, nil
}

// ServeListener makes l, a listening socket of the proxy, the one every TCP
// connection to Config.Proxy4 (l is IPv4) or Config.Proxy6 (l is IPv6) is
// delivered to, whatever address l is bound to: bind it where no other
// process can take it (127.0.0.1:0), so that nobody can make interlockd
// fail to start by holding the proxy address. The accepted connections'
// local address is the proxy address the client dialed. A later call for
// the same family replaces the socket; a closed socket leaves the map, and
// then connections to the proxy address are refused. The map does not keep
// l alive: the caller holds it for as long as it serves (an unreachable
// listener is closed by its finalizer).
func (d *Datapath) ServeListener(l *net.TCPListener) error {
	raw, err := l.SyscallConn()
	if err != nil {
		return fmt.Errorf("serve listener: %w", err)
	}
	// Go listens with MPTCP by default where the kernel has it, and a
	// SOCKMAP holds plain TCP sockets only.
	tcpOnly := func(fd int) error {
		proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil {
			return fmt.Errorf("get socket protocol: %w", err)
		}
		if proto != unix.IPPROTO_TCP {
			return fmt.Errorf("socket protocol is %d, not TCP (listen with net.ListenConfig.SetMultipathTCP(false))", proto)
		}
		return nil
	}
	if err := putByFamily(raw, d.maps.ProxyListeners, tcpOnly); err != nil {
		return fmt.Errorf("serve listener %s: %w", l.Addr(), err)
	}
	return nil
}

// ServeDNS makes c, a UDP socket of the DNS proxy bound at Config.DNS4 (c
// is IPv4) or Config.DNS6, the one every datagram to that address is
// delivered to. Bind it at that very address (its answers must come from
// it); the data path then delivers nothing there to any other socket, and
// while no socket is served (interlockd down) such datagrams are dropped,
// so a process that binds the address with SO_REUSEPORT, or once
// interlockd is gone, never hears a question. A closed socket leaves the
// map; the map does not keep c alive.
func (d *Datapath) ServeDNS(c *net.UDPConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("serve dns: %w", err)
	}
	if err := putByFamily(raw, d.maps.DnsListeners, nil); err != nil {
		return fmt.Errorf("serve dns %s: %w", c.LocalAddr(), err)
	}
	return nil
}

// putByFamily puts the socket behind raw into m, a two-slot SOCKMAP keyed
// by family (PROXY_LISTENER_V4 = 0, PROXY_LISTENER_V6 = 1), once check,
// if any, accepts it.
func putByFamily(raw syscall.RawConn, m *ebpf.Map, check func(fd int) error) error {
	var opErr error
	err := raw.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			opErr = fmt.Errorf("get socket domain: %w", err)
			return
		}
		if check != nil {
			if opErr = check(int(fd)); opErr != nil {
				return
			}
		}
		key := uint32(0) // PROXY_LISTENER_V4
		if domain == unix.AF_INET6 {
			key = 1 // PROXY_LISTENER_V6
		}
		opErr = m.Put(key, uint64(fd))
	})
	if err != nil {
		return err
	}
	return opErr
}

func verbose(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("%+v", ve)
	}
	return err
}

func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs pin dir: %w", err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %s is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)", dir)
	}
	return nil
}

// threadNetns is the calling thread's network namespace.
const threadNetns = "/proc/thread-self/ns/net"

// netnsCookie returns the cookie of the calling thread's network namespace,
// the one the proxy listens in.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open socket: %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("get netns cookie: %w", err)
	}
	return v, nil
}

func (d *Datapath) writeConfig(cfg Config) error {
	var c bpf.InterlockConfig
	if len(cfg.Resolvers) > MaxResolvers {
		return fmt.Errorf("write config: %d resolvers, at most %d", len(cfg.Resolvers), MaxResolvers)
	}
	if cfg.Proxy4.IsValid() {
		if !cfg.Proxy4.Addr().Unmap().Is4() {
			return fmt.Errorf("write config: proxy4 %s is not IPv4", cfg.Proxy4)
		}
		c.Proxy4.W = words(cfg.Proxy4.Addr())
		c.Proxy4Port = cfg.Proxy4.Port()
	}
	if cfg.Proxy6.IsValid() {
		if cfg.Proxy6.Addr().Is4() || cfg.Proxy6.Addr().Is4In6() {
			return fmt.Errorf("write config: proxy6 %s is not IPv6", cfg.Proxy6)
		}
		c.Proxy6.W = words(cfg.Proxy6.Addr())
		c.Proxy6Port = cfg.Proxy6.Port()
	}
	for _, p := range []struct {
		ap   netip.AddrPort
		v4   bool
		addr *[4]uint32
		port *uint16
	}{{cfg.DNS4, true, &c.Dns4.W, &c.Dns4Port}, {cfg.DNS6, false, &c.Dns6.W, &c.Dns6Port}} {
		if !p.ap.IsValid() {
			continue
		}
		if a := p.ap.Addr(); a.Unmap().Is4() != p.v4 {
			return fmt.Errorf("write config: DNS proxy address %s is of the other family", p.ap)
		}
		*p.addr = words(p.ap.Addr())
		*p.port = p.ap.Port()
	}
	c.SelfCgroup = cfg.SelfCgroupID
	for i, r := range cfg.Resolvers {
		c.Resolvers[i].Addr.W = words(r.Addr())
		c.Resolvers[i].Port = r.Port()
	}
	c.ResolverCount = uint32(len(cfg.Resolvers))
	if err := d.maps.ConfigMap.Put(uint32(0), &c); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// Close releases the loader's file descriptors and stops ReadDenyEvent. The
// pinned links and maps, and so enforcement, stay.
func (d *Datapath) Close() error {
	var errs []error
	if d.events != nil {
		errs = append(errs, d.events.Close())
	}
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	for _, p := range d.progs {
		errs = append(errs, p.Close())
	}
	errs = append(errs, d.maps.Close())
	return errors.Join(errs...)
}

// replaceLSM attaches prog to its LSM hook and pins the link in place of the
// one a predecessor pinned. LSM links cannot swap their program, so for a
// moment both run: the new link is pinned under a second name first, then
// takes the old one's name, so at every moment one of them is pinned.
func replaceLSM(path string, p program, prog *ebpf.Program) (link.Link, error) {
	old, err := link.LoadPinnedLink(path, nil)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	if old != nil {
		defer old.Close()
	}
	l, err := link.AttachLSM(link.LSMOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", p.name, err)
	}
	if old == nil {
		if err := l.Pin(path); err != nil {
			l.Close()
			return nil, fmt.Errorf("pin %s at %s: %w", p.name, path, err)
		}
		return l, nil
	}
	tmp := path + "_new"
	os.Remove(tmp)
	if err := l.Pin(tmp); err != nil {
		l.Close()
		return nil, fmt.Errorf("pin %s at %s: %w", p.name, tmp, err)
	}
	if err := old.Unpin(); err != nil {
		l.Unpin()
		l.Close()
		return nil, fmt.Errorf("unpin the previous %s: %w", p.name, err)
	}
	// A link may be pinned under several names: pin it at path, then drop
	// the second name.
	if err := l.Pin(path); err != nil {
		l.Unpin()
		l.Close()
		return nil, fmt.Errorf("pin %s at %s: %w", p.name, path, err)
	}
	os.Remove(tmp)
	return l, nil
}

// Pinned reports whether anything of Interlock's (a link, a map, a
// namespace's link) is pinned under pinDir.
func Pinned(pinDir string) bool {
	paths := []string{filepath.Join(pinDir, netnsPinDir)}
	for _, name := range linkNames() {
		paths = append(paths, linkPin(pinDir, name))
	}
	for _, name := range mapNames {
		paths = append(paths, filepath.Join(pinDir, name))
	}
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return true
		}
	}
	return false
}

// Uninstall detaches every link pinned under pinDir and removes the pins of
// links and maps: the only way to stop enforcement. Missing pins are not an
// error, so it can be repeated.
func Uninstall(pinDir string) error {
	errs := []error{uninstallNetns(pinDir)}
	for _, name := range linkNames() {
		path := linkPin(pinDir, name)
		l, err := link.LoadPinnedLink(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("load pinned link %s: %w", path, err))
			continue
		}
		// Detach first: a running daemon may still hold the link open.
		// Kernels before 6.x cannot detach an LSM link; it goes when
		// its pin and the daemon's handle are gone.
		if err := l.Detach(); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
			errs = append(errs, fmt.Errorf("detach %s: %w", name, err))
		}
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", name, err))
		}
		l.Close()
	}
	for _, name := range mapNames {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin map %s: %w", name, err))
		}
	}
	// The directory goes too unless it is a mount point or holds others' pins.
	if err := os.Remove(pinDir); err != nil && !errors.Is(err, os.ErrNotExist) &&
		!errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.ENOTEMPTY) {
		errs = append(errs, fmt.Errorf("remove pin dir: %w", err))
	}
	return errors.Join(errs...)
}
