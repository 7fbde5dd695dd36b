package session

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
	"github.com/interlock-dev/interlock/policy/mask"
	"github.com/interlock-dev/interlock/policy/sqlclass"
)

// enforcer decides the requests of one session (protocol.Enforcer). The
// policy in force is read per request, and the identity re-checked after
// any untag, so a reload or an untag applies to sessions already open.
type enforcer struct {
	p   *Pipeline
	c   *conn
	rec *recorder
	// gen is the tag generation taggedOK was computed at.
	gen      uint64
	checked  bool
	taggedOK bool
	// counted is the decisions counter for the last decision's labels. A
	// session's requests mostly meet one rule, and finding the counter in
	// its vector (three labels hashed, a map read under a lock) was the
	// largest share of a statement's decision after the policy itself:
	// 2.8 % of interlockd's CPU under pgbench's tpcb-like load.
	counted struct {
		action policy.Action
		rule   string
		mode   policy.Mode
		c      prometheus.Counter
	}
}

// count adds one to the decisions counter of dec under mode.
func (e *enforcer) count(dec policy.Decision, mode policy.Mode) {
	k := &e.counted
	if k.c == nil || k.action != dec.Action || k.rule != dec.Rule || k.mode != mode {
		k.action, k.rule, k.mode = dec.Action, dec.Rule, mode
		k.c = decisionCounter(e.p.cfg.Metrics, dec, mode)
	}
	k.c.Inc()
}

// decisionCounter is the decisions counter of dec under mode: the one
// place a decision's labels are spelled.
func decisionCounter(m *metrics.Metrics, dec policy.Decision, mode policy.Mode) prometheus.Counter {
	return m.Decisions.WithLabelValues(dec.Action.String(), dec.Rule, mode.String())
}

// tagged reports whether the session's cgroup still carries its identity.
// It asks the tag table only after an untag somewhere, so the common
// request costs one atomic load. The first request takes the identity the
// kernel found at connect when no tag changed since the kernel read its
// clock for that lookup: the table would say the same, and asking it is a
// system call.
func (e *enforcer) tagged() bool {
	tags := e.p.cfg.Tags
	if !e.checked {
		if g, ok := tags.SettledAt(e.c.identity.Connected); ok {
			e.gen, e.checked, e.taggedOK = g, true, true
			return true
		}
	}
	if g := tags.Generation(); !e.checked || g != e.gen {
		e.gen, e.checked = g, true
		e.taggedOK = tags.IdentityOf(e.c.identity.CgroupID, e.c.identity.Cgroup) == e.c.identity.Name
	}
	return e.taggedOK
}

// Decide implements protocol.Enforcer.
func (e *enforcer) Decide(ctx context.Context, r protocol.Request) protocol.Verdict {
	if r.Operation == protocol.OpStartup {
		return e.startup(r.Text)
	}
	seq := e.rec.lastSeq
	pol := e.p.cfg.Policy.Current()
	target := pol.Target(e.c.targetName())
	// Audit mode decides and records exactly as enforcement does, and then
	// lets the request through untouched ("would deny"). A revoked
	// identity is not a policy verdict: it is always enforced.
	dec := policy.Decision{Action: policy.Deny, Rule: "identity-revoked", Message: "the agent's cgroup is no longer tagged"}
	mode := policy.Enforce
	start := time.Now()
	var parseErr *sqlclass.ParseError
	var op string
	if e.tagged() {
		mode = pol.Mode(&e.c.subject, target)
		switch {
		case r.Operation == protocol.OpQuery:
			var q *sqlclass.Query
			dec, q = pol.DecideSQL(&e.c.subject, target, r.Text)
			if q != nil && q.Err != nil {
				// Say what could not be classified, in the audit trail and
				// to the agent.
				dec.Message = q.Err.Error()
				errors.As(q.Err, &parseErr)
			}
		case e.c.protocol() == "http":
			op = r.Operation
			dec = pol.DecideHTTP(&e.c.subject, target, policy.HTTPRequest{Method: r.Operation, Host: r.Host, URI: r.Text, Header: r.Header})
		case e.c.protocol() == "ssh":
			// exec and shell are decided; any other SSH request is denied
			// as unsupported-operation.
			op = r.Operation
			dec = pol.DecideSSH(&e.c.subject, target, r.Operation, r.Text)
		default:
			// A request this build's policy cannot express is refused,
			// never let through undecided.
			op = r.Operation
			dec = policy.Decision{Action: policy.Deny, Rule: "unsupported-operation",
				Message: "interlock cannot decide " + r.Operation + " requests"}
		}
	}
	e.p.cfg.Metrics.DecideLatency.Observe(metrics.Since(start))
	e.count(dec, mode)
	enforced := mode == policy.Enforce
	e.p.cfg.Audit.Decided(e.c.decision(op, r.Text, dec, enforced))
	v := protocol.Verdict{Action: protocol.Allow, Rule: dec.Rule}
	if enforced {
		v = verdictOf(dec)
		switch {
		case dec.Action == policy.Deny && parseErr != nil:
			// The server would refuse it the same way: the agent sees the
			// server's error, not a policy's.
			v.Code, v.Message, v.Position = parseErr.Code, parseErr.Message, parseErr.Position
		case dec.Action == policy.Approve:
			v = e.hold(ctx, r.Text, dec)
		}
	}
	if e.rec.session != nil {
		e.rec.session.Decide(seq, recording.Verdict{Action: dec.Action.String(), Rule: dec.Rule, Reason: dec.Message,
			Enforced: enforced, ApprovalID: v.ApprovalID, Statement: r.Text, Op: op}, time.Now())
	}
	return v
}

// startup decides a setting the agent asks for while connecting like the
// SET it stands for, since it changes the session as that SET would, with
// no statement to decide later. Settings of the session class and below
// (application_name, client_encoding, DateStyle, timeouts) pass without a
// decision, as they always have: every client sends some, and a policy
// that allows only reads would otherwise refuse psql at connect. The others
// (role, search_path, default_transaction_read_only, ...) get the decision
// their SET would get; an approval becomes a denial, since a connection
// cannot wait for one.
func (e *enforcer) startup(name string) protocol.Verdict {
	if sqlclass.SettingStatementClass(name) <= sqlclass.Session {
		return protocol.Verdict{Action: protocol.Allow}
	}
	st := sqlclass.SettingStatement(name)
	pol := e.p.cfg.Policy.Current()
	target := pol.Target(e.c.targetName())
	dec := pol.Decide(&policy.Input{Subject: &e.c.subject, Target: target, Protocol: e.c.protocol(),
		Op: policy.Operation{Kind: policy.OpSQL, SQL: &st}})
	if dec.Action == policy.Approve {
		dec = policy.Decision{Action: policy.Deny, Rule: dec.Rule,
			Message: "it needs an approval, which a connection cannot wait for; SET it once connected"}
	}
	mode := pol.Mode(&e.c.subject, target)
	e.p.record(e.c.decision("startup parameter "+name, "", dec, mode == policy.Enforce))
	if mode != policy.Enforce {
		return protocol.Verdict{Action: protocol.Allow, Rule: dec.Rule}
	}
	return verdictOf(dec)
}

// hold puts a request up for review. The verdict makes the decoder tell
// the agent the approval id and wait, holding this request only.
func (e *enforcer) hold(ctx context.Context, text string, dec policy.Decision) protocol.Verdict {
	id, wait, err := e.p.cfg.Approvals.Hold(ctx, e.c.approvalRequest(text, dec))
	if err != nil {
		e.p.cfg.Log.Error().Err(err).Str("conn", e.c.id).Msg("hold for approval")
		return protocol.Verdict{Action: protocol.Deny, Rule: dec.Rule, Message: "needs approval, and the request could not be held"}
	}
	return protocol.Verdict{Action: protocol.Hold, Rule: dec.Rule, Message: dec.Message, ApprovalID: id, Wait: wait}
}

// verdictOf is the verdict a decision enforces (an approval still has to
// be held: see hold).
func verdictOf(dec policy.Decision) protocol.Verdict {
	v := protocol.Verdict{Rule: dec.Rule, Message: dec.Message}
	switch dec.Action {
	case policy.Allow:
		v.Action = protocol.Allow
	case policy.Deny:
		v.Action = protocol.Deny
	case policy.Mask:
		v.Action = protocol.Mask
		if dec.Mask != nil {
			v.Mask = masker{dec.Mask}
		}
	case policy.Approve:
		v.Action = protocol.Hold
	}
	return v
}

// masker adapts the policy's masker to the decoders'.
type masker struct{ m *mask.Masker }

func (m masker) Plan(fields []string) protocol.FieldMasker {
	p := m.m.Plan(fields)
	if !p.Active() {
		return nil
	}
	return p
}
