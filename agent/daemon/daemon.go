// Package daemon is interlockd: it arms the data path, serves the control
// socket and runs the proxy. Run is the whole lifecycle; cmd/interlockd only
// parses flags and handles signals.
package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/config"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/session"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/version"
	"github.com/interlock-dev/interlock/policy"
)

// execDir is the child of the cgroup root under which `interlock exec`
// creates one cgroup per command.
const execDir = "interlock-exec"

// Daemon is one running interlockd. Its methods are safe for concurrent use.
type Daemon struct {
	cfg config.Config
	log zerolog.Logger

	mount      string // cgroup2 mount point
	root       string // absolute cgroup dir the programs are attached at
	self       uint64 // interlockd's own cgroup when inside root: never tagged
	dp         *datapath.Datapath
	ids        *identities
	policy     *policy.Engine
	policySrc  string
	policyText atomic.Pointer[control.PolicyText] // what `policy explain` decides with
	proxy      *proxy.Server
	listeners  []*net.TCPListener // bound to ephemeral ports, served the proxy port by the data path
	ctl        *http.Server
	controlGID int // -1: only root may use the control API
	started    time.Time
	creds      *credentials.Manager
	ca         *ca.Authority        // signs the certificates agents' TLS ends at
	sshHost    *ca.SSHHostAuthority // certifies the host keys agents' SSH ends at
	sshUser    *ca.SSHUserAuthority // certifies the session keys interlockd logs in upstream with
	host       string
	store      *store.Store
	chain      *audit.Log // every audit event: the event log and the hash chain in the store
	recorder   *recording.Recorder
	approvals  *approvals.Service
	metrics    *metrics.Metrics
	dns        *dnsServer  // answers tagged DNS (dns.go)
	containers *containers // asks the container runtime who a caller is (containers.go)
	sessions   *session.Pipeline
	// placeholders are the releases of the credentials behind each exec
	// cgroup's placeholders (exec.go).
	placeholderMu sync.Mutex
	placeholders  map[string][]func()
	// rules keeps the policy's kernel rules in the maps (start, reload,
	// tag, target refresh) and explains the refusals they make.
	rules *datapath.PolicyRules
	// tagGen counts untags; open sessions re-check their identity when it
	// moves, so an untag applies to their next statement. tagChanged is
	// when the latest change of the tag map (tag or untag) had returned,
	// the latest of any whatever order they end in; an untag sets it
	// before tagGen moves.
	tagGen     atomic.Uint64
	tagChanged atomic.Pointer[time.Time]

	uninstalled chan struct{}
	// stopping is closed when Run begins to shut down.
	stopping chan struct{}
	once     sync.Once
}

// New prepares a daemon: it checks the kernel, finds the cgroup hierarchy
// and loads the policy, but arms nothing yet.
func New(cfg config.Config, log zerolog.Logger) (*Daemon, error) {
	if err := datapath.CheckKernel(); err != nil {
		return nil, err
	}
	mount, err := datapath.CgroupMount()
	if err != nil {
		return nil, err
	}
	root := cfg.CgroupRoot
	if root == "" {
		root = mount
	}
	root = filepath.Clean(root)
	if root != mount && !strings.HasPrefix(root, mount+"/") {
		return nil, fmt.Errorf("cgroup root %s is not inside the cgroup2 mount %s", root, mount)
	}
	if st, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil || st.IsDir() {
		return nil, fmt.Errorf("cgroup root %s is not a cgroup2 directory", root)
	}
	if err := checkProxyPort(cfg.ListenPort); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	if n, err := secureStateDir(cfg.StateDir); err != nil {
		return nil, err
	} else if n > 0 {
		log.Warn().Str("state_dir", cfg.StateDir).Int("modes_changed", n).Msg("state was readable by others; now owner only")
	}
	ids, err := loadIdentities(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg: cfg, log: log,
		mount: mount, root: root, ids: ids, controlGID: -1, started: time.Now(),
		uninstalled: make(chan struct{}), stopping: make(chan struct{}),
	}
	if cfg.ControlGroup != "" {
		gid, err := lookupGroup(cfg.ControlGroup)
		if err != nil {
			return nil, err
		}
		d.controlGID = gid
	}
	pol, text, err := loadPolicy(cfg.Policy)
	if err != nil {
		return nil, err
	}
	if err := d.openCA(); err != nil {
		return nil, err
	}
	d.policy, d.policySrc = policy.NewEngine(pol), text.Policy
	d.policyText.Store(text)
	// Map fill is read at scrape time, once the data path is open.
	d.metrics = metrics.New(version.Version, version.Revision(), func() (map[string][2]int, error) {
		if d.dp == nil {
			return nil, nil
		}
		return d.dp.MapFill()
	})
	d.metrics.WatchLearned(func() int { return d.policy.Current().Learned() })
	if d.creds, err = d.openCredentials(); err != nil {
		return nil, err
	}
	if err := d.checkCredentials(context.Background(), pol); err != nil {
		d.creds.Close()
		return nil, err
	}
	if err := d.openStore(); err != nil {
		d.creds.Close()
		return nil, err
	}
	d.metrics.WatchRecordings(func() bool { return d.recorder.Stopped() != nil })
	return d, nil
}

// loadPolicy loads the policy file (or the embedded default) the one way
// policy.Load documents, at start and on reload alike. It also returns the
// text it compiled, for `interlock policy explain`.
func loadPolicy(path string) (*policy.Policy, *control.PolicyText, error) {
	p, err := policy.Load(context.Background(), policy.Source{Path: path}, policy.Options{})
	if err != nil {
		return nil, nil, err
	}
	return p, &control.PolicyText{Policy: p.Name(), Text: string(p.Text())}, nil
}

// refreshTargets re-resolves host-name targets, so a database that moves
// keeps being recognised and a name that did not resolve at load is picked
// up once it does; a failed lookup keeps the last addresses. It runs until
// ctx ends.
func (d *Daemon) refreshTargets(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, err := range d.policy.Current().ResolveTargets(ctx) {
			d.log.Warn().Err(err).Msg("refresh policy target")
		}
		// The kernel redirects a target's addresses and refuses the rest:
		// addresses that moved must move there too.
		changed, err := d.rules.Refresh(d.policy.Current, d.ids.all())
		if err != nil {
			d.log.Error().Err(err).Msg("refresh kernel rules")
		}
		for _, name := range changed {
			d.log.Info().Str("identity", name).Msg("kernel rules follow the targets' refreshed addresses")
		}
	}
}

// Run arms the data path and serves until ctx ends or the data path is
// uninstalled. When it returns, the pinned programs stay in force (fail
// closed) unless `interlock uninstall` removed them.
func (d *Daemon) Run(ctx context.Context, ready func()) error {
	port := d.cfg.ListenPort
	// The listeners take ephemeral ports, which no other process can hold:
	// the data path delivers 127.0.0.1:port and [::1]:port to them, so a
	// process squatting the proxy port can neither keep interlockd from
	// starting nor receive a single redirected connection.
	for _, network := range []string{"tcp4", "tcp6"} {
		addr := "127.0.0.1:0"
		if network == "tcp6" {
			addr = "[::1]:0"
		}
		l, err := proxy.Listen(ctx, network, addr)
		if err != nil {
			d.closeListeners()
			return err
		}
		d.listeners = append(d.listeners, l)
	}
	defer d.closeListeners()

	configured, err := d.cfg.Resolvers()
	if err != nil {
		return err
	}
	if d.dns, err = d.listenDNS(port, dnsResolvers(configured)); err != nil {
		return err
	}
	defer d.dns.close()
	dns4, dns6 := d.dns.addrs()
	selfID, err := d.selfCgroup()
	if err != nil {
		return err
	}
	d.self = selfID
	if err := ensureBPFFS(d.cfg.BPFFS); err != nil {
		return err
	}
	if err := os.MkdirAll(d.cfg.BPFFS, 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	d.dp, err = datapath.Open(datapath.Config{
		CgroupRoot:   d.root,
		PinDir:       d.cfg.BPFFS,
		Proxy4:       netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		Proxy6:       netip.AddrPortFrom(netip.IPv6Loopback(), port),
		SelfCgroupID: selfID,
		Resolvers:    d.dns.resolvers,
		DNS4:         dns4,
		DNS6:         dns6,
	})
	if err != nil {
		return fmt.Errorf("arm data path: %w", err)
	}
	defer d.dp.Close()
	for _, l := range d.listeners {
		if err := d.dp.ServeListener(l); err != nil {
			return fmt.Errorf("arm data path: %w", err)
		}
	}
	if err := d.dns.arm(d.dp); err != nil {
		return fmt.Errorf("arm data path: %w", err)
	}
	for _, gap := range d.dp.Gaps() {
		d.log.Warn().Str("gap", gap).Msg("not enforced on this kernel")
	}
	d.rules = datapath.NewPolicyRules(d.dp)
	if err := d.applyNetworkPolicy(d.policy.Current(), nil); err != nil {
		return err
	}

	// Credentials a crashed predecessor left behind are revoked before any
	// new session can start.
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := d.creds.Recover(rctx); err != nil {
		return fmt.Errorf("recover credentials: %w", err)
	}
	defer d.creds.Close()
	defer d.closeStore()
	if n, err := d.recorder.SealAbandoned(rctx); err != nil {
		d.log.Warn().Err(err).Msg("seal recordings of a previous run")
	} else if n > 0 {
		d.log.Info().Int("sessions", n).Msg("sealed recordings a previous run left open")
	}
	if n, err := d.approvals.CancelOrphans(rctx); err == nil && n > 0 {
		d.log.Info().Int("approvals", n).Msg("cancelled approvals a previous run left pending")
	}
	stopWeb, err := d.serveWeb()
	if err != nil {
		return err
	}
	defer stopWeb()
	stopMetrics, err := d.serveMetrics()
	if err != nil {
		return err
	}
	defer stopMetrics()
	d.chain.Record(audit.DaemonStarted{Version: version.Version, PID: os.Getpid()})

	ctlL, err := control.Listen(d.cfg.Socket, d.controlGID)
	if err != nil {
		return err
	}
	d.ctl = control.NewServer(d.routes())
	defer func() {
		// Graceful: the answer to the request that stopped us (uninstall)
		// still reaches its caller.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.ctl.Shutdown(sctx)
	}()

	d.sessions = session.New(session.Config{
		Policy: d.policy, Credentials: d.creds, Recorder: d.recorder, Approvals: d.approvals, SSHHost: d.sshHost.HostSigner, SSHUser: d.sshUser.SignUser,
		Audit: d.chain, Metrics: d.metrics, Tags: tagTable{d}, Limits: d.cfg.Limits, HTTP: d.cfg.HTTP, Own: d.isOwnEndpoint,
		TLS: func(addr netip.Addr) *tls.Config { return d.ca.ServerConfig(addr) },
		Log: d.log.With().Str("component", "session").Logger(),
	})
	// Before the credentials manager closes (deferred earlier, so it runs
	// later): a parked server connection is closed before its role is
	// dropped, as at any session's end.
	defer d.sessions.Close()
	d.containers = newContainers(d.cfg.DockerSocket)
	d.proxy = proxy.NewServer(containerIdentifier{d: d, next: d.sessions}, d.dns.handler(d.sessions), d.log.With().Str("component", "proxy").Logger())
	d.proxy.Paused = d.metrics.AcceptPauses.Inc
	// The control routes read the session pipeline and the proxy (status,
	// exec's placeholders): they are served once both exist. A client that
	// connects sooner waits in the socket's backlog.
	go d.ctl.Serve(ctlL)
	// A listener that can no longer accept stops interlockd, which exits
	// with the error: tagged connects are then refused until its service
	// restarts it, not left waiting on a listener nobody serves. (Running
	// out of descriptors or memory pauses accepting; see proxy.ServeWith.)
	unserved := make(chan error, len(d.listeners))
	for _, l := range d.listeners {
		go func() {
			err := d.proxy.Serve(l)
			if err == nil {
				err = fmt.Errorf("proxy listener %s: stopped", l.Addr())
			}
			unserved <- err
		}()
	}
	namespacesDone := make(chan struct{})
	go d.serveNamespaces(ctx, namespacesDone)
	d.dns.serve(ctx)
	go d.readDenyEvents()
	// The samplers that write the data path's maps end, and are waited
	// for, once the daemon stops: the maps' descriptors close after Run.
	mctx, stopMaintaining := context.WithCancel(ctx)
	var maintaining sync.WaitGroup
	maintaining.Go(func() { d.collectExecCgroups(mctx) })
	maintaining.Go(func() { d.refreshTargets(mctx) })
	go d.returnMemoryWhenQuiet(ctx)
	go d.adaptParallelism(ctx)
	d.warnPolicy(d.policy.Current())

	bound := make([]string, 0, len(d.listeners))
	for _, l := range d.listeners {
		bound = append(bound, l.Addr().String())
	}
	d.log.Info().Str("cgroup_root", d.root).Str("bpffs", d.cfg.BPFFS).Uint16("port", port).
		Strs("listeners", bound).Str("socket", d.cfg.Socket).Str("policy", d.policySrc).Msg("data path armed; serving")
	if ready != nil {
		ready()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case <-d.uninstalled:
	case runErr = <-unserved:
		d.log.Error().Err(runErr).Msg("a proxy listener failed; stopping")
	}
	close(d.stopping)
	d.closeListeners()
	<-namespacesDone
	stopMaintaining()
	maintaining.Wait()
	d.dns.close()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d.proxy.Shutdown(sctx)
	d.log.Info().Msg("stopped")
	return runErr
}

func (d *Daemon) closeListeners() {
	for _, l := range d.listeners {
		l.Close()
	}
}

// selfCgroup returns the cgroup whose sockets the programs must leave
// alone: interlockd's own, when it lies inside the attached subtree (on a
// systemd host, interlock.service under the root). Outside the subtree the
// programs never see the daemon, and 0 exempts nothing. A daemon sitting in
// the subtree's root cgroup itself would exempt every task, so it moves into
// a child cgroup of its own first.
func (d *Daemon) selfCgroup() (uint64, error) {
	rel, err := control.CgroupOf(os.Getpid())
	if err != nil {
		return 0, err
	}
	abs := filepath.Join(d.mount, rel)
	switch {
	case abs == d.root:
		id, err := datapath.EnterOwnCgroup(d.root, "interlockd")
		if err != nil {
			return 0, fmt.Errorf("leave the cgroup root: %w", err)
		}
		return id, nil
	case d.isUnderRoot(rel):
		return datapath.CgroupID(abs)
	}
	return 0, nil
}

// isUnderRoot reports whether a cgroup path relative to the mount lies in
// the attached subtree.
func (d *Daemon) isUnderRoot(rel string) bool {
	abs := filepath.Join(d.mount, rel)
	return abs == d.root || strings.HasPrefix(abs, d.root+"/")
}

// Reload replaces the policy from its file. An invalid file is refused and
// the policy in force stays.
func (d *Daemon) Reload() error {
	pol, text, err := loadPolicy(d.cfg.Policy)
	if err == nil {
		err = d.checkCredentials(context.Background(), pol)
	}
	if err == nil {
		// What relayed DNS answers taught the policy in force carries
		// over, so connects to those addresses keep their target.
		pol.KeepLearned(d.policy.Current())
		// Swapped while the rules are held: a refresh or a tag after it
		// pushes the new policy's rules, never the old one's.
		err = d.applyNetworkPolicy(pol, func() { d.policy.Swap(pol) })
	}
	if err != nil {
		d.chain.Record(audit.PolicyReloaded{Path: d.cfg.Policy, Error: err.Error()})
		return err
	}
	d.policySrc = text.Policy
	d.policyText.Store(text)
	d.warnPolicy(pol)
	d.chain.Record(audit.PolicyReloaded{Path: text.Policy, SHA256: pol.SHA256(), Rules: pol.RuleCount()})
	return nil
}

// warnPolicy logs what of the policy p in force, and of the credentials
// block beside it, has no effect.
func (d *Daemon) warnPolicy(p *policy.Policy) {
	for _, w := range p.Warnings() {
		d.log.Warn().Str("policy", d.policySrc).Msg(w)
	}
	for _, w := range credentialWarnings(d.cfg.Credentials, p) {
		d.log.Warn().Str("policy", d.policySrc).Msg(w)
	}
}

// applyNetworkPolicy pushes the kernel's share of p into the maps for
// every identity, then calls then (nil for none) before any other push;
// what this kernel cannot enforce is logged.
func (d *Daemon) applyNetworkPolicy(p *policy.Policy, then func()) error {
	unenforced, err := d.rules.Apply(p, d.ids.all(), then)
	for _, w := range unenforced {
		d.log.Warn().Err(w).Msg("not enforced on this kernel")
	}
	return err
}

// applyIdentityRules pushes the kernel rules of one identity under the
// policy in force.
func (d *Daemon) applyIdentityRules(name string, id uint32) error {
	unenforced, err := d.rules.ApplyIdentity(d.policy.Current, name, id)
	for _, w := range unenforced {
		d.log.Warn().Err(w).Str("identity", name).Msg("not enforced on this kernel")
	}
	return err
}

func (d *Daemon) readDenyEvents() {
	for {
		ev, err := d.dp.ReadDenyEvent()
		if err != nil {
			return
		}
		if ev.Reason == datapath.ReasonAccepted {
			d.chain.Record(audit.KernelAccepted{Identity: d.ids.name(ev.Identity), CgroupID: ev.CgroupID, Peer: ev.Dst.String()})
			continue
		}
		reason := string(ev.Reason)
		if ev.Reason == datapath.ReasonTCPRule {
			reason = d.rules.DenyReason(ev.Identity, ev.Dst)
		}
		d.metrics.KernelDenials.WithLabelValues(reason).Inc()
		e := audit.KernelDenied{Reason: reason, Identity: d.ids.name(ev.Identity),
			PID: ev.PID, UID: ev.UID, Comm: ev.Comm, Path: ev.Path}
		// Socket creations and unix connects have no address.
		if ev.Dst.IsValid() {
			e.Dst = ev.Dst.String()
		}
		if ev.Reason == datapath.ReasonSockopt {
			e.Level, e.Optname = ev.Detail>>16, ev.Detail&0xffff
		}
		d.chain.Record(e)
	}
}

// resolvers returns the DNS servers of a resolv.conf, port 53.
func resolvers(path string) []netip.AddrPort {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil {
				out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
			}
		}
	}
	return out
}
