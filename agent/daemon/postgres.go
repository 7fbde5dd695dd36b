package daemon

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/decoders/postgres"
	"github.com/interlock-dev/interlock/policy"
	"github.com/interlock-dev/interlock/policy/mask"
	"github.com/interlock-dev/interlock/policy/sqlclass"
)

// handshakeTimeout bounds everything before the first query: the agent's
// startup, issuing the credential, the upstream login.
const handshakeTimeout = 30 * time.Second

// overCapHandshake bounds the handshake of a connection over its identity's
// session cap: long enough for a client on this host to send its startup
// and be told, too short for half-open connections to pile up.
const overCapHandshake = 2 * time.Second

// cancelKeys maps the cancel keys interlockd hands agents to the upstream
// backends they stand for, so a CancelRequest through the proxy cancels the
// right query without the agent ever learning the server's secret. The
// agent's key carries the backend's real process ID, which the agent sees
// anyway (pg_backend_pid(), pg_stat_activity), and a secret of interlockd's
// own; two servers may have backends with one PID, so the pair is the key.
type cancelKeys struct {
	mu sync.Mutex
	m  map[cancelID]cancelTarget
}

type cancelID struct {
	pid    uint32
	secret [4]byte
}

type cancelTarget struct {
	upstream string
	key      postgres.CancelKey
	identity string
}

// add registers t and returns the key to give the agent: t's process ID
// with a fresh random secret.
func (k *cancelKeys) add(t cancelTarget) postgres.CancelKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[cancelID]cancelTarget{}
	}
	id := cancelID{pid: t.key.ProcessID}
	for {
		rand.Read(id.secret[:])
		if _, taken := k.m[id]; !taken {
			break
		}
	}
	k.m[id] = t
	return postgres.CancelKey{ProcessID: id.pid, SecretKey: append([]byte(nil), id.secret[:]...)}
}

func (k *cancelKeys) remove(key postgres.CancelKey) {
	k.mu.Lock()
	delete(k.m, cancelID{pid: key.ProcessID, secret: [4]byte(key.SecretKey)})
	k.mu.Unlock()
}

func (k *cancelKeys) find(key postgres.CancelKey) (cancelTarget, bool) {
	if len(key.SecretKey) != 4 {
		return cancelTarget{}, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	t, ok := k.m[cancelID{pid: key.ProcessID, secret: [4]byte(key.SecretKey)}]
	return t, ok
}

// servePostgres runs one PostgreSQL session: the agent's startup is
// answered by interlockd, the upstream login uses a credential issued for
// this session alone, and every statement goes through the policy.
func (d *Daemon) servePostgres(ctx context.Context, c *proxy.Conn, target *policy.Target, subj *policy.Subject, log zerolog.Logger) {
	defer c.Client.Close()
	// The slot is taken before the handshake, so connections left half-open
	// count too. A connection over the cap still gets a short handshake: it
	// may be a cancel request, which needs no slot, and a session is told
	// as a full server tells it.
	lim := d.cfg.Limits.For(c.Identity.Name)
	slot := d.limits.acquire(c.Identity.Name, lim.Sessions)
	if slot {
		defer d.limits.release(c.Identity.Name)
	}
	timeout := handshakeTimeout
	if !slot {
		timeout = overCapHandshake
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// TLS ends here with a leaf for the name the agent dialed (its SNI, or
	// the address it connected to); the upstream connection is separate.
	hello, err := postgres.AcceptClient(hctx, c.Client, postgres.ClientConfig{TLS: d.ca.ServerConfig(c.Dst.Addr())})
	if err != nil {
		var pe *postgres.ProtocolError
		if errors.As(err, &pe) {
			d.chain.Post(audit.ProtocolError{Session: c.ID, Identity: c.Identity.Name, Target: target.Name, Error: pe.Msg})
		}
		d.refusePG(c, target, nil, "handshake", err)
		return
	}
	agent := hello.Conn
	if hello.Cancel != nil {
		d.forwardCancel(c, *hello.Cancel, log)
		return
	}
	pol := d.policy.Current()
	if dec := pol.Decide(&policy.Input{Subject: subj, Target: target, Protocol: "postgres", Op: policy.Operation{Kind: policy.OpConnect}}); dec.Action == policy.Deny {
		mode := pol.Mode(subj, target)
		d.auditDecisionMode(c, target, "connect", dec, mode)
		if mode == policy.Enforce {
			d.refusePG(c, target, agent, "denied", pgError("42501", fmt.Sprintf("interlock: connection denied by policy rule %q%s", dec.Rule, suffix(dec.Message))))
			return
		}
	}
	params := hello.Startup.ForwardParameters()
	settings, err := startupSettings(hello.Startup.Parameters)
	if err != nil {
		dec := policy.Decision{Action: policy.Deny, Rule: "startup-parameters", Message: err.Error()}
		d.auditDecision(c, target, "startup", dec)
		d.refusePG(c, target, agent, "denied", pgError("42501", "interlock: "+err.Error()))
		return
	}
	if !slot {
		msg := fmt.Sprintf("identity %q already has %d sessions open, its limit", c.Identity.Name, lim.Sessions)
		d.auditLimit(c, target, "sessions", msg)
		d.refusePG(c, target, agent, "session limit", pgError("53300", "interlock: sorry, too many sessions: "+msg))
		return
	}
	mode := pol.Mode(subj, target)
	for _, v := range decideStartup(pol, subj, target, settings) {
		d.auditDecisionMode(c, target, "startup parameter "+v.name, v.decision, mode)
		if v.decision.Action == policy.Deny && mode == policy.Enforce {
			d.refusePG(c, target, agent, "denied", pgError("42501", fmt.Sprintf(
				"interlock: startup parameter %q denied by policy rule %q%s", v.name, v.decision.Rule, suffix(v.decision.Message))))
			return
		}
	}
	issueStart := time.Now()
	lease, err := d.creds.Issue(hctx, credentials.Request{
		Ref: credentialRef(target.Credential), Target: target.Name, Session: c.ID, Identity: c.Identity.Name,
	})
	d.metrics.CredentialLat.WithLabelValues(d.creds.SourceName(target.Credential.Source), outcomeOf(err)).Observe(metrics.Since(issueStart))
	if err != nil {
		log.Warn().Err(err).Str("target", target.Name).Msg("credential not issued")
		d.refusePG(c, target, agent, "credential not issued", pgError("08004",
			fmt.Sprintf("interlock: the credential for target %q could not be issued; try again later", target.Name)))
		return
	}
	cred := lease.Credential()
	d.auditCredential(c, target, cred, true, nil)
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.auditCredential(c, target, cred, false, lease.Close(rctx))
	}()
	upAddr := upstreamAddr(c, target)
	var dialer net.Dialer
	upConn, err := dialer.DialContext(hctx, "tcp", upAddr)
	if err != nil {
		d.refusePG(c, target, agent, "upstream unreachable", pgError("08001", fmt.Sprintf("interlock: cannot reach %s: %v", target.Name, err)))
		return
	}
	up, err := postgres.ConnectUpstream(hctx, upConn, postgres.UpstreamConfig{
		User: cred.Username, Password: cred.Password, Database: hello.Startup.Database,
		Parameters: params,
	})
	if err != nil {
		upConn.Close()
		var se *postgres.ServerError
		if errors.As(err, &se) {
			d.refusePG(c, target, agent, "upstream refused", se)
			return
		}
		d.refusePG(c, target, agent, "upstream login failed", pgError("08006", "interlock: upstream login failed: "+err.Error()))
		return
	}
	key := d.cancels.add(cancelTarget{upstream: upAddr, key: up.Key, identity: c.Identity.Name})
	defer d.cancels.remove(key)
	if err := postgres.GreetClient(agent, hello.Startup, up, key); err != nil {
		up.Conn.Close()
		d.auditClose(c, target, "agent gone", "", 0, 0)
		return
	}
	rec, err := d.recorder.Start(ctx, store.Session{
		ID: c.ID, Identity: c.Identity.Name, PID: int32(c.Identity.PID), UID: c.Identity.UID,
		Exe: c.Identity.Exe, Cgroup: c.Identity.Cgroup, Target: target.Name, Protocol: "postgresql",
		ClientAddr: c.Client.RemoteAddr().String(), UpstreamAddr: upAddr,
	})
	if err != nil {
		// Unrecorded traffic is unaccountable traffic: refuse rather than relay.
		up.Conn.Close()
		log.Error().Err(err).Msg("start recording")
		d.refusePG(c, target, agent, "recording unavailable", pgError("58000", "interlock: the session cannot be recorded; try again later"))
		return
	}
	d.metrics.ConnectSetup.WithLabelValues("postgres").Observe(metrics.Since(c.Accepted))
	s := &pgSession{d: d, c: c, targetName: target.Name, subj: subj, log: log, rec: rec}
	rc := postgres.RelayConfig{Enforcer: s, Recorder: s, MaxBuffered: int(lim.SessionBuffer), MessageTimeout: lim.MessageTimeout}
	if lim.IdentityBuffer > 0 {
		rc.Budget = d.limits.budget(c.Identity.Name, int64(lim.IdentityBuffer))
	}
	err = postgres.Relay(ctx, rawsock.Wrap(agent), rawsock.Wrap(up.Conn), rc)
	outcome := "closed"
	var pe *postgres.ProtocolError
	var le *postgres.LimitError
	if errors.As(err, &le) {
		outcome = "limit exceeded"
		d.auditLimit(c, target, le.Limit, le.Msg)
	} else if errors.As(err, &pe) {
		outcome = "protocol violation"
		d.chain.Post(audit.ProtocolError{Session: c.ID, Identity: c.Identity.Name, Target: target.Name, Error: pe.Msg})
		d.audit.Warn().Str("event", "protocol_violation").Str("conn", c.ID).Str("identity", c.Identity.Name).
			Str("error", pe.Msg).Msg("session ended on malformed input")
	} else if err != nil {
		outcome = "error"
		log.Debug().Err(err).Msg("relay ended")
	}
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ss, err := rec.Finish(fctx, recording.End{Outcome: outcome})
	if err != nil {
		log.Error().Err(err).Msg("seal recording")
	}
	d.auditClose(c, target, outcome, "", ss.BytesIn, ss.BytesOut)
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

func pgError(code, msg string) error {
	return &postgres.ServerError{Response: &pgproto3.ErrorResponse{Severity: "FATAL", Code: code, Message: msg}}
}

// refusePG tells the agent why its session cannot start (when it is still
// listening) and audits it.
func (d *Daemon) refusePG(c *proxy.Conn, t *policy.Target, agent net.Conn, outcome string, err error) {
	var se *postgres.ServerError
	if agent != nil && errors.As(err, &se) {
		agent.SetWriteDeadline(time.Now().Add(5 * time.Second))
		postgres.WriteError(agent, se.Response)
	}
	d.audit.Warn().Str("event", "session_refused").Str("conn", c.ID).Str("identity", c.Identity.Name).
		Str("target", targetName(t)).Str("reason", outcome).Str("error", err.Error()).Msg("postgres session refused")
	d.auditClose(c, t, outcome, err.Error(), 0, 0)
}

func (d *Daemon) forwardCancel(c *proxy.Conn, key postgres.CancelKey, log zerolog.Logger) {
	t, ok := d.cancels.find(key)
	if !ok || t.identity != c.Identity.Name {
		// As a server does: an unknown key is ignored silently.
		return
	}
	conn, err := net.DialTimeout("tcp", t.upstream, dialTimeout)
	if err != nil {
		log.Warn().Err(err).Msg("forward cancel")
		return
	}
	defer conn.Close()
	postgres.SendCancel(conn, t.key)
}

// credentialRef turns a policy target's credential block into the
// credentials package's reference.
func credentialRef(r policy.CredentialRef) credentials.Ref {
	ref := credentials.Ref{Source: r.Source, Role: r.Role, Path: r.Path}
	str := func(k string) string { s, _ := r.Params[k].(string); return s }
	ref.Kind, ref.Template = str("kind"), str("template")
	if ttl, err := time.ParseDuration(str("ttl")); err == nil {
		ref.TTL = ttl
	}
	if ps, ok := r.Params["principals"].([]any); ok {
		for _, p := range ps {
			if s, ok := p.(string); ok {
				ref.Principals = append(ref.Principals, s)
			}
		}
	}
	return ref
}

// pgSession decides the statements of one PostgreSQL session.
type pgSession struct {
	d          *Daemon
	c          *proxy.Conn
	targetName string
	subj       *policy.Subject
	log        zerolog.Logger
	rec        *recording.Session
	// lastSeq is the recording sequence number of the agent's latest
	// message. Record and Query for agent messages run on the same
	// goroutine, Record first, so Query finds its statement's number here.
	lastSeq int64
	// gen is the untag generation taggedOK was computed at.
	gen      uint64
	checked  bool
	taggedOK bool
}

// tagged reports whether the session's cgroup still carries its identity.
// It asks the kernel maps only after an untag somewhere, so the common
// statement costs one atomic load.
func (s *pgSession) tagged() bool {
	if g := s.d.tagGen.Load(); !s.checked || g != s.gen {
		id, ok, err := s.d.dp.TaggedPath(s.d.mount, s.c.Identity.Cgroup)
		s.gen, s.checked = g, true
		s.taggedOK = err == nil && ok && s.d.ids.name(id) == s.c.Identity.Name
	}
	return s.taggedOK
}

// Record implements postgres.Recorder.
func (s *pgSession) Record(m *postgres.Message) {
	seq := s.rec.Message(m.FromClient, m.Type, m.Body, m.Time)
	if m.FromClient {
		s.lastSeq = seq
	}
}

// Query implements postgres.Enforcer. The policy in force is read per
// statement, so a reload (or an untag) applies to sessions already open.
func (s *pgSession) Query(ctx context.Context, sql string) postgres.Verdict {
	seq := s.lastSeq
	pol := s.d.policy.Current()
	target := pol.Target(s.targetName)
	// Audit mode decides and records exactly as enforcement does, and then
	// lets the statement through untouched ("would deny"). A revoked
	// identity is not a policy verdict: it is always enforced.
	dec := policy.Decision{Action: policy.Deny, Rule: "identity-revoked", Message: "the agent's cgroup is no longer tagged"}
	mode := policy.Enforce
	start := time.Now()
	var parseErr *sqlclass.ParseError
	if s.tagged() {
		var q *sqlclass.Query
		dec, q = pol.DecideSQL(s.subj, target, sql)
		mode = pol.Mode(s.subj, target)
		if q != nil && q.Err != nil {
			// Say what could not be classified, in the audit trail and
			// to the agent.
			dec.Message = q.Err.Error()
			errors.As(q.Err, &parseErr)
		}
	}
	s.d.metrics.DecideLatency.Observe(metrics.Since(start))
	s.d.metrics.Decisions.WithLabelValues(dec.Action.String(), dec.Rule, mode.String()).Inc()
	enforced := mode == policy.Enforce
	s.d.auditDecisionMode(s.c, target, sql, dec, mode)
	v := postgres.Verdict{Action: postgres.Forward, Rule: dec.Rule}
	approvalID := ""
	if enforced {
		switch dec.Action {
		case policy.Deny:
			v = postgres.Verdict{Action: postgres.Deny, Rule: dec.Rule, Message: dec.Message}
			if parseErr != nil {
				// The server would refuse it the same way: the agent
				// sees the server's error, not a policy's.
				v.Code, v.Message, v.Position = parseErr.Code, parseErr.Message, int32(parseErr.Position)
			}
		case policy.Mask:
			v.Mask = columnMasker{dec.Mask}
		case policy.Approve:
			v, approvalID = s.hold(ctx, target, sql, dec)
		}
	}
	s.rec.Decide(seq, recording.Verdict{Action: dec.Action.String(), Rule: dec.Rule, Reason: dec.Message,
		Enforced: enforced, ApprovalID: approvalID, Statement: sql}, time.Now())
	return v
}

// columnMasker adapts the policy's masker to the decoder's interface.
type columnMasker struct{ m *mask.Masker }

func (cm columnMasker) Plan(cols []postgres.Column) postgres.RowMasker {
	if cm.m == nil {
		return nil
	}
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	p := cm.m.Plan(names)
	if !p.Active() {
		return nil
	}
	rm := &rowMasker{plan: p, binary: make([]bool, len(cols))}
	for i, c := range cols {
		rm.binary[i] = c.Format == 1 && !textual(c.TypeOID)
	}
	return rm
}

type rowMasker struct {
	plan   *mask.Plan
	binary []bool // binary format of a type whose wire form is not its text
	buf    []byte
}

// MaskValue masks one field. A binary-format value of a non-text type cannot
// carry a masked string, so a field that would change is sent as NULL.
func (rm *rowMasker) MaskValue(col int, v []byte) []byte {
	if v == nil {
		return nil
	}
	out, changed := rm.plan.Mask(rm.buf[:0], col, v)
	if !changed {
		return v
	}
	rm.buf = out
	if col < len(rm.binary) && rm.binary[col] {
		return nil
	}
	return out
}

// textual reports whether a type's binary wire form is its text: text,
// varchar, bpchar, name, unknown, json, xml and citext-like domains over them.
func textual(oid uint32) bool {
	switch oid {
	case 25, 1043, 1042, 19, 705, 114, 142:
		return true
	}
	return false
}

func outcomeOf(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
