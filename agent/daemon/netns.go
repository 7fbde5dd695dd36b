package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/agent/session"
)

// netnsScanInterval is how often the tagged cgroups' tasks are scanned for
// network namespaces to serve or release. A tagged task's connects in a
// namespace not yet served are refused, so this bounds how long a fresh
// container or `ip netns` sandbox waits before it reaches anything.
const netnsScanInterval = 200 * time.Millisecond

// netnsRetry is how long a namespace interlockd failed to enter is left
// alone before the next attempt, so a failure is logged once, not at every
// scan.
const netnsRetry = 5 * time.Second

// serveNamespaces serves every network namespace other than interlockd's
// own that holds a task of a tagged cgroup, and releases those that no
// longer do, until ctx ends or the daemon stops. On the way out the
// namespaces are closed, not released: their pinned links keep tagged
// connects there refused until interlockd is back.
func (d *Daemon) serveNamespaces(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	ns := &namespaces{
		served: map[uint64]*datapath.Netns{},
		failed: map[uint64]time.Time{},
		lostAt: map[uint64]time.Time{},
		lost:   make(chan *datapath.Netns),
		quit:   make(chan struct{}),
	}
	defer func() {
		close(ns.quit)
		for _, n := range ns.served {
			n.Close()
		}
	}()
	t := time.NewTicker(netnsScanInterval)
	defer t.Stop()
	failed := 0 // scans failed in a row
	for {
		// Logged when scans begin to fail and when they work again, not
		// at each: out of descriptors, every scan fails.
		switch err := d.scanNamespaces(ctx, ns); {
		case err != nil && failed == 0:
			d.log.Warn().Err(err).Msg("network namespace scan failed: namespaces are neither served nor released until one works")
			failed++
		case err != nil:
			failed++
		case failed > 0:
			d.log.Info().Int("failed_scans", failed).Msg("network namespace scans work again")
			failed = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-d.stopping:
			return
		case <-d.uninstalled:
			return
		case n := <-ns.lost:
			ns.relisten(n)
		case <-t.C:
		}
	}
}

// namespaces is what serveNamespaces keeps between scans.
type namespaces struct {
	served map[uint64]*datapath.Netns // by inode
	failed map[uint64]time.Time       // when entering one last failed
	lostAt map[uint64]time.Time       // when one's listener last failed
	lost   chan *datapath.Netns       // a served namespace whose listener failed
	quit   chan struct{}              // closed when serveNamespaces returns
}

// relisten closes a served namespace whose listener can no longer accept,
// so that the scan that follows enters it again with new listeners; its
// tagged connects are refused meanwhile. A listener that fails again
// within netnsRetry has its namespace wait that long, as one that cannot
// be entered does, so a failure that repeats does not loop.
func (ns *namespaces) relisten(n *datapath.Netns) {
	if ns.served[n.Inode] != n {
		return // released or entered again since
	}
	delete(ns.served, n.Inode)
	n.Close()
	now := time.Now()
	if now.Sub(ns.lostAt[n.Inode]) < netnsRetry {
		ns.failed[n.Inode] = now
	}
	ns.lostAt[n.Inode] = now
}

// scanNamespaces brings the served namespaces in line with those tagged
// tasks are in now. A namespace it cannot enter or release is logged and
// left to the next scan; the error it returns is the scan's own.
func (d *Daemon) scanNamespaces(ctx context.Context, ns *namespaces) error {
	want, err := d.taggedNamespaces()
	if err != nil {
		return fmt.Errorf("scan tagged tasks: %w", err)
	}
	served, failed := ns.served, ns.failed
	for ino, n := range served {
		if _, ok := want[ino]; ok {
			continue
		}
		delete(served, ino)
		if err := n.Release(); err != nil {
			d.log.Warn().Err(err).Uint64("netns", ino).Msg("release network namespace")
		}
		d.log.Info().Uint64("netns", ino).Uint64("netns_cookie", n.Cookie).Msg("network namespace released: no tagged task left in it")
	}
	for ino, path := range want {
		if served[ino] != nil || time.Since(failed[ino]) < netnsRetry {
			continue
		}
		dns4, dns6 := d.dns.addrs()
		n, err := d.dp.EnterNetns(path, dns4, dns6)
		if err != nil {
			failed[ino] = time.Now()
			d.log.Warn().Err(err).Uint64("netns", ino).Str("path", path).Msg("serve network namespace: tagged connects there are refused")
			continue
		}
		delete(failed, ino)
		served[ino] = n
		id := containerIdentifier{d: d, next: netnsIdentifier{d: d, cookie: n.Cookie}}
		addrs := make([]string, 0, len(n.Listeners))
		for _, l := range n.Listeners {
			addrs = append(addrs, l.Addr().String())
			go func() {
				err := d.proxy.ServeWith(l, id)
				if err == nil {
					return // closed: released, or interlockd stops
				}
				d.log.Error().Err(err).Uint64("netns", ino).Msg("a network namespace's proxy listener failed: entering the namespace again")
				select {
				case ns.lost <- n:
				case <-ns.quit:
				}
			}()
		}
		cookie := n.Cookie
		for _, c := range n.DNS {
			addrs = append(addrs, "udp "+c.LocalAddr().String())
			go d.dns.serveUDP(ctx, c, func(peer, local netip.AddrPort) (datapath.Origin, error) {
				return d.dp.LookupDNSIn(cookie, peer, local)
			})
		}
		if n.DNSErr != nil {
			d.log.Warn().Err(n.DNSErr).Uint64("netns", ino).Msg("network namespace served without DNS for a family: its tagged DNS there is refused")
		}
		d.log.Info().Uint64("netns", ino).Uint64("netns_cookie", n.Cookie).Str("path", path).Strs("listeners", addrs).
			Msg("serving network namespace")
	}
	for _, m := range []map[uint64]time.Time{failed, ns.lostAt} {
		for ino := range m {
			if _, ok := want[ino]; !ok {
				delete(m, ino)
			}
		}
	}
	keep := make(map[uint64]bool, len(served))
	for ino := range served {
		keep[ino] = true
	}
	if _, err := d.dp.SweepNetns(keep); err != nil {
		return fmt.Errorf("drop the links of network namespaces no longer served: %w", err)
	}
	return nil
}

// taggedNamespaces returns the network namespaces, by inode, that tasks of
// tagged cgroups (and their descendants) are in, other than interlockd's
// own, each with the /proc path of one such task's namespace.
//
// It walks the tagged cgroups' subtrees only. It walked the whole cgroup
// root, a stat of every cgroup on the host five times a second for as long
// as anything was tagged: CPU that grows with the host's cgroups (a
// container host has thousands), spent while nothing happens.
func (d *Daemon) taggedNamespaces() (map[uint64]string, error) {
	tags, err := d.dp.Tagged()
	if err != nil {
		return nil, err
	}
	own := d.dp.OwnNetnsInode()
	want := map[uint64]string{}
	if len(tags) == 0 {
		return want, nil
	}
	// The kernel's tags are the truth; the identities file names their
	// cgroups. A tag it cannot name (none should be) sends the walk over
	// the whole root, as before.
	var roots []string
	named := map[uint64]bool{}
	for rel, id := range d.ids.taggedIDs() {
		if _, ok := tags[id]; ok {
			roots = append(roots, filepath.Join(d.mount, rel))
			named[id] = true
		}
	}
	if len(named) < len(tags) {
		roots = []string{d.root}
	}
	// A tagged cgroup under another is walked with it.
	all := slices.Clone(roots)
	roots = slices.DeleteFunc(roots, func(r string) bool {
		return slices.ContainsFunc(all, func(a string) bool { return strings.HasPrefix(r, a+"/") })
	})
	tagged := map[string]bool{}
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return goneOr(err)
			}
			if !e.IsDir() {
				return nil
			}
			info, err := e.Info()
			if err != nil {
				return goneOr(err)
			}
			id := info.Sys().(*syscall.Stat_t).Ino
			if id == d.self {
				return fs.SkipDir
			}
			_, self := tags[id]
			if !self && !tagged[filepath.Dir(path)] {
				return nil
			}
			tagged[path] = true
			pids, err := cgroupPIDs(path)
			if err != nil {
				return goneOr(err)
			}
			for _, pid := range pids {
				p := "/proc/" + strconv.Itoa(pid) + "/ns/net"
				var st syscall.Stat_t
				if syscall.Stat(p, &st) == nil && st.Ino != own {
					want[st.Ino] = p
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("walk %s: %w", root, err)
		}
	}
	return want, nil
}

// goneOr returns nil for an error that says a cgroup went away while it was
// walked (they come and go), and err for any other: a scan that could not
// look (out of descriptors, say) must not take the namespaces it missed
// for empty and release them.
func goneOr(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) {
		return nil
	}
	return err
}

// cgroupPIDs lists the processes in one cgroup (not its descendants).
func cgroupPIDs(dir string) ([]int, error) {
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(sc.Text()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, sc.Err()
}

// netnsIdentifier identifies the connections accepted on the listeners of
// one served network namespace: the kernel keyed their records by that
// namespace's cookie. Otherwise it decides as the session pipeline's
// Identify does, whose tag table looks up interlockd's own namespace only.
type netnsIdentifier struct {
	d      *Daemon
	cookie uint64
}

func (n netnsIdentifier) Identify(peer, local netip.AddrPort) (proxy.Identity, netip.AddrPort, error) {
	o, err := n.d.dp.LookupIn(n.cookie, peer, local)
	if err != nil {
		return proxy.Identity{}, netip.AddrPort{}, err
	}
	// The agent's loopback is its namespace's, not interlockd's, whose
	// upstream connects leave from interlockd's own namespace: relaying
	// would hand the agent the host's local services (interlockd's own
	// listeners among them).
	if a := o.Dst.Addr().Unmap(); a.IsLoopback() || a.IsUnspecified() || n.d.isOwnEndpoint(o.Dst) {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s in network namespace %d targets its own loopback (%s), which is not interlockd's",
			peer, n.cookie, o.Dst)
	}
	name := n.d.ids.name(o.Identity)
	if name == "" {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s carries unknown identity id %d", peer, o.Identity)
	}
	id, err := session.IdentityOf(o, name)
	if err != nil {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s in network namespace %d: %w", peer, n.cookie, err)
	}
	return id, o.Dst, nil
}
