package daemon

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/credentials"
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
	d.metrics.Active.Inc()
	defer d.metrics.Active.Dec()
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
	var (
		outcome    string
		sent, recv int64
	)
	dec := pol.Decide(&policy.Input{Subject: subj, Target: target, Protocol: "tcp", Op: policy.Operation{Kind: policy.OpConnect}})
	mode := pol.Mode(subj, target)
	d.auditDecisionMode(c, target, "connect", dec, mode)
	d.metrics.Decisions.WithLabelValues(dec.Action.String(), dec.Rule, mode.String()).Inc()
	// Plain TCP has no recording to carry its audit records; post them here.
	d.chain.Post(audit.ConnectionOpened{Session: c.ID, Identity: c.Identity.Name, PID: int32(c.Identity.PID),
		UID: c.Identity.UID, Exe: c.Identity.Exe, Cgroup: c.Identity.Cgroup, Target: targetName(target),
		Protocol: "tcp", Client: c.Client.RemoteAddr().String(), Upstream: upstreamAddr(c, target)})
	d.chain.Post(audit.Decision{Session: c.ID, Identity: c.Identity.Name, Target: targetName(target),
		Action: dec.Action.String(), Rule: dec.Rule, Enforced: mode == policy.Enforce, Operation: "CONNECT"})
	// The agent sees a reset whatever the cause; reason tells the operator
	// which it was.
	var reason string
	defer func(start time.Time) {
		d.chain.Post(audit.ConnectionClosed{Session: c.ID, Identity: c.Identity.Name, Target: targetName(target),
			Outcome: outcome, Reason: reason, BytesIn: sent, BytesOut: recv, Duration: time.Since(start)})
	}(c.Accepted)
	if dec.Action != policy.Allow && mode == policy.Enforce {
		// A reset, not a clean close: the agent must not mistake a refusal
		// for a server that hung up.
		c.Client.SetLinger(0)
		outcome, reason = "denied", denyReason(pol, subj, dec)
		d.auditClose(c, target, outcome, reason, 0, 0)
		return
	}
	up, err := net.DialTimeout("tcp", upstreamAddr(c, target), dialTimeout)
	if err != nil {
		log.Warn().Err(err).Msg("upstream connect failed")
		c.Client.SetLinger(0)
		outcome, reason = "upstream unreachable", err.Error()
		d.auditClose(c, target, outcome, reason, 0, 0)
		return
	}
	defer up.Close()
	sent, recv = proxy.Relay(c.Client, up.(*net.TCPConn))
	outcome = "closed"
	d.auditClose(c, target, outcome, "", sent, recv)
}

// denyReason says why the policy refused a connection: the identity is not
// one the policy knows, no rule allows this destination, or a rule denies
// it.
func denyReason(pol *policy.Policy, subj *policy.Subject, dec policy.Decision) string {
	switch {
	case dec.Rule != "default-deny":
		return fmt.Sprintf("denied by rule %q%s", dec.Rule, suffix(dec.Message))
	case len(pol.Identities(nil, subj)) == 0:
		return fmt.Sprintf("unknown identity: no identity of the policy matches tag %q", subj.Tag)
	}
	return "no rule allows this destination (default-deny)"
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
	d.auditDecisionMode(c, t, op, dec, policy.Enforce)
}

// auditDecisionMode logs a decision; in audit mode its action reads
// "would deny", "would hold" or "would mask".
func (d *Daemon) auditDecisionMode(c *proxy.Conn, t *policy.Target, op string, dec policy.Decision, mode policy.Mode) {
	// Every decision is in the hash-chained trail and the recording; the
	// log carries the ones an operator acts on, and allows only at debug
	// level, so a busy session does not cost a log write per statement.
	ev := d.audit.Info()
	if dec.Action == policy.Allow {
		ev = d.audit.Debug()
	}
	// op is SQL for a statement: the log gets it with its literals removed,
	// as the audit trail does; the full text is only in the recording,
	// which is 0600 under the state directory.
	ev.Str("event", "decision").Str("conn", c.ID).Str("identity", c.Identity.Name).
		Str("target", targetName(t)).Stringer("op", audit.SQLStatement(op)).Str("action", mode.Describe(dec.Action)).
		Str("mode", mode.String()).Str("rule", dec.Rule).Str("reason", dec.Message).Msg("decided")
}

// auditClose logs a connection's end; reason, when set, says why it was
// refused or failed.
func (d *Daemon) auditClose(c *proxy.Conn, t *policy.Target, outcome, reason string, sent, recv int64) {
	proto := "tcp"
	if t != nil && t.Protocol != "" {
		proto = t.Protocol
	}
	d.metrics.Connections.WithLabelValues(proto, outcome).Inc()
	d.audit.Info().Str("event", "connection_close").Str("conn", c.ID).Str("identity", c.Identity.Name).
		Str("target", targetName(t)).Str("dst", c.Dst.String()).Str("outcome", outcome).Str("reason", reason).
		Int64("bytes_sent", sent).Int64("bytes_received", recv).
		Int64("duration_ms", time.Since(c.Accepted).Milliseconds()).Msg("connection closed")
}

// auditCredential records a credential's issue or revocation (revokeErr
// set when revocation failed and the journal keeps the lease).
func (d *Daemon) auditCredential(c *proxy.Conn, t *policy.Target, cred credentials.Credential, issued bool, revokeErr error) {
	source := d.creds.SourceName(t.Credential.Source)
	if issued {
		d.chain.Post(audit.CredentialIssued{Session: c.ID, Target: t.Name, Source: source, Username: cred.Username})
		d.audit.Info().Str("event", "credential_issued").Str("conn", c.ID).Str("identity", c.Identity.Name).
			Str("target", t.Name).Str("username", cred.Username).Msg("credential issued")
		return
	}
	ev := audit.CredentialRevoked{Session: c.ID, Target: t.Name, Source: source, Username: cred.Username}
	if revokeErr != nil {
		ev.Error = revokeErr.Error()
	}
	d.chain.Post(ev)
	if revokeErr != nil {
		d.audit.Error().Str("event", "credential_revoked").Str("conn", c.ID).Str("identity", c.Identity.Name).
			Str("target", t.Name).Str("username", cred.Username).Err(revokeErr).Msg("credential not revoked; retrying")
		return
	}
	d.audit.Info().Str("event", "credential_revoked").Str("conn", c.ID).Str("identity", c.Identity.Name).
		Str("target", t.Name).Str("username", cred.Username).Msg("credential revoked")
}
