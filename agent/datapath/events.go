package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/interlock-dev/interlock/bpf"
)

// DenyReason says why the kernel refused a tagged task.
type DenyReason string

// The reasons a deny event carries.
const (
	ReasonTCPRule  DenyReason = "tcp-rule"  // an identity's rule denied a TCP connect
	ReasonUDP      DenyReason = "udp"       // UDP to (or, inbound, from) neither a resolver nor an allowed address
	ReasonSocket   DenyReason = "socket"    // a raw, packet or non-TCP/UDP inet socket
	ReasonUnixPath DenyReason = "unix-path" // a connect to a denied unix socket path
	ReasonNoProxy  DenyReason = "no-proxy"  // no proxy address is configured for the family
	ReasonSockType DenyReason = "sock-type" // a connect on an inet socket neither stream nor datagram
	// ReasonBind: a bind to a non-loopback address no listen rule allows,
	// or a SYN from another host dropped at such a listener.
	ReasonBind DenyReason = "bind"
	// ReasonSockopt: a socket option setting IP options or IPv6 extension
	// headers (Detail holds level<<16 | optname).
	ReasonSockopt DenyReason = "sockopt"
	// ReasonSourceRoute: a packet carrying IPv4 options or an IPv6 routing
	// header, dropped on its way out.
	ReasonSourceRoute DenyReason = "source-route"
	// ReasonAccepted is no refusal: a tagged listener that a listen rule
	// allows accepted a connection from another host; Dst is the peer.
	ReasonAccepted DenyReason = "accepted"
	// ReasonPtrace: ptrace of a task outside the caller's identity (bpf LSM).
	ReasonPtrace DenyReason = "ptrace"
	// ReasonCgroupMove: cgroup.procs or cgroup.threads of a cgroup outside
	// the identity opened for writing, or clone3(CLONE_INTO_CGROUP) (bpf LSM).
	ReasonCgroupMove DenyReason = "cgroup-move"
	// ReasonBPF: the bpf() system call (bpf LSM).
	ReasonBPF DenyReason = "bpf"
)

var reasons = map[bpf.InterlockDenyReason]DenyReason{
	bpf.InterlockDenyReasonDENY_TCP_RULE:     ReasonTCPRule,
	bpf.InterlockDenyReasonDENY_UDP:          ReasonUDP,
	bpf.InterlockDenyReasonDENY_SOCKET:       ReasonSocket,
	bpf.InterlockDenyReasonDENY_UNIX_PATH:    ReasonUnixPath,
	bpf.InterlockDenyReasonDENY_NO_PROXY:     ReasonNoProxy,
	bpf.InterlockDenyReasonDENY_SOCK_TYPE:    ReasonSockType,
	bpf.InterlockDenyReasonDENY_BIND:         ReasonBind,
	bpf.InterlockDenyReasonDENY_SOCKOPT:      ReasonSockopt,
	bpf.InterlockDenyReasonDENY_SOURCE_ROUTE: ReasonSourceRoute,
	bpf.InterlockDenyReasonEVENT_ACCEPT:      ReasonAccepted,
	bpf.InterlockDenyReasonDENY_PTRACE:       ReasonPtrace,
	bpf.InterlockDenyReasonDENY_CGROUP_MOVE:  ReasonCgroupMove,
	bpf.InterlockDenyReasonDENY_BPF:          ReasonBPF,
}

// DenyEvent is one refusal by the kernel, or an accepted inbound
// connection (ReasonAccepted). Origin.Dst is zero for socket creation and
// unix connects. Events raised per packet (ReasonSourceRoute, ReasonBind
// from a SYN, ReasonAccepted) carry no task: PID, UID, GID and Comm are
// zero, CgroupID is the socket's.
type DenyEvent struct {
	Origin
	Reason DenyReason
	// Family, SockType and Protocol are the socket's (AF_*, SOCK_*, IPPROTO_*).
	Family, SockType, Protocol uint32
	// Path is the unix socket path of a ReasonUnixPath event.
	Path string
	// Detail is level<<16 | optname for ReasonSockopt.
	Detail uint32
}

// ReadDenyEvent blocks until the next deny event. Events that arrived while
// no daemon ran wait in the pinned ring buffer (up to its size). After Close
// it returns an error wrapping ErrClosed. One goroutine at a time.
func (d *Datapath) ReadDenyEvent() (DenyEvent, error) {
	rec, err := d.events.Read()
	if err != nil {
		return DenyEvent{}, fmt.Errorf("read deny event: %w", err)
	}
	var e bpf.InterlockDenyEvent
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
		return DenyEvent{}, fmt.Errorf("decode deny event: %w", err)
	}
	ev := DenyEvent{
		Origin:   d.origin(&e.Origin),
		Reason:   reasons[bpf.InterlockDenyReason(e.Reason)],
		Family:   uint32(e.Origin.Family),
		SockType: e.SockType,
		Protocol: e.Protocol,
		Detail:   e.Detail,
	}
	ev.Path = cString(e.Path[:])
	if ev.Reason == "" {
		ev.Reason = DenyReason(fmt.Sprintf("unknown-%d", e.Reason))
	}
	if e.Origin.Dst.W == [4]uint32{} && e.Origin.DstPort == 0 {
		ev.Dst = netip.AddrPort{}
	}
	return ev, nil
}

// MapFill reports, per map name, the entries in use and the capacity; the
// ring buffer is left out. Counting walks the hash maps, so call it at
// metrics-scrape rate, not per connection.
func (d *Datapath) MapFill() (map[string][2]int, error) {
	out := map[string][2]int{}
	for name, m := range map[string]*ebpf.Map{
		bpf.InterlockMapTaggedCgroups:  d.maps.TaggedCgroups,
		bpf.InterlockMapTcpRules:       d.maps.TcpRules,
		bpf.InterlockMapUdpRules:       d.maps.UdpRules,
		bpf.InterlockMapSockOrigins:    d.maps.SockOrigins,
		bpf.InterlockMapConnOrigins:    d.maps.ConnOrigins,
		bpf.InterlockMapDeniedUnix:     d.maps.DeniedUnix,
		bpf.InterlockMapListenRules:    d.maps.ListenRules,
		bpf.InterlockMapPendingAccepts: d.maps.PendingAccepts,
		bpf.InterlockMapUnixAllowed:    d.maps.UnixAllowed,
	} {
		n := 0
		key, err := m.NextKeyBytes(nil)
		for err == nil && key != nil {
			n++
			key, err = m.NextKeyBytes(key)
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("count %s: %w", name, err)
		}
		out[name] = [2]int{n, int(m.MaxEntries())}
	}
	return out, nil
}
