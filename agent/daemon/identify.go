package daemon

import (
	"net"
	"net/netip"
	"time"

	"github.com/interlock-dev/interlock/agent/datapath"
)

// tagTable is the session pipeline's view of the tags (session.Tags): the
// kernel's maps, named through the identity table.
type tagTable struct{ d *Daemon }

func (t tagTable) Origin(peer, local netip.AddrPort) (datapath.Origin, string, error) {
	o, err := t.d.dp.Lookup(peer, local)
	if err != nil {
		return datapath.Origin{}, "", err
	}
	return o, t.d.ids.name(o.Identity), nil
}

func (t tagTable) IdentityOf(cgroupID uint64, cgroup string) string {
	// Most tags are on the agent's own cgroup (interlock exec's, a unit's,
	// a container's): one map lookup by id, where the walk resolves each
	// path to its id first (a name_to_handle_at through cgroupfs).
	if cgroupID != 0 {
		if id, ok, err := t.d.dp.TaggedID(cgroupID); err == nil && ok {
			return t.d.ids.name(id)
		}
	}
	id, ok, err := t.d.dp.TaggedPath(t.d.mount, cgroup)
	if err != nil || !ok {
		return ""
	}
	return t.d.ids.name(id)
}

func (t tagTable) Generation() uint64 { return t.d.tagGen.Load() }

func (t tagTable) SettledAt(at time.Time) (uint64, bool) {
	g := t.d.tagGen.Load()
	last := t.d.tagChanged.Load()
	return g, !at.IsZero() && (last == nil || at.After(last.Add(tagSettle)))
}

// tagSettle is how long after a change of the tag map returned a
// connect's clock reading must be for its tag lookup to be known to have
// seen the change: far above the time a change takes to reach every CPU.
// (The kernel's readings are converted to Go's clock slightly early,
// which errs the same safe way.)
const tagSettle = time.Millisecond

// tagsChanged records that a change of the tag map returned at t.
func (d *Daemon) tagsChanged(t time.Time) {
	for {
		last := d.tagChanged.Load()
		if last != nil && !t.After(*last) {
			return
		}
		if d.tagChanged.CompareAndSwap(last, &t) {
			return
		}
	}
}

// isOwnEndpoint reports whether dst is one of interlockd's own listeners.
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
