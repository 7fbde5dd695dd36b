package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/bpf"
)

// words returns a as the programs store addresses: 16 bytes, IPv4 mapped
// into IPv6, as four words whose memory holds network byte order.
func words(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// fromWords undoes words, unmapping IPv4-mapped addresses.
func fromWords(w [4]uint32) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[4*i:], w[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// Tag makes the cgroup with the given id, and every cgroup below it, run as
// identity: their TCP connects follow the identity's rules (redirect by
// default) and their other ways out are restricted. The deepest tagged
// cgroup names a task's identity; the kernel walks 32 levels from the cgroup2
// root, so a tag on a cgroup deeper than that is not seen.
func (d *Datapath) Tag(cgroupID uint64, identity uint32) error {
	if err := d.maps.TaggedCgroups.Put(cgroupID, identity); err != nil {
		return fmt.Errorf("tag cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Untag removes a tag; connections already open keep going (the proxy
// re-checks identity per request). Untagging an untagged cgroup is no error.
func (d *Datapath) Untag(cgroupID uint64) error {
	if err := d.maps.TaggedCgroups.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untag cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Tagged returns every tagged cgroup id and its identity.
func (d *Datapath) Tagged() (map[uint64]uint32, error) {
	out := map[uint64]uint32{}
	var (
		id    uint64
		ident uint32
	)
	it := d.maps.TaggedCgroups.Iterate()
	for it.Next(&id, &ident) {
		out[id] = ident
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list tagged cgroups: %w", err)
	}
	return out, nil
}

// TaggedID reports whether the cgroup with the kernel id id carries a tag
// itself, and which identity.
func (d *Datapath) TaggedID(id uint64) (identity uint32, tagged bool, err error) {
	err = d.maps.TaggedCgroups.Lookup(id, &identity)
	switch {
	case err == nil:
		return identity, true, nil
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return 0, false, nil
	}
	return 0, false, fmt.Errorf("check tagged cgroup %d: %w", id, err)
}

// TaggedPath reports whether the cgroup at rel (relative to the cgroup2
// mount, as in the "0::/a/b" line of /proc/PID/cgroup) or one of its
// ancestors is tagged, and with which identity (the deepest tag wins, as in
// the kernel).
func (d *Datapath) TaggedPath(mount, rel string) (identity uint32, tagged bool, err error) {
	rel = path.Clean("/" + rel)
	for {
		id, err := CgroupID(filepath.Join(mount, rel))
		if err != nil {
			return 0, false, fmt.Errorf("check tagged path: %w", err)
		}
		if ident, ok, err := d.TaggedID(id); err != nil || ok {
			return ident, ok, err
		}
		if rel == "/" {
			return 0, false, nil
		}
		rel = path.Dir(rel)
	}
}

// Verdict is what a tagged TCP connect matching a Rule does.
type Verdict uint8

const (
	// Redirect sends the connect to the proxy: the default.
	Redirect Verdict = iota
	// Deny fails the connect with EPERM and sends a deny event.
	Deny
	// Pass lets the connect reach its destination directly.
	Pass
)

// Rule matches a destination: an address in Prefix (IPv4 prefixes match
// IPv4-mapped IPv6 destinations too) and a port in [PortMin, PortMax];
// PortMax 0 means 65535.
type Rule struct {
	Prefix           netip.Prefix
	PortMin, PortMax uint16
	Verdict          Verdict
}

// Match returns the index of the first of rules that dst matches, as the
// programs evaluate them (IPv4 held IPv4-mapped, so ::/0 matches IPv4 too),
// or -1 when none does: which rule decided a connect, for a deny event to
// say why.
func Match(rules []Rule, dst netip.AddrPort) int {
	a := netip.AddrFrom16(dst.Addr().As16())
	for i, r := range rules {
		p := r.Prefix.Masked()
		if p.Addr().Is4() {
			p = netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96)
		}
		max := r.PortMax
		if max == 0 {
			max = 65535
		}
		if p.Contains(a) && dst.Port() >= r.PortMin && dst.Port() <= max {
			return i
		}
	}
	return -1
}

func ruleSet(rules []Rule) (bpf.InterlockRuleSet, error) {
	var s bpf.InterlockRuleSet
	if len(rules) > MaxRules {
		return s, fmt.Errorf("%d rules, at most %d", len(rules), MaxRules)
	}
	for i, r := range rules {
		if !r.Prefix.IsValid() {
			return s, fmt.Errorf("rule %d: invalid prefix", i)
		}
		max := r.PortMax
		if max == 0 {
			max = 65535
		}
		if r.PortMin > max {
			return s, fmt.Errorf("rule %d: port range %d-%d is empty", i, r.PortMin, max)
		}
		var v bpf.InterlockVerdict
		switch r.Verdict {
		case Redirect:
			v = bpf.InterlockVerdictVERDICT_REDIRECT
		case Deny:
			v = bpf.InterlockVerdictVERDICT_DENY
		case Pass:
			v = bpf.InterlockVerdictVERDICT_PASS
		default:
			return s, fmt.Errorf("rule %d: unknown verdict %d", i, r.Verdict)
		}
		p := r.Prefix.Masked()
		bits := p.Bits()
		if p.Addr().Is4() {
			bits += 96
		}
		var mask [16]byte
		for b := 0; b < bits; b++ {
			mask[b/8] |= 0x80 >> (b % 8)
		}
		s.Rules[i].Addr.W = words(p.Addr())
		s.Rules[i].Mask.W = words(netip.AddrFrom16(mask))
		s.Rules[i].PortMin = r.PortMin
		s.Rules[i].PortMax = max
		s.Rules[i].Verdict = uint32(v)
	}
	s.Count = uint32(len(rules))
	return s, nil
}

func setRules(m *ebpf.Map, identity uint32, rules []Rule) error {
	if len(rules) == 0 {
		if err := m.Delete(identity); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
		return nil
	}
	s, err := ruleSet(rules)
	if err != nil {
		return err
	}
	return m.Put(identity, &s)
}

// SetRules replaces the ordered TCP intercept rules of an identity (at most
// MaxRules; first match wins; no match redirects). The change applies to the
// next connect; a nil slice restores the default.
func (d *Datapath) SetRules(identity uint32, rules []Rule) error {
	if err := setRules(d.maps.TcpRules, identity, rules); err != nil {
		return fmt.Errorf("set tcp rules of %d: %w", identity, err)
	}
	return nil
}

// SetUDPAllow replaces the UDP destinations an identity may reach directly:
// a matching rule allows unless its Verdict is Deny. At most MaxRules. DNS
// (port 53, Config.Resolvers) goes to interlockd whatever they say.
func (d *Datapath) SetUDPAllow(identity uint32, rules []Rule) error {
	if err := setRules(d.maps.UdpRules, identity, rules); err != nil {
		return fmt.Errorf("set udp rules of %d: %w", identity, err)
	}
	return nil
}

// SetDenyUnix replaces the unix socket paths tagged tasks may not connect
// to or send datagrams to (at most MaxUnixPaths). The kernel side drops
// repeated slashes and "." segments before comparing, so //x and /./x match
// /x; relative paths, symlinks and ".." are not resolved (SetAllowUnix is
// the answer to those). Abstract names are written "@name". Below kernel
// 6.7 it returns an error wrapping ErrUnsupported.
func (d *Datapath) SetDenyUnix(paths []string) error {
	if d.progs[bpf.InterlockProgConnectUnix] == nil {
		return fmt.Errorf("deny unix connects: cgroup/connect_unix needs kernel %d.%d: %w",
			UnixConnectFloor[0], UnixConnectFloor[1], ErrUnsupported)
	}
	if len(paths) > MaxUnixPaths {
		return fmt.Errorf("deny unix connects: %d paths, at most %d", len(paths), MaxUnixPaths)
	}
	want := map[bpf.InterlockUnixPath]bool{}
	for _, p := range paths {
		k, err := unixKey(p)
		if err != nil {
			return fmt.Errorf("deny unix connects: %w", err)
		}
		want[bpf.InterlockUnixPath{Path: k}] = true
	}
	var (
		k     bpf.InterlockUnixPath
		v     uint8
		stale []bpf.InterlockUnixPath
	)
	it := d.maps.DeniedUnix.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("deny unix connects: %w", err)
	}
	for k := range want {
		if err := d.maps.DeniedUnix.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("deny unix connects: %w", err)
		}
	}
	for _, k := range stale {
		if err := d.maps.DeniedUnix.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deny unix connects: %w", err)
		}
	}
	return nil
}

// SetListen replaces the addresses and ports an identity's tasks may bind
// besides loopback (at most MaxRules): a matching rule allows unless its
// Verdict is Deny. Without one, bind() to any non-loopback address, the
// wildcard included, fails with EPERM, and SYNs from other hosts to the
// identity's listeners are dropped. Binds to port 0 pass whatever the
// rules: a listener bound so hears no other host unless a rule names its
// address and the port it got. A nil slice allows no listening.
func (d *Datapath) SetListen(identity uint32, rules []Rule) error {
	if err := setRules(d.maps.ListenRules, identity, rules); err != nil {
		return fmt.Errorf("set listen rules of %d: %w", identity, err)
	}
	return nil
}

// unixKey returns the map form of a unix socket path: the bytes as given,
// NUL-padded; an abstract name is written "@name".
func unixKey(p string) ([len(bpf.InterlockUnixPath{}.Path)]int8, error) {
	var k [len(bpf.InterlockUnixPath{}.Path)]int8
	if p == "" || len(p) > len(k)-1 {
		return k, fmt.Errorf("path %q is empty or too long", p)
	}
	for i := 0; i < len(p); i++ {
		k[i] = int8(p[i])
	}
	return k, nil
}

// SetAllowUnix turns an identity's unix allow-list on (paths non-nil) or
// off (nil): while on, its tasks' unix connects and datagram sends reach
// only the listed paths and abstract names ("@name"); everything else,
// relative paths included, fails with EPERM. Paths are compared after the
// kernel side drops repeated slashes and "." segments, so list them in that
// form. Below kernel 6.7 it returns an error wrapping ErrUnsupported.
func (d *Datapath) SetAllowUnix(identity uint32, paths []string) error {
	if d.progs[bpf.InterlockProgConnectUnix] == nil {
		return fmt.Errorf("allow unix paths: cgroup/connect_unix needs kernel %d.%d: %w",
			UnixConnectFloor[0], UnixConnectFloor[1], ErrUnsupported)
	}
	want := map[bpf.InterlockUnixAllowKey]bool{}
	for _, p := range paths {
		k, err := unixKey(p)
		if err != nil {
			return fmt.Errorf("allow unix paths of %d: %w", identity, err)
		}
		want[bpf.InterlockUnixAllowKey{Identity: identity, Path: k}] = true
	}
	var (
		k     bpf.InterlockUnixAllowKey
		v     uint8
		stale []bpf.InterlockUnixAllowKey
		n     int
	)
	it := d.maps.UnixAllowed.Iterate()
	for it.Next(&k, &v) {
		if k.Identity == identity && !want[k] {
			stale = append(stale, k)
		} else if k.Identity != identity {
			n++
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("allow unix paths of %d: %w", identity, err)
	}
	if n+len(want) > MaxAllowedUnixPaths {
		return fmt.Errorf("allow unix paths of %d: %d paths in all, at most %d", identity, n+len(want), MaxAllowedUnixPaths)
	}
	// Paths go in before the mode is switched on, and the mode goes off
	// before they are removed, so no moment refuses a listed path.
	for k := range want {
		if err := d.maps.UnixAllowed.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("allow unix paths of %d: %w", identity, err)
		}
	}
	if paths != nil {
		if err := d.maps.UnixAllowOn.Put(identity, uint8(1)); err != nil {
			return fmt.Errorf("allow unix paths of %d: %w", identity, err)
		}
	} else if err := d.maps.UnixAllowOn.Delete(identity); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("allow unix paths of %d: %w", identity, err)
	}
	for _, k := range stale {
		if err := d.maps.UnixAllowed.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("allow unix paths of %d: %w", identity, err)
		}
	}
	return nil
}

// Origin is what the kernel recorded when a tagged task connected.
type Origin struct {
	Dst         netip.AddrPort // original destination; IPv4-mapped IPv6 is unmapped to IPv4
	PID         uint32         // thread group id
	UID, GID    uint32
	CgroupID    uint64 // the task's own cgroup (possibly below the tagged one)
	Identity    uint32
	Comm        string
	NetnsCookie uint64
	// Time is when the kernel took the connect (or DNS datagram), read
	// before its tag lookup.
	Time time.Time
}

func (d *Datapath) origin(o *bpf.InterlockOrigin) Origin {
	return Origin{
		Dst:         netip.AddrPortFrom(fromWords(o.Dst.W), o.DstPort),
		PID:         o.Pid,
		UID:         o.Uid,
		GID:         o.Gid,
		CgroupID:    o.CgroupId,
		Identity:    o.Identity,
		Comm:        cString(o.Comm[:]),
		NetnsCookie: o.NetnsCookie,
		Time:        monoToTime(o.TimeNs),
	}
}

// cString returns the bytes of a NUL-terminated C char array.
func cString(cs []int8) string {
	b := make([]byte, 0, len(cs))
	for _, c := range cs {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// monoToTime converts a bpf_ktime_get_ns (CLOCK_MONOTONIC) stamp to wall
// time.
func monoToTime(ns uint64) time.Time {
	if ns == 0 || monoBase.mono == 0 {
		return time.Time{}
	}
	// Go's monotonic clock is CLOCK_MONOTONIC too: the time since the base
	// gives the clock's reading now without a system call (clock_gettime
	// is one through x/sys/unix, and was a sixth of a lookup).
	now := time.Now()
	mono := monoBase.mono + uint64(now.Sub(monoBase.at))
	return now.Add(-time.Duration(mono - ns))
}

// monoBase is a CLOCK_MONOTONIC reading and the time.Now taken with it.
var monoBase = func() (b struct {
	at   time.Time
	mono uint64
}) {
	var ts unix.Timespec
	b.at = time.Now()
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
		b.mono = uint64(ts.Nano())
	}
	return b
}()

// Lookup returns and removes the record of a redirected connection, found
// by the tuple the proxy sees at accept: peer is the connection's remote
// address (the agent socket), local the accepted socket's local address (the
// listener's). Both IPv4 and IPv6 listeners work, including IPv4-mapped
// peers on dual-stack ones. Each connection can be looked up once; an error
// wrapping ErrNotFound means it was not redirected in this network namespace.
func (d *Datapath) Lookup(peer, local netip.AddrPort) (Origin, error) {
	return d.LookupIn(d.netnsCookie, peer, local)
}

// LookupIn is Lookup for a connection accepted in the network namespace
// whose cookie is netns: on the listeners of a Netns.
func (d *Datapath) LookupIn(netns uint64, peer, local netip.AddrPort) (Origin, error) {
	k := bpf.InterlockTuple{NetnsCookie: netns, LocalPort: peer.Port(), RemotePort: local.Port()}
	k.Local.W = words(peer.Addr())
	k.Remote.W = words(local.Addr())
	var o bpf.InterlockOrigin
	if err := d.maps.ConnOrigins.LookupAndDelete(&k, &o); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, fmt.Errorf("look up %s -> %s: %w", peer, local, ErrNotFound)
		}
		return Origin{}, fmt.Errorf("look up %s -> %s: %w", peer, local, err)
	}
	return d.origin(&o), nil
}

// LookupDNS returns the record of the steered DNS socket a datagram came
// from: peer is its source (the agent socket), local the DNS proxy address
// it was sent to (Config.DNS4 or DNS6). Dst is the resolver the agent
// asked. The record stays (a socket may ask many questions), refreshed by
// every datagram it sends; an error wrapping ErrNotFound means the datagram
// was not steered in this network namespace.
func (d *Datapath) LookupDNS(peer, local netip.AddrPort) (Origin, error) {
	return d.LookupDNSIn(d.netnsCookie, peer, local)
}

// LookupDNSIn is LookupDNS for a datagram received in the network namespace
// whose cookie is netns: on the DNS sockets of a Netns.
func (d *Datapath) LookupDNSIn(netns uint64, peer, local netip.AddrPort) (Origin, error) {
	k := bpf.InterlockTuple{NetnsCookie: netns, LocalPort: peer.Port(), RemotePort: local.Port()}
	k.Local.W = words(peer.Addr())
	k.Remote.W = words(local.Addr())
	var o bpf.InterlockOrigin
	if err := d.maps.DnsOrigins.Lookup(&k, &o); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, fmt.Errorf("look up dns %s -> %s: %w", peer, local, ErrNotFound)
		}
		return Origin{}, fmt.Errorf("look up dns %s -> %s: %w", peer, local, err)
	}
	return d.origin(&o), nil
}
