package datapath

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recordingProxy is a fake interlockd proxy: it looks every accepted
// connection up and sends the origin (or the lookup error) on a channel.
type recordingProxy struct {
	*server
	origins chan Origin
	errs    chan error
}

func newProxy(t *testing.T, network, addr string, dp **Datapath) *recordingProxy {
	p := &recordingProxy{origins: make(chan Origin, 16), errs: make(chan error, 16)}
	p.server = listen(t, network, addr, "proxy", func(c net.Conn) string {
		peer := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		o, err := (*dp).Lookup(peer, local)
		if err != nil {
			p.errs <- err
			return "proxy-unknown"
		}
		p.origins <- o
		return "proxy"
	})
	return p
}

func (p *recordingProxy) origin(t *testing.T) Origin {
	t.Helper()
	select {
	case o := <-p.origins:
		return o
	case err := <-p.errs:
		t.Fatalf("proxy lookup: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("proxy saw no connection")
	}
	return Origin{}
}

// comm is what the kernel reports as the helper's comm: the test binary's
// name, cut to 15 bytes.
func comm() string {
	c := filepath.Base(os.Args[0])
	if len(c) > 15 {
		c = c[:15]
	}
	return c
}

func checkOrigin(t *testing.T, o Origin, r result, cgroupID uint64, identity uint32, dst netip.AddrPort) {
	t.Helper()
	if o.PID != uint32(r.PID) || o.UID != uint32(r.UID) || o.GID != uint32(os.Getgid()) {
		t.Errorf("origin pid/uid/gid = %d/%d/%d, want %d/%d/%d", o.PID, o.UID, o.GID, r.PID, r.UID, os.Getgid())
	}
	if o.CgroupID != cgroupID || o.Identity != identity {
		t.Errorf("origin cgroup/identity = %d/%d, want %d/%d", o.CgroupID, o.Identity, cgroupID, identity)
	}
	if o.Dst != dst {
		t.Errorf("origin dst = %s, want %s", o.Dst, dst)
	}
	if o.Comm != comm() {
		t.Errorf("origin comm = %q, want %q", o.Comm, comm())
	}
	if o.NetnsCookie == 0 {
		t.Error("origin netns cookie is zero")
	}
	if d := time.Since(o.Time); d < 0 || d > time.Minute {
		t.Errorf("origin time %s is %s off", o.Time, d)
	}
}

func TestRedirectIPv4(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	proxy := newProxy(t, "tcp", "127.0.0.1:0", &e.dp)
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()

	plain, _ := e.cgroup("plain")
	agent, agentID := e.cgroup("agent")
	child, childID := e.cgroup("agent/child")
	if err := dp.Tag(agentID, 7); err != nil {
		t.Fatal(err)
	}

	r := run(t, plain, "tcp", target.addrPort().String())
	if r.Err != "" || r.Data != "target" {
		t.Fatalf("untagged connect: %+v, want it to reach the target", r)
	}
	if target.accepts.Load() != 1 {
		t.Fatalf("target accepts = %d after the untagged connect", target.accepts.Load())
	}

	for _, c := range []struct {
		name string
		dir  string
		id   uint64
	}{{"tagged", agent, agentID}, {"child of tagged", child, childID}} {
		t.Run(c.name, func(t *testing.T) {
			r := run(t, c.dir, "tcp", target.addrPort().String())
			if r.Err != "" || r.Data != "proxy" {
				t.Fatalf("tagged connect: %+v, want it at the proxy", r)
			}
			if r.Peer != target.addrPort().String() {
				t.Errorf("getpeername = %s, want the original peer %s", r.Peer, target.addrPort())
			}
			checkOrigin(t, proxy.origin(t), r, c.id, 7, target.addrPort())
		})
	}
	if n := target.accepts.Load(); n != 1 {
		t.Errorf("target accepts = %d, want 1 (only the untagged connect)", n)
	}
	tags, err := dp.Tagged()
	if err != nil || len(tags) != 1 || tags[agentID] != 7 {
		t.Errorf("Tagged() = %v, %v", tags, err)
	}
	rel := strings.TrimPrefix(child, e.mount)
	if ident, ok, err := dp.TaggedPath(e.mount, rel); err != nil || !ok || ident != 7 {
		t.Errorf("TaggedPath(%s) = %d, %v, %v; want 7, true", rel, ident, ok, err)
	}
	if _, ok, err := dp.TaggedPath(e.mount, strings.TrimPrefix(plain, e.mount)); err != nil || ok {
		t.Errorf("TaggedPath(plain) = %v, %v; want untagged", ok, err)
	}

	// Untagged again, the agent reaches the target directly.
	if err := dp.Untag(agentID); err != nil {
		t.Fatal(err)
	}
	if r := run(t, agent, "tcp", target.addrPort().String()); r.Data != "target" {
		t.Errorf("after untag: %+v, want the target", r)
	}
}

func TestFailClosedWithoutProxy(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	// A port nothing listens on: the daemon is down.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.cfg.Proxy4 = dead.Addr().(*net.TCPAddr).AddrPort()
	dead.Close()
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 1); err != nil {
		t.Fatal(err)
	}
	r := run(t, agent, "tcp", target.addrPort().String())
	if r.Errno != int(syscall.ECONNREFUSED) {
		t.Errorf("tagged connect with no proxy: %+v, want ECONNREFUSED", r)
	}
	if n := target.accepts.Load(); n != 0 {
		t.Errorf("target accepted %d connections, want 0", n)
	}
	// The refused connection's records are gone.
	fill, err := dp.MapFill()
	if err != nil {
		t.Fatal(err)
	}
	if f := fill["conn_origins"]; f[0] != 0 {
		t.Errorf("conn_origins holds %d records after a refused connect", f[0])
	}
	if f := fill["sock_origins"]; f[0] != 0 {
		t.Errorf("sock_origins holds %d records after a refused connect", f[0])
	}
}

func TestOpenRefusesNonBPFFS(t *testing.T) {
	e := newEnv(t)
	e.cfg.PinDir = t.TempDir()
	_, err := Open(e.cfg)
	if err == nil || !strings.Contains(err.Error(), "not on a bpf filesystem") {
		t.Fatalf("Open on a tmpfs pin dir: %v, want a bpffs error", err)
	}
}

func TestUninstallStopsRedirect(t *testing.T) {
	e := newEnv(t)
	target := listen(t, "tcp", "127.0.0.1:0", "target", nil)
	proxy := newProxy(t, "tcp", "127.0.0.1:0", &e.dp)
	e.cfg.Proxy4 = proxy.addrPort()
	dp := e.open()
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 1); err != nil {
		t.Fatal(err)
	}
	if r := run(t, agent, "tcp", target.addrPort().String()); r.Data != "proxy" {
		t.Fatalf("tagged connect: %+v, want the proxy", r)
	}
	if err := Uninstall(e.cfg.PinDir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(e.cfg.PinDir)
	if len(entries) != 0 {
		t.Errorf("pins left after uninstall: %v", entries)
	}
	// The daemon still holds its link fds: Uninstall must detach anyway.
	if r := run(t, agent, "tcp", target.addrPort().String()); r.Data != "target" {
		t.Errorf("after uninstall: %+v, want the target directly", r)
	}
	if err := dp.Close(); err != nil {
		t.Errorf("close after uninstall: %v", err)
	}
	if err := Uninstall(e.cfg.PinDir); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
}

func TestLookupUnknown(t *testing.T) {
	e := newEnv(t)
	dp := e.open()
	_, err := dp.Lookup(netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2"))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup of an unknown tuple: %v, want ErrNotFound", err)
	}
}
