package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/interlock-dev/interlock/policy/sqlclass"
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
)

// Event is one typed audit event. The set is closed: only the types in this
// package implement it, and none of them has a field that can hold a
// credential, a password or a response value. Request text enters only as a
// Statement, whose constructors strip literals, so a masked value or a
// password in a statement never reaches the trail.
type Event interface {
	Kind() Kind
	auditEvent()
}

// Statement is request text fit for the audit trail. Build it with
// SQLStatement or OpaqueStatement; there is no way to put raw text in one.
type Statement struct{ text string }

// String returns the redacted text.
func (s Statement) String() string { return s.text }

// MarshalJSON encodes the redacted text as a JSON string.
func (s Statement) MarshalJSON() ([]byte, error) { return json.Marshal(s.text) }

// SQLStatement redacts a SQL statement for the audit trail with
// sqlclass.RedactLiterals: every literal (quoted strings, E-strings,
// dollar-quoted strings, bit strings, numbers) becomes '?', and comments are
// dropped, keeping the statement's shape, tables and columns. "ALTER ROLE
// app PASSWORD 'hunter2'" becomes "ALTER ROLE app PASSWORD ?". Identifiers,
// including quoted ones, are kept.
func SQLStatement(sql string) Statement {
	return Statement{text: sqlclass.RedactLiterals(sql)}
}

// OpaqueStatement keeps only a fingerprint of text (a SHA-256 prefix and the
// length), for requests whose literals cannot be told apart from their
// shape. Equal requests still have equal fingerprints.
func OpaqueStatement(text string) Statement {
	sum := sha256.Sum256([]byte(text))
	return Statement{text: "sha256:" + hex.EncodeToString(sum[:8]) + " (" + strconv.Itoa(len(text)) + " bytes)"}
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
	Exe      string `json:"exe"`
	Cgroup   string `json:"cgroup"`
	Target   string `json:"target"`
	Protocol string `json:"protocol"`
	Client   string `json:"client"`
	Upstream string `json:"upstream"`
}

// ConnectionClosed is the end of a session.
type ConnectionClosed struct {
	Session  string `json:"session"`
	Identity string `json:"identity"`
	Target   string `json:"target"`
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
	Target   string        `json:"target"`
	Source   string        `json:"source"` // "vault", "embedded", "static"
	Username string        `json:"username,omitempty"`
	LeaseID  string        `json:"lease_id,omitempty"`
	TTL      time.Duration `json:"ttl_ns,omitempty"`
}

// CredentialRevoked is the end of a credential's life; Error is set when
// revocation failed (the lease journal retries it).
type CredentialRevoked struct {
	Session  string `json:"session"`
	Target   string `json:"target"`
	Source   string `json:"source"`
	Username string `json:"username,omitempty"`
	LeaseID  string `json:"lease_id,omitempty"`
	Error    string `json:"error,omitempty"`
}

// PolicyReloaded is a policy swap (or a rejected one, with Error).
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

// Kind implements Event.
func (DaemonStarted) Kind() Kind { return KindDaemonStarted }

// Kind implements Event.
func (ConnectionOpened) Kind() Kind { return KindConnectionOpened }

// Kind implements Event.
func (ConnectionClosed) Kind() Kind { return KindConnectionClosed }

// Kind implements Event.
func (Decision) Kind() Kind { return KindDecision }

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

func (DaemonStarted) auditEvent()     {}
func (ConnectionOpened) auditEvent()  {}
func (ConnectionClosed) auditEvent()  {}
func (Decision) auditEvent()          {}
func (ApprovalRequested) auditEvent() {}
func (ApprovalDecided) auditEvent()   {}
func (CredentialIssued) auditEvent()  {}
func (CredentialRevoked) auditEvent() {}
func (PolicyReloaded) auditEvent()    {}
func (RecordingSealed) auditEvent()   {}
func (ProtocolError) auditEvent()     {}
func (LimitExceeded) auditEvent()     {}
