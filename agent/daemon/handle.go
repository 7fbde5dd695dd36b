package daemon

import (
	"context"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/policy"
)

// dialTimeout bounds the upstream connect; the agent's own connect already
// succeeded (to the proxy), so this is the only wait it sees.
const dialTimeout = 10 * time.Second

// handle serves one redirected connection: find the target, decide, relay.
func (d *Daemon) handle(ctx context.Context, c *proxy.Conn) {
	pol := d.policy.Current()
	target := pol.TargetFor(c.Dst.Addr(), c.Dst.Port())
	subj := subjectOf(c.Identity)
	if pol.NeedsExeHash() {
		subj.ExeSHA256 = exeHash(c.Identity.PID)
	}
	log := d.log.With().Str("conn", c.ID).Str("identity", c.Identity.Name).Logger()
	d.auditOpen(c, target)
	switch {
	case target != nil && target.Protocol == "postgres":
		d.servePostgres(ctx, c, target, &subj, log)
	default:
		d.serveTCP(c, pol, target, &subj, log)
	}
}

// serveTCP gives a connection without a protocol decoder its L4 decision
// and, if allowed, a plain relay with byte counts.
func (d *Daemon) serveTCP(c *proxy.Conn, pol *policy.Policy, target *policy.Target, subj *policy.Subject, log zerolog.Logger) {
	defer c.Client.Close()
	dec := pol.Decide(&policy.Input{Subject: subj, Target: target, Protocol: "tcp", Op: policy.Operation{Kind: policy.OpConnect}})
	d.auditDecision(c, target, "connect", dec)
	if dec.Action != policy.Allow {
		// A reset, not a clean close: the agent must not mistake a refusal
		// for a server that hung up.
		c.Client.SetLinger(0)
		d.auditClose(c, target, "denied", 0, 0)
		return
	}
	up, err := net.DialTimeout("tcp", upstreamAddr(c, target), dialTimeout)
	if err != nil {
		log.Warn().Err(err).Msg("upstream connect failed")
		c.Client.SetLinger(0)
		d.auditClose(c, target, "upstream unreachable", 0, 0)
		return
	}
	defer up.Close()
	sent, recv := proxy.Relay(c.Client, up.(*net.TCPConn))
	d.auditClose(c, target, "closed", sent, recv)
}

// upstreamAddr is where interlockd connects for c: the target's configured
// upstream, or the agent's original destination.
func upstreamAddr(c *proxy.Conn, t *policy.Target) string {
	if t != nil && t.Upstream != "" {
		return t.Upstream
	}
	return c.Dst.String()
}

func subjectOf(id proxy.Identity) policy.Subject {
	return policy.Subject{
		Tag: id.Name, UID: id.UID, GID: id.GID, PID: int(id.PID),
		Comm: id.Comm, Exe: id.Exe, CgroupPath: id.Cgroup, Unit: unitOf(id.Cgroup),
	}
}

func targetName(t *policy.Target) string {
	if t == nil {
		return ""
	}
	return t.Name
}

func (d *Daemon) auditOpen(c *proxy.Conn, t *policy.Target) {
	d.audit.Info().Str("event", "connection_open").Str("conn", c.ID).
		Str("identity", c.Identity.Name).Uint32("pid", c.Identity.PID).Uint32("uid", c.Identity.UID).
		Uint32("gid", c.Identity.GID).Str("comm", c.Identity.Comm).Str("exe", c.Identity.Exe).
		Str("cgroup", c.Identity.Cgroup).Uint64("cgroup_id", c.Identity.CgroupID).
		Str("dst", c.Dst.String()).Str("peer", c.Client.RemoteAddr().String()).
		Str("target", targetName(t)).Msg("connection opened")
}

func (d *Daemon) auditDecision(c *proxy.Conn, t *policy.Target, op string, dec policy.Decision) {
	d.audit.Info().Str("event", "decision").Str("conn", c.ID).Str("identity", c.Identity.Name).
		Str("target", targetName(t)).Str("op", op).Str("action", dec.Action.String()).
		Str("rule", dec.Rule).Str("message", dec.Message).Msg("decided")
}

func (d *Daemon) auditClose(c *proxy.Conn, t *policy.Target, outcome string, sent, recv int64) {
	d.audit.Info().Str("event", "connection_close").Str("conn", c.ID).Str("identity", c.Identity.Name).
		Str("target", targetName(t)).Str("dst", c.Dst.String()).Str("outcome", outcome).
		Int64("bytes_sent", sent).Int64("bytes_received", recv).
		Dur("duration", time.Since(c.Accepted)).Msg("connection closed")
}

func (d *Daemon) auditCredential(c *proxy.Conn, t *policy.Target, event string) {
	d.audit.Info().Str("event", event).Str("conn", c.ID).Str("identity", c.Identity.Name).
		Str("target", targetName(t)).Msg(event)
}
