package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/proxy"
)

// Identify implements proxy.Identifier: the kernel's record of the connect
// gives the identity and the original destination; /proc adds the
// executable and cgroup path while the process is still there.
func (d *Daemon) Identify(peer, local netip.AddrPort) (proxy.Identity, netip.AddrPort, error) {
	o, err := d.dp.Lookup(peer, local)
	if err != nil {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("look up %s -> %s: %w", peer, local, err)
	}
	if d.isOwnEndpoint(o.Dst) {
		// interlockd's own listeners are never reachable through the proxy:
		// an agent must not reach the reviewers' page, nor loop the proxy
		// into itself.
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s targets interlockd itself (%s)", peer, o.Dst)
	}
	name := d.ids.name(o.Identity)
	if name == "" {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s carries unknown identity id %d", peer, o.Identity)
	}
	id := proxy.Identity{
		Name: name, PID: o.PID, UID: o.UID, GID: o.GID, Comm: o.Comm,
		CgroupID: o.CgroupID, NetnsCookie: o.NetnsCookie,
	}
	// The process may already be gone; the kernel's fields still stand.
	id.Exe, _ = os.Readlink(fmt.Sprintf("/proc/%d/exe", o.PID))
	id.Cgroup, _ = control.CgroupOf(int(o.PID))
	return id, o.Dst, nil
}

func (d *Daemon) isOwnEndpoint(dst netip.AddrPort) bool {
	if !dst.Addr().Unmap().IsLoopback() && !dst.Addr().IsUnspecified() {
		return false
	}
	if dst.Port() == d.cfg.ListenPort {
		return true
	}
	for _, l := range d.listeners {
		if l.Addr().(*net.TCPAddr).AddrPort().Port() == dst.Port() {
			return true
		}
	}
	for _, own := range []string{d.cfg.Approvals.WebListen, d.cfg.MetricsListen} {
		if w, err := netip.ParseAddrPort(own); err == nil && w.Port() == dst.Port() {
			return true
		}
	}
	return false
}
