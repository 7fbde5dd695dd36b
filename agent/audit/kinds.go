package audit

import (
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/policy"
)

// Kind names what an audit record is about.
type Kind string

// The kinds of audit record, one per Event type.
const (
	KindDaemonStarted     Kind = "daemon.started"
	KindConnectionOpened  Kind = "connection.opened"
	KindConnectionClosed  Kind = "connection.closed"
	KindDecision          Kind = "decision"
	KindApprovalRequested Kind = "approval.requested"
	KindApprovalDecided   Kind = "approval.decided"
	KindCredentialIssued  Kind = "credential.issued"
	KindCredentialRevoked Kind = "credential.revoked"
	KindPolicyReloaded    Kind = "policy.reloaded"
	KindRecordingSealed   Kind = "recording.sealed"
	KindProtocolError     Kind = "protocol.error"
	KindLimitExceeded     Kind = "limit.exceeded"
	KindKernelDenied      Kind = "kernel.denied"
	KindKernelAccepted    Kind = "kernel.accepted"
	KindTagged            Kind = "cgroup.tagged"
	KindUntagged          Kind = "cgroup.untagged"
	KindExec              Kind = "exec.started"
	KindUninstalled       Kind = "datapath.uninstalled"
	KindControlRefused    Kind = "control.refused"
	KindCARotated         Kind = "ca.rotated"
	KindDNSQuestion       Kind = "dns.question"
)

// Event is one typed audit event. The set is closed: only the types in this
// package implement it, and none of them has a field that can hold a
// credential, a password or a response value. Request text enters only as a
// Statement, whose constructors strip literals, so a masked value or a
// password in a statement never reaches the trail.
type Event interface {
	Kind() Kind
	// logTo writes the event as one line of the event log: its level, a
	// message, "event" naming it, and its fields.
	logTo(l *zerolog.Logger)
}

// logEvent writes ev to the event log, if there is one.
func (l *Log) logEvent(ev Event) {
	if l.events != nil {
		ev.logTo(l.events)
	}
}

// DaemonStarted is written once when interlockd starts.
type DaemonStarted struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
}

// ConnectionOpened is a session accepted by the proxy.
type ConnectionOpened struct {
	Session  string `json:"session"`
	Identity string `json:"identity"`
	PID      int32  `json:"pid"`
	UID      uint32 `json:"uid"`
	GID      uint32 `json:"gid"`
	Comm     string `json:"comm,omitempty"`
	Exe      string `json:"exe"`
	Cgroup   string `json:"cgroup"`
	CgroupID uint64 `json:"cgroup_id,omitempty"`
	Target   string `json:"target"`
	Protocol string `json:"protocol"`
	// Dst is where the agent connected; Client its own address.
	Dst      string `json:"dst,omitempty"`
	Client   string `json:"client"`
	Upstream string `json:"upstream"`
	// Container is the container the caller runs in, as its runtime
	// described it at accept: what an identity's container: selected on.
	// Nil when no identity selects on containers, the caller is in none,
	// or the runtime could not say.
	Container *policy.Container `json:"container,omitempty"`
}

// ConnectionClosed is the end of a session.
type ConnectionClosed struct {
	Session  string `json:"session"`
	Identity string `json:"identity"`
	Target   string `json:"target"`
	Dst      string `json:"dst,omitempty"`
	Outcome  string `json:"outcome"`
	// Reason says why a connection was refused or failed: an identity the
	// policy does not know, no rule for the destination, the rule that
	// denied it, or the upstream's connect error.
	Reason   string        `json:"reason,omitempty"`
	BytesIn  int64         `json:"bytes_in"`
	BytesOut int64         `json:"bytes_out"`
	Messages int64         `json:"messages"`
	Duration time.Duration `json:"duration_ns"`
}

// Decision is the policy's verdict on one request. Enforced is false in
// audit mode ("would deny").
type Decision struct {
	Session   string    `json:"session"`
	Identity  string    `json:"identity"`
	Target    string    `json:"target"`
	Action    string    `json:"action"`
	Rule      string    `json:"rule"`
	Reason    string    `json:"reason,omitempty"`
	Enforced  bool      `json:"enforced"`
	Operation string    `json:"operation,omitempty"` // "SELECT", "GET", ...
	Tables    []string  `json:"tables,omitempty"`
	Statement Statement `json:"statement"`
}

// ApprovalRequested is a request held for reviewers.
type ApprovalRequested struct {
	Approval  string    `json:"approval"`
	Session   string    `json:"session"`
	Identity  string    `json:"identity"`
	Target    string    `json:"target"`
	Rule      string    `json:"rule"`
	Reviewers []string  `json:"reviewers"`
	Quorum    int       `json:"quorum"`
	Deadline  time.Time `json:"deadline"`
	Statement Statement `json:"statement"`
}

// ApprovalVote is one reviewer's verdict inside ApprovalDecided.
type ApprovalVote struct {
	Reviewer string `json:"reviewer"`
	Approve  bool   `json:"approve"`
	Comment  string `json:"comment,omitempty"`
}

// ApprovalDecided is the final state of an approval: approved, denied,
// expired or cancelled.
type ApprovalDecided struct {
	Approval string         `json:"approval"`
	Session  string         `json:"session"`
	State    string         `json:"state"`
	Votes    []ApprovalVote `json:"votes"`
}

// CredentialIssued is a just-in-time credential handed to a session's
// upstream connection. It names the credential (user name, lease); the
// secret itself has no field here.
type CredentialIssued struct {
	Session  string        `json:"session"`
	Identity string        `json:"identity,omitempty"`
	Target   string        `json:"target"`
	Source   string        `json:"source"` // "vault", "embedded", "static"
	Username string        `json:"username,omitempty"`
	LeaseID  string        `json:"lease_id,omitempty"`
	TTL      time.Duration `json:"ttl_ns,omitempty"`
	// ReusedFrom is set when no credential was issued: the session took
	// over a server connection an ended session (this one) left logged
	// in, and its credential with it.
	ReusedFrom string `json:"reused_from,omitempty"`
}

// CredentialRevoked is the end of a credential's life; Error is set when
// revocation failed (the lease journal retries it).
type CredentialRevoked struct {
	Session  string `json:"session"`
	Identity string `json:"identity,omitempty"`
	Target   string `json:"target"`
	Source   string `json:"source"`
	Username string `json:"username,omitempty"`
	LeaseID  string `json:"lease_id,omitempty"`
	Error    string `json:"error,omitempty"`
}

// PolicyReloaded is a policy swap (or a refused one, with Error). SHA256 is
// the digest of the policy file's bytes.
type PolicyReloaded struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Rules  int    `json:"rules"`
	Error  string `json:"error,omitempty"`
}

// RecordingSealed binds a session recording's content hash into the chain,
// so editing the recording file is detectable from the trail alone.
type RecordingSealed struct {
	Session  string `json:"session"`
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
	Messages int64  `json:"messages"`
}

// ProtocolError is a session ended for malformed or oversized input. Error
// is the decoder's message, which describes framing, never content.
type ProtocolError struct {
	Session  string `json:"session"`
	Identity string `json:"identity"`
	Target   string `json:"target"`
	Error    string `json:"error"`
}

// LimitExceeded is a session refused or ended because its identity went
// over a configured limit (sessions, buffered bytes, message timeout).
// Error describes sizes and counts, never content.
type LimitExceeded struct {
	Session  string `json:"session"`
	Identity string `json:"identity"`
	Target   string `json:"target"`
	Limit    string `json:"limit"`
	Error    string `json:"error"`
}

// KernelDenied is an operation the kernel programs refused a tagged task
// (a connect, a bind, a socket option, a unix socket, ...). Dst, Path and
// Level/Optname are set when the operation has them.
type KernelDenied struct {
	Reason   string `json:"reason"`
	Identity string `json:"identity"`
	PID      uint32 `json:"pid"`
	UID      uint32 `json:"uid"`
	Comm     string `json:"comm"`
	Dst      string `json:"dst,omitempty"`
	Path     string `json:"path,omitempty"`
	Level    uint32 `json:"level,omitempty"`
	Optname  uint32 `json:"optname,omitempty"`
}

// DNSQuestion is one DNS question a tagged task asked, as interlockd
// decided and answered it: Action "allow" (forwarded to Resolver) or
// "deny" (answered REFUSED, no resolver saw it; in audit mode, Enforced
// false, forwarded all the same), Rcode the answer's code, Answers the
// answer section in presentation form (at most 16 records).
type DNSQuestion struct {
	Identity  string   `json:"identity"`
	PID       uint32   `json:"pid"`
	UID       uint32   `json:"uid"`
	Comm      string   `json:"comm"`
	Transport string   `json:"transport"` // udp | tcp
	Dst       string   `json:"dst"`       // the resolver the agent asked
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	Action    string   `json:"action"`
	Enforced  bool     `json:"enforced"`
	Reason    string   `json:"reason,omitempty"`
	Resolver  string   `json:"resolver,omitempty"`
	Rcode     string   `json:"rcode"`
	Answers   []string `json:"answers,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// KernelAccepted is an inbound connection a tagged listener accepted
// because the policy lets it listen.
type KernelAccepted struct {
	Identity string `json:"identity"`
	CgroupID uint64 `json:"cgroup_id"`
	Peer     string `json:"peer"`
}

// Tagged is a cgroup given an identity (`interlock tag`, `interlock exec`).
type Tagged struct {
	Cgroup   string `json:"cgroup"`
	Identity string `json:"identity"`
}

// Exec is a command started by `interlock exec`: process PID, a child of
// the caller ByUID, moved into the fresh cgroup tagged for it.
type Exec struct {
	Identity string `json:"identity"`
	PID      int    `json:"pid"`
	ByUID    uint32 `json:"by_uid"`
	Cgroup   string `json:"cgroup"`
}

// Untagged is a cgroup's identity removed, by an operator or because the
// cgroup is gone (Reason).
type Untagged struct {
	Cgroup string `json:"cgroup"`
	Reason string `json:"reason,omitempty"`
}

// Uninstalled is the data path removed: from here on nothing is enforced.
// UID and PID are the operator's.
type Uninstalled struct {
	UID uint32 `json:"uid"`
	PID uint32 `json:"pid"`
}

// ControlRefused is a control API call refused to its caller.
type ControlRefused struct {
	UID      uint32 `json:"uid"`
	PID      uint32 `json:"pid"`
	Path     string `json:"path"`
	Cgroup   string `json:"cgroup,omitempty"`
	Identity string `json:"identity,omitempty"`
	Reason   string `json:"reason"`
}

// CARotated is Interlock's CA replaced; certificates signed by the old one
// stop being trusted by agents given the new bundle. Old and New are the
// certificates' SHA-256 fingerprints.
type CARotated struct {
	UID uint32 `json:"uid"`
	PID uint32 `json:"pid"`
	Old string `json:"old_sha256"`
	New string `json:"new_sha256"`
}

// Kind implements Event.
func (DaemonStarted) Kind() Kind { return KindDaemonStarted }

// Kind implements Event.
func (ConnectionOpened) Kind() Kind { return KindConnectionOpened }

// Kind implements Event.
func (ConnectionClosed) Kind() Kind { return KindConnectionClosed }

// Kind implements Event.
func (Decision) Kind() Kind { return KindDecision }

// InRecording reports whether d is chained through its session's recording
// alone, with no record of its own: an enforced decision that let the
// request through, untouched or masked (see Log.Record). What refused or
// held a request, or would have in audit mode, has its own record.
func (d Decision) InRecording() bool {
	return d.Enforced && (d.Action == "allow" || d.Action == "mask")
}

// Kind implements Event.
func (ApprovalRequested) Kind() Kind { return KindApprovalRequested }

// Kind implements Event.
func (ApprovalDecided) Kind() Kind { return KindApprovalDecided }

// Kind implements Event.
func (CredentialIssued) Kind() Kind { return KindCredentialIssued }

// Kind implements Event.
func (CredentialRevoked) Kind() Kind { return KindCredentialRevoked }

// Kind implements Event.
func (PolicyReloaded) Kind() Kind { return KindPolicyReloaded }

// Kind implements Event.
func (RecordingSealed) Kind() Kind { return KindRecordingSealed }

// Kind implements Event.
func (ProtocolError) Kind() Kind { return KindProtocolError }

// Kind implements Event.
func (LimitExceeded) Kind() Kind { return KindLimitExceeded }

// Kind implements Event.
func (KernelDenied) Kind() Kind { return KindKernelDenied }

// Kind implements Event.
func (KernelAccepted) Kind() Kind { return KindKernelAccepted }

// Kind implements Event.
func (Tagged) Kind() Kind { return KindTagged }

// Kind implements Event.
func (Untagged) Kind() Kind { return KindUntagged }

// Kind implements Event.
func (Exec) Kind() Kind { return KindExec }

// Kind implements Event.
func (Uninstalled) Kind() Kind { return KindUninstalled }

// Kind implements Event.
func (ControlRefused) Kind() Kind { return KindControlRefused }

// Kind implements Event.
func (CARotated) Kind() Kind { return KindCARotated }

// Kind implements Event.
func (DNSQuestion) Kind() Kind { return KindDNSQuestion }

// The event log's lines. Field names are the log's own (conn for the
// session, as the rest of interlockd's log says), kept stable for log
// pipelines.

func (e DaemonStarted) logTo(l *zerolog.Logger) {
	l.Info().Str("event", "daemon_start").Str("version", e.Version).Int("pid", e.PID).Msg("interlockd started")
}

func (e ConnectionOpened) logTo(l *zerolog.Logger) {
	ev := l.Info().Str("event", "connection_open").Str("conn", e.Session).
		Str("identity", e.Identity).Int32("pid", e.PID).Uint32("uid", e.UID).
		Uint32("gid", e.GID).Str("comm", e.Comm).Str("exe", e.Exe).
		Str("cgroup", e.Cgroup).Uint64("cgroup_id", e.CgroupID).
		Str("dst", e.Dst).Str("peer", e.Client).Str("target", e.Target).Str("protocol", e.Protocol)
	if c := e.Container; c != nil {
		ev.Dict("container", zerolog.Dict().Str("runtime", c.Runtime).Str("id", c.ID).
			Str("image", c.Image).Str("image_id", c.ImageID).Interface("labels", c.Labels))
	}
	ev.Msg("connection opened")
}

func (e ConnectionClosed) logTo(l *zerolog.Logger) {
	// A session that did not end normally is something an operator looks at.
	level, msg := zerolog.InfoLevel, "connection closed"
	if e.Outcome != "closed" {
		level, msg = zerolog.WarnLevel, "connection refused or failed"
	}
	ev := l.WithLevel(level)
	ev.Str("event", "connection_close").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Str("dst", e.Dst).Str("outcome", e.Outcome).Str("reason", e.Reason).
		Int64("bytes_sent", e.BytesIn).Int64("bytes_received", e.BytesOut).
		Int64("duration_ms", e.Duration.Milliseconds()).Msg(msg)
}

func (e Decision) logTo(l *zerolog.Logger) {
	// What let a request through (an allow, an enforced mask) is logged
	// at debug level only: a busy session must not cost a log line per
	// statement, and under a masking rule every read is a mask.
	level := zerolog.InfoLevel
	if e.Action == "allow" || e.InRecording() {
		level = zerolog.DebugLevel
	}
	ev := l.WithLevel(level)
	if ev == nil {
		// Not logged at this level. Passing the statement on as a
		// fmt.Stringer would still allocate, for every statement.
		return
	}
	action, mode := e.Action, "enforce"
	if !e.Enforced {
		mode = "audit"
		switch action {
		case "approve":
			action = "would hold"
		case "deny", "mask":
			action = "would " + action
		}
	}
	ev.Str("event", "decision").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Stringer("op", e.Statement)
	// The chain has the operation too; a connection's decision (CONNECT
	// name) and an HTTP request's method have no other word in the line.
	if e.Operation != "" {
		ev.Str("operation", e.Operation)
	}
	ev.Str("action", action).Str("mode", mode).Str("rule", e.Rule).Str("reason", e.Reason).Msg("decided")
}

func (e ApprovalRequested) logTo(l *zerolog.Logger) {
	l.Info().Str("event", "approval_requested").Str("approval", e.Approval).Str("conn", e.Session).
		Str("identity", e.Identity).Str("target", e.Target).Str("rule", e.Rule).
		Strs("reviewers", e.Reviewers).Int("quorum", e.Quorum).Time("deadline", e.Deadline).
		Stringer("op", e.Statement).Msg("request held for approval")
}

func (e ApprovalDecided) logTo(l *zerolog.Logger) {
	l.Info().Str("event", "approval_decided").Str("approval", e.Approval).Str("conn", e.Session).
		Str("state", e.State).Int("votes", len(e.Votes)).Msg("approval decided")
}

func (e CredentialIssued) logTo(l *zerolog.Logger) {
	if e.ReusedFrom != "" {
		l.Info().Str("event", "credential_issued").Str("conn", e.Session).Str("identity", e.Identity).
			Str("target", e.Target).Str("source", e.Source).Str("username", e.Username).Str("reused_from", e.ReusedFrom).
			Msg("server connection of an ended session resumed, with its credential")
		return
	}
	l.Info().Str("event", "credential_issued").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Str("source", e.Source).Str("username", e.Username).Msg("credential issued")
}

func (e CredentialRevoked) logTo(l *zerolog.Logger) {
	if e.Error != "" {
		l.Error().Str("event", "credential_revoked").Str("conn", e.Session).Str("identity", e.Identity).
			Str("target", e.Target).Str("source", e.Source).Str("username", e.Username).Str("error", e.Error).
			Msg("credential not revoked; retrying")
		return
	}
	l.Info().Str("event", "credential_revoked").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Str("source", e.Source).Str("username", e.Username).Msg("credential revoked")
}

func (e PolicyReloaded) logTo(l *zerolog.Logger) {
	if e.Error != "" {
		l.Error().Str("event", "policy_reload").Str("policy", e.Path).Str("error", e.Error).
			Msg("policy reload refused; previous policy stays in force")
		return
	}
	l.Info().Str("event", "policy_reload").Str("policy", e.Path).Str("sha256", e.SHA256).Int("rules", e.Rules).
		Msg("policy reloaded")
}

func (e RecordingSealed) logTo(l *zerolog.Logger) {
	l.Debug().Str("event", "recording_sealed").Str("conn", e.Session).Str("sha256", e.SHA256).
		Int64("size", e.Size).Int64("messages", e.Messages).Msg("recording sealed")
}

func (e ProtocolError) logTo(l *zerolog.Logger) {
	l.Warn().Str("event", "protocol_violation").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Str("error", e.Error).Msg("session ended on malformed input")
}

func (e LimitExceeded) logTo(l *zerolog.Logger) {
	l.Warn().Str("event", "limit_exceeded").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Str("limit", e.Limit).Str("error", e.Error).Msg("session over its identity's limit")
}

func (e KernelDenied) logTo(l *zerolog.Logger) {
	ev := l.Warn().Str("event", "kernel_deny").Str("reason", e.Reason).Str("identity", e.Identity).
		Uint32("pid", e.PID).Uint32("uid", e.UID).Str("comm", e.Comm)
	// Socket creations and unix connects have no address; a unix
	// connect has its path instead.
	if e.Dst != "" {
		ev = ev.Str("dst", e.Dst)
	}
	if e.Path != "" {
		ev = ev.Str("path", e.Path)
	}
	if e.Level != 0 || e.Optname != 0 {
		ev = ev.Uint32("level", e.Level).Uint32("optname", e.Optname)
	}
	ev.Msg("denied in kernel")
}

func (e DNSQuestion) logTo(l *zerolog.Logger) {
	// Allowed look-ups are many: debug level only.
	ev := l.Debug()
	if e.Action != "allow" || e.Error != "" {
		ev = l.Warn()
	}
	mode := "enforce"
	if !e.Enforced {
		mode = "audit"
	}
	ev.Str("event", "dns_query").Str("mode", mode).Str("identity", e.Identity).Uint32("pid", e.PID).Uint32("uid", e.UID).
		Str("comm", e.Comm).Str("transport", e.Transport).Str("dst", e.Dst).Str("name", e.Name).
		Str("type", e.Type).Str("action", e.Action).Str("reason", e.Reason).Str("resolver", e.Resolver).
		Str("rcode", e.Rcode).Strs("answers", e.Answers).Str("error", e.Error).Msg("dns question")
}

func (e KernelAccepted) logTo(l *zerolog.Logger) {
	l.Info().Str("event", "kernel_accept").Str("identity", e.Identity).Uint64("cgroup", e.CgroupID).
		Str("peer", e.Peer).Msg("inbound connection accepted")
}

func (e Tagged) logTo(l *zerolog.Logger) {
	l.Info().Str("event", "tag").Str("cgroup", e.Cgroup).Str("identity", e.Identity).Msg("cgroup tagged")
}

func (e Exec) logTo(l *zerolog.Logger) {
	l.Info().Str("event", "exec").Str("identity", e.Identity).Int("pid", e.PID).
		Uint32("by_uid", e.ByUID).Str("cgroup", e.Cgroup).Msg("command started in tagged cgroup")
}

func (e Untagged) logTo(l *zerolog.Logger) {
	l.Info().Str("event", "untag").Str("cgroup", e.Cgroup).Str("reason", e.Reason).Msg("cgroup untagged")
}

func (e Uninstalled) logTo(l *zerolog.Logger) {
	l.Warn().Str("event", "uninstall").Uint32("uid", e.UID).Uint32("pid", e.PID).
		Msg("data path removed; enforcement is off")
}

func (e ControlRefused) logTo(l *zerolog.Logger) {
	l.Warn().Str("event", "control_refused").Uint32("pid", e.PID).Uint32("uid", e.UID).Str("cgroup", e.Cgroup).
		Str("identity", e.Identity).Str("path", e.Path).Str("reason", e.Reason).Msg("control request refused")
}

func (e CARotated) logTo(l *zerolog.Logger) {
	l.Warn().Str("event", "ca_rotate").Uint32("uid", e.UID).Uint32("pid", e.PID).
		Str("old_sha256", e.Old).Str("new_sha256", e.New).Msg("certificate authority replaced")
}
