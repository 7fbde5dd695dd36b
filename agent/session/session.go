// Package session is the connection path: it owns one redirected
// connection from accept to close, whatever its protocol.
//
//	proxy.Server accept
//	  -> Identify        the kernel's record of the connect (Tags): identity,
//	                     pid/uid/gid/comm, original destination; /proc adds
//	                     the executable and cgroup path
//	  -> Serve           one connection record (conn): the policy subject,
//	                     the store session, the approval request and every
//	                     audit event are built from it
//	       target        policy.TargetFor(identity, original destination);
//	                     for an http target named by hosts, chosen later by the
//	                     name the decoder reads (TLS server name, Host):
//	                     protocol.Session.Select, see byName
//	       L4 decision   policy.Decide(OpConnect), audited; audit mode lets
//	                     a "would deny" through
//	       limits        the identity's session slot and buffer budget
//	       decoder       decoders[target.Protocol].Serve(protocol.Session):
//	                       Upstream   dial the target; Credential issues the
//	                                  session's credential (audited, revoked
//	                                  at the end)
//	                       Enforcer   a decision per request: the policy in
//	                                  force now, the identity as tagged now,
//	                                  approvals held here; audited
//	                       Recorder   the session's recording, started when
//	                                  the decoder says the session began
//	       or relay      a target with no decoder gets the plain TCP relay
//	  -> close           seal the recording, revoke, audit the outcome
//
// Every audit event goes through audit.Log.Record, which writes the event
// log and the hash chain together. A protocol plugs in by implementing
// protocol.Decoder (decoders/protocol) and being listed in New.
package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	gossh "golang.org/x/crypto/ssh"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/config"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/decoders/postgres"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/decoders/ssh"
	"github.com/interlock-dev/interlock/policy"
)

// handshakeTimeout bounds everything before a session's first request: the
// agent's handshake, issuing the credential, the upstream login.
const handshakeTimeout = 30 * time.Second

// dialTimeout bounds the upstream connect; the agent's own connect already
// succeeded (to the proxy), so this is the only wait it sees.
const dialTimeout = 10 * time.Second

// Tags is the tag table as the kernel holds it.
type Tags interface {
	// Origin returns the kernel's record of the redirected connect from
	// peer to local and the name of the identity it was made under ("" if
	// the identity is unknown).
	Origin(peer, local netip.AddrPort) (datapath.Origin, string, error)
	// IdentityOf returns the identity the cgroup carries now, through
	// itself or an ancestor; "" if none. cgroupID is its kernel id (0 if
	// unknown), cgroup its path relative to the cgroup2 mount.
	IdentityOf(cgroupID uint64, cgroup string) string
	// Generation changes whenever a tag is removed, so sessions know when
	// to ask IdentityOf again.
	Generation() uint64
	// SettledAt returns the generation now and whether the tags have not
	// changed since at (no tag or untag returned after it): a tag lookup
	// begun at at or later found what IdentityOf would find now.
	SettledAt(at time.Time) (generation uint64, settled bool)
}

// Config is what the pipeline depends on.
type Config struct {
	Policy      *policy.Engine
	Credentials *credentials.Manager
	Recorder    *recording.Recorder
	Approvals   *approvals.Service
	Audit       *audit.Log
	Metrics     *metrics.Metrics
	Tags        Tags
	// TLS returns the configuration that terminates an agent's TLS, with
	// certificates for the name it asked for (addr when it sent none).
	TLS    func(addr netip.Addr) *tls.Config
	Limits config.Limits
	// HTTP bounds the HTTP decoder's sessions.
	HTTP config.HTTP
	// Own reports whether a destination is one of interlockd's own
	// endpoints, which no agent may reach through the proxy.
	Own func(dst netip.AddrPort) bool
	// SSHHost returns a host key certified by Interlock's SSH host CA for
	// principals, which interlockd presents to agents it terminates SSH
	// for.
	SSHHost func(principals []string) (gossh.Signer, error)
	// SSHUser certifies a session's public key (authorized_keys form) for
	// one login user with Interlock's SSH user CA, the credential of an
	// SSH target that names none; keyID names the session. It returns the
	// certificate in authorized_keys form.
	SSHUser func(publicKey []byte, user, keyID string) ([]byte, error)
	Log     zerolog.Logger
}

// Pipeline serves redirected connections. It implements proxy.Identifier
// and proxy.Handler. Safe for concurrent use.
type Pipeline struct {
	cfg      Config
	decoders map[string]protocol.Decoder
	limits   sessionLimits
	// secrets are the credentials sessions hold now and the placeholders
	// standing for them: the leak guard's (see httpGuard).
	secrets secretSet
	// caFiles are the targets' upstream_ca files, parsed.
	caFiles caFiles
	// servers are the server connections ended sessions left for the
	// next ones (credentials.ReuseConfig).
	servers servers
}

// New returns a pipeline with the decoders of this build.
func New(cfg Config) *Pipeline {
	p := &Pipeline{cfg: cfg}
	// The HTTP decoder's caps come from interlockd.yaml; its guard is this
	// pipeline's leak guard.
	httpDec := cfg.HTTP.Decoder(p.httpTarget)
	httpDec.Guard = httpGuard{p}
	p.decoders = map[string]protocol.Decoder{
		"postgres": &postgres.Decoder{},
		"ssh":      &ssh.Decoder{Target: p.sshTarget},
		"http":     httpDec,
	}
	return p
}

// Protocols lists the protocols the pipeline decodes: those of its
// decoders, and "tcp", the plain relay.
func (p *Pipeline) Protocols() []string {
	out := []string{"tcp"}
	for name := range p.decoders {
		out = append(out, name)
	}
	return out
}

// Identify implements proxy.Identifier: the kernel's record of the connect
// gives the identity and the original destination; /proc adds the
// executable and cgroup path while the process is still there.
func (p *Pipeline) Identify(peer, local netip.AddrPort) (proxy.Identity, netip.AddrPort, error) {
	o, name, err := p.cfg.Tags.Origin(peer, local)
	if err != nil {
		return proxy.Identity{}, netip.AddrPort{}, err
	}
	if p.cfg.Own != nil && p.cfg.Own(o.Dst) {
		// interlockd's own listeners are never reachable through the proxy:
		// an agent must not reach the reviewers' page, nor loop the proxy
		// into itself.
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s targets interlockd itself (%s)", peer, o.Dst)
	}
	if name == "" {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s carries unknown identity id %d", peer, o.Identity)
	}
	id, err := IdentityOf(o, name)
	if err != nil {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s: %w", peer, err)
	}
	return id, o.Dst, nil
}

// IdentityOf is the caller the kernel recorded in o, under the identity
// name, with what /proc adds while the process is still there: the
// executable and cgroup path. DNS questions, which are no sessions, are
// identified with it too.
//
// The process may already be gone, and then the kernel's fields stand
// alone (Identity.Gone; SubjectOf refuses it to a policy that needs more).
// Any other failure to read /proc is an error: identities select on
// the executable and the cgroup (its unit), and a caller taken for one
// whose path is unknown would escape the identities that name its own
// (an agent that keeps interlockd out of descriptors could make every
// read fail).
func IdentityOf(o datapath.Origin, name string) (proxy.Identity, error) {
	id := proxy.Identity{
		Name: name, PID: o.PID, UID: o.UID, GID: o.GID, Comm: o.Comm,
		CgroupID: o.CgroupID, NetnsCookie: o.NetnsCookie, Connected: o.Time,
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", o.PID))
	switch {
	case err == nil:
		id.Exe = exe
	case processGone(err):
		id.Gone = true
	default:
		return proxy.Identity{}, fmt.Errorf("read the executable of pid %d: %w", o.PID, err)
	}
	if id.Cgroup, err = cgroupOf(o.CgroupID, o.PID); err != nil {
		return proxy.Identity{}, err
	}
	if id.Cgroup == "" {
		id.Gone = true
	}
	return id, nil
}

// processGone reports whether a read of /proc failed because the process
// has exited.
func processGone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH)
}

// Handle implements proxy.Handler: it serves one connection until it ends.
func (p *Pipeline) Handle(ctx context.Context, pc *proxy.Conn) {
	p.cfg.Metrics.Active.Inc()
	// What comes before the decoder and after it are functions of their
	// own, so that their locals are off this goroutine's stack while the
	// decoder serves: an idle session parks it there, and the runtime
	// halves a parked goroutine's stack only while it uses under a quarter.
	sv, ok := p.open(ctx, pc)
	if !ok {
		p.cfg.Metrics.Active.Dec()
		pc.Client.Close()
		return
	}
	// A decoder that detaches (protocol.ErrDetached) ends the session
	// later, on a goroutine of its own; the connection stays held.
	sv.pc, sv.release = pc, pc.Hold()
	sv.s.Finish = sv.endDetached
	if err := sv.serve(); err != protocol.ErrDetached {
		sv.end(err)
	}
}

// serve runs the session's decoder. A panic in it ends this session, with
// the defect as how it ended (protocol.Contained), not interlockd.
func (sv *served) serve() (err error) {
	defer protocol.Recover("session", &err)
	return sv.decoder.Serve(sv.ctx, sv.s)
}

// served is a connection handed to its decoder: what serving it needs
// after the decoder returns.
type served struct {
	p       *Pipeline
	pc      *proxy.Conn
	release func() // of pc's Hold
	c       *conn
	decoder protocol.Decoder
	s       *protocol.Session
	ctx     context.Context
	cut     context.CancelCauseFunc
	rec     *recorder
	up      *upstream
	slot    bool // the identity's session slot is held
}

// open decides the connection and, for a protocol with a decoder, sets up
// its session; ok is false when the connection was served here (the plain
// relay) or refused.
func (p *Pipeline) open(ctx context.Context, pc *proxy.Conn) (sv *served, ok bool) {
	m := p.cfg.Metrics
	pol := p.cfg.Policy.Current()
	c, err := newConn(pc, pol)
	if err != nil {
		// As the proxy refuses a caller it cannot identify.
		p.cfg.Log.Warn().Err(err).Str("peer", pc.Client.RemoteAddr().String()).Str("identity", pc.Identity.Name).
			Msg("refusing unidentified connection")
		return nil, false
	}
	// A connection for an http target named by hosts is decided once its
	// decoder has read the name (see byName); any other here.
	var byAddr *policy.Target
	if pol.ChoosesByName(c.target, pc.Dst.Port()) {
		byAddr, c.target, c.byName = c.target, nil, "http"
	}
	p.record(c.opened())
	var connect protocol.Verdict
	if c.byName == "" {
		dec := pol.Decide(&policy.Input{Subject: &c.subject, Target: c.target, Protocol: c.protocol(), Op: policy.Operation{Kind: policy.OpConnect}})
		mode := pol.Mode(&c.subject, c.target)
		decisionCounter(m, dec, mode).Inc()
		p.record(c.decision("CONNECT", "", dec, mode == policy.Enforce))
		if p.decoders[c.protocol()] == nil {
			p.relay(ctx, c, pol, dec, mode)
			return nil, false
		}
		connect = protocol.Verdict{Action: protocol.Allow}
		if mode == policy.Enforce {
			connect = verdictOf(dec)
		}
	}
	decoder := p.decoders[c.protocol()]
	// The slot is taken before the handshake, so connections left half-open
	// count too.
	lim := p.cfg.Limits.For(c.identity.Name)
	var refuse *protocol.LimitError
	slot := p.limits.acquire(sessionSlot, c.identity.Name, lim.Sessions)
	if !slot {
		refuse = &protocol.LimitError{Limit: "sessions",
			Msg: fmt.Sprintf("identity %q already has %d sessions open, its limit", c.identity.Name, lim.Sessions)}
	}
	up := &upstream{p: p, c: c}
	// The session's row is written while it goes on; a store that refuses
	// the row ends it (recorder.Start).
	ctx, cut := context.WithCancelCause(ctx)
	rec := &recorder{p: p, c: c, cut: cut}
	s := &protocol.Session{
		ID: c.id, Identity: c.identity.Name, Agent: rawsock.Wrap(pc.Client), Dst: pc.Dst, Target: c.targetName(),
		TLS: p.agentTLS(pc.Dst.Addr()), Connect: connect, Refuse: refuse, Handshake: handshakeTimeout,
		Limits:   protocol.Limits{MaxBuffered: int(lim.SessionBuffer), MessageTimeout: lim.MessageTimeout},
		Upstream: up, Enforcer: &enforcer{p: p, c: c, rec: rec}, Recorder: rec,
	}
	if lim.IdentityBuffer > 0 {
		s.Limits.Budget = p.limits.budget(c.identity.Name, int64(lim.IdentityBuffer))
	}
	if c.byName != "" {
		s.Select = p.byName(c, byAddr, pc.Dst.Port())
	}
	return &served{p: p, c: c, decoder: decoder, s: s, ctx: ctx, cut: cut, rec: rec, up: up, slot: slot}, true
}

// agentTLS is a session's protocol.Session.TLS: the configuration for
// an agent that connected to addr, made when the decoder asks for it.
func (p *Pipeline) agentTLS(addr netip.Addr) func() *tls.Config {
	if p.cfg.TLS == nil {
		return nil
	}
	return func() *tls.Config { return p.cfg.TLS(addr) }
}

// end ends a session its decoder has served, with how Serve ended (or
// what it reported through protocol.Session.Finish).
func (sv *served) end(err error) {
	p, c := sv.p, sv.c
	// Deferred, so that a defect below still closes the connection and
	// lets the proxy stop tracking it.
	defer sv.release()
	defer sv.pc.Client.Close()
	// The decoder closed the agent's connection: its slot is free now, not
	// once its end is stored, which may wait for a commit shared with other
	// writes (store.EndSessionShared).
	if sv.slot {
		p.limits.release(sessionSlot, c.identity.Name)
	}
	var refused *protocol.RefusedError
	if cause := context.Cause(sv.ctx); errors.As(cause, &refused) {
		err = cause
	}
	end := c.closed(err)
	if rs := sv.rec.finish(end.Outcome); rs != nil {
		end.BytesIn, end.BytesOut, end.Messages = rs.BytesIn, rs.BytesOut, rs.Messages
	}
	sv.up.revoke()
	p.end(c, end)
	sv.cut(nil)
	p.cfg.Metrics.Active.Dec()
}

// endDetached is end for a session its decoder detached
// (protocol.ErrDetached): it runs on a goroutine of the decoder's, after
// the decoder's own code, where nothing above contains a panic. One is
// logged as a defect (the connection still closed and released by end's
// defers), as serveConn logs those on the goroutines it runs.
func (sv *served) endDetached(err error) {
	defer func() {
		if ie := protocol.Contained("session end", recover()); ie != nil {
			proxy.LogDefect(&sv.p.cfg.Log, ie, "conn", sv.c.id)
		}
	}()
	sv.end(err)
}

// closed turns how a decoder's session ended into its audit outcome; end
// records the events the error warrants.
func (c *conn) closed(err error) audit.ConnectionClosed {
	end := c.end("closed", "")
	var (
		refused   *protocol.RefusedError
		violation *protocol.ViolationError
		limit     *protocol.LimitError
		internal  *protocol.InternalError
	)
	switch {
	case err == nil:
	case errors.As(err, &internal):
		end.Outcome, end.Reason = "internal error", internal.Error()
	case errors.As(err, &limit):
		end.Outcome, end.Reason = "limit exceeded", limit.Msg
		if !c.begun {
			end.Outcome = "session limit"
		}
	case errors.As(err, &violation):
		end.Outcome, end.Reason = "protocol violation", violation.Msg
		if !c.begun {
			end.Outcome = "handshake"
		}
	case errors.As(err, &refused):
		end.Outcome, end.Reason = refused.Outcome, refused.Err.Error()
	default:
		end.Outcome, end.Reason = "error", err.Error()
		if !c.begun {
			end.Outcome = "handshake"
		}
	}
	c.ending = err
	return end
}

// end records a connection's close: the ProtocolError or LimitExceeded that
// ended it, if one did, then ConnectionClosed.
func (p *Pipeline) end(c *conn, end audit.ConnectionClosed) {
	var (
		violation *protocol.ViolationError
		limit     *protocol.LimitError
		internal  *protocol.InternalError
	)
	switch {
	case errors.As(c.ending, &internal):
		proxy.LogDefect(&p.cfg.Log, internal, "conn", c.id)
	case errors.As(c.ending, &limit):
		p.record(audit.LimitExceeded{Session: c.id, Identity: c.identity.Name, Target: c.targetName(), Limit: limit.Limit, Error: limit.Msg})
	case errors.As(c.ending, &violation):
		p.record(audit.ProtocolError{Session: c.id, Identity: c.identity.Name, Target: c.targetName(), Error: violation.Msg})
	}
	end.Duration = time.Since(c.accepted)
	p.cfg.Metrics.Connections.WithLabelValues(c.protocol(), end.Outcome).Inc()
	p.record(end)
}

// record writes ev to the event log and the audit chain.
func (p *Pipeline) record(ev audit.Event) { p.cfg.Audit.Record(ev) }

// relay gives a connection without a protocol decoder its L4 decision and,
// if allowed, a plain relay with byte counts.
func (p *Pipeline) relay(ctx context.Context, c *conn, pol *policy.Policy, dec policy.Decision, mode policy.Mode) {
	client := c.client
	if dec.Action != policy.Allow && mode == policy.Enforce {
		// A reset, not a clean close: the agent must not mistake a refusal
		// for a server that hung up.
		client.SetLinger(0)
		p.end(c, c.end("denied", denyReason(pol, &c.subject, dec)))
		return
	}
	release, limit := p.HoldConnection(c.identity.Name)
	if limit != nil {
		client.SetLinger(0)
		c.ending = limit
		p.end(c, c.end("connection limit", limit.Msg))
		return
	}
	defer release()
	up, err := dialUpstream(ctx, c.upstreamAddr())
	if err != nil {
		p.cfg.Log.Warn().Err(err).Str("conn", c.id).Msg("upstream connect failed")
		client.SetLinger(0)
		p.end(c, c.end("upstream unreachable", err.Error()))
		return
	}
	defer up.Close()
	// Both sides wrapped: the server's side read the plain way took a
	// 32 KiB buffer of its own for every connection, and the runtime's
	// syscall entry (see rawsock.Wrap) for every read.
	sent, recv, defect := protocol.Relay(rawsock.Wrap(client), rawsock.Wrap(up))
	end := c.closed(defect)
	end.BytesIn, end.BytesOut = sent, recv
	p.end(c, end)
}

// HoldConnection takes one of identity's slots for a connection served
// without a decoder (a plain TCP relay, DNS over TCP), or returns the
// limit it is over (limits.connections), which the caller refuses the
// connection with. Each held connection is one or two of interlockd's
// descriptors and some of its memory: an agent holding them by the
// thousand would leave none for the others'.
func (p *Pipeline) HoldConnection(identity string) (release func(), over *protocol.LimitError) {
	capped := p.cfg.Limits.For(identity).Connections
	if !p.limits.acquire(connectionSlot, identity, capped) {
		return nil, &protocol.LimitError{Limit: "connections",
			Msg: fmt.Sprintf("identity %q already has %d plain connections open, its limit", identity, capped)}
	}
	return func() { p.limits.release(connectionSlot, identity) }, nil
}

// HoldQuestion takes one of the max DNS questions over UDP identity may
// have served at once, or reports that it has them all; release gives it
// back. The DNS proxy bounds all identities' questions together too: the
// share keeps one agent flooding it from holding every one.
func (p *Pipeline) HoldQuestion(identity string, max int) (release func(), ok bool) {
	if !p.limits.acquire(questionSlot, identity, max) {
		return nil, false
	}
	return func() { p.limits.release(questionSlot, identity) }, true
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

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}
