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
	ReasonTCPRule    DenyReason = "tcp-rule"    // an identity's rule denied a TCP connect
	ReasonUDP        DenyReason = "udp"         // UDP to neither a resolver nor an allowed destination
	ReasonSocket     DenyReason = "socket"      // a raw, packet or non-TCP/UDP inet socket
	ReasonUnixPath   DenyReason = "unix-path"   // a connect to a denied unix socket path
	ReasonNoProxy    DenyReason = "no-proxy"    // no proxy address is configured for the family
	ReasonSockType   DenyReason = "sock-type"   // a connect on an inet socket neither stream nor datagram
	ReasonPtrace     DenyReason = "ptrace"      // ptrace of a task outside the caller's identity (bpf LSM)
	ReasonCgroupMove DenyReason = "cgroup-move" // cgroup.procs opened for write, or CLONE_INTO_CGROUP (bpf LSM)
	ReasonBPF        DenyReason = "bpf"         // the bpf() system call (bpf LSM)
)

var reasons = map[bpf.InterlockDenyReason]DenyReason{
	bpf.InterlockDenyReasonDENY_TCP_RULE:    ReasonTCPRule,
	bpf.InterlockDenyReasonDENY_UDP:         ReasonUDP,
	bpf.InterlockDenyReasonDENY_SOCKET:      ReasonSocket,
	bpf.InterlockDenyReasonDENY_UNIX_PATH:   ReasonUnixPath,
	bpf.InterlockDenyReasonDENY_NO_PROXY:    ReasonNoProxy,
	bpf.InterlockDenyReasonDENY_SOCK_TYPE:   ReasonSockType,
	bpf.InterlockDenyReasonDENY_PTRACE:      ReasonPtrace,
	bpf.InterlockDenyReasonDENY_CGROUP_MOVE: ReasonCgroupMove,
	bpf.InterlockDenyReasonDENY_BPF:         ReasonBPF,
}

// DenyEvent is one refusal by the kernel. Origin.Dst is zero for socket
// creation and unix connects.
type DenyEvent struct {
	Origin
	Reason DenyReason
	// Family, SockType and Protocol are the socket's (AF_*, SOCK_*, IPPROTO_*).
	Family, SockType, Protocol uint32
	// Path is the unix socket path of a ReasonUnixPath event.
	Path string
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
		bpf.InterlockMapTaggedCgroups: d.maps.TaggedCgroups,
		bpf.InterlockMapTcpRules:      d.maps.TcpRules,
		bpf.InterlockMapUdpRules:      d.maps.UdpRules,
		bpf.InterlockMapSockOrigins:   d.maps.SockOrigins,
		bpf.InterlockMapConnOrigins:   d.maps.ConnOrigins,
		bpf.InterlockMapDeniedUnix:    d.maps.DeniedUnix,
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
