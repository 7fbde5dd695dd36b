// Package protocol is the contract between the session pipeline
// (agent/session) and the protocol decoders under decoders/. The pipeline
// owns everything a connection has whatever its protocol: who is calling,
// which target it is for, the decision at connect, the credential, the
// recording and the audit trail. A decoder owns what only its protocol
// knows: the handshake, how requests are framed, how a denial, a mask or a
// hold looks on the wire.
//
// A protocol plugs in by implementing Decoder; the pipeline registers it
// for the policy's `protocol:` value. Serve gets one Session: the agent's
// connection, the connect decision, an Upstream that dials the target and
// holds the session's credential, an Enforcer that decides each request,
// and a Recorder. This package imports nothing of the agent, so decoders
// stay pure Go (DESIGN.md: no logging, no kernel, no Vault).
//
// How each protocol maps onto the contract:
//
//   - PostgreSQL (decoders/postgres): one Session is one database session.
//     A request is a Query message, a Parse, or the Bind that executes a
//     prepared statement again (Operation OpQuery, Text the SQL); each
//     setting a StartupMessage carries is a request too (OpStartup, Text
//     the parameter name). Deny is an ErrorResponse (SQLSTATE 42501, or
//     the server's own code when Verdict.Code is set) and the session goes
//     on; Mask rewrites DataRow fields by column name; Hold sends a
//     NoticeResponse and waits. The credential is a user name and password
//     the decoder logs in upstream with; a server connection left idle
//     and reset at a session's end can serve the identity's next session
//     (Upstream.Parking, Upstream.Resume).
//   - HTTP: one Session is one agent connection, many requests. Each
//     HTTP/1.1 request, and each HTTP/2 stream, is one Decide call
//     (Operation the method, Text the path and query, Host the Host or
//     :authority, Header the request's headers), made from that request's
//     own goroutine, so a held request holds only itself. Deny is a 403
//     (gRPC: PERMISSION_DENIED); Mask rewrites the response body fields;
//     the credential becomes a header the decoder adds upstream.
//   - SSH: one Session is one SSH connection. Each channel request (exec,
//     shell, subsystem, port forwarding) is one Decide call (Operation the
//     request type, Text the command line or subsystem name). Deny is exit
//     status 126 with a message on stderr, the connection goes on; the
//     credential is a signed certificate the decoder authenticates with.
//   - MySQL and Redis: like PostgreSQL, a request per statement (OpQuery)
//     or per command (Operation the command name, Text the command line),
//     denied with the protocol's error packet or -ERR reply.
//   - Plain TCP (the fallback for targets with no decoder): the connection
//     is the only request; Connect decides it and the bytes are relayed.
package protocol

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime/debug"
	"time"
)

// Decoder serves the connections of one protocol. One Decoder serves every
// session of its protocol, concurrently; state shared between sessions
// (PostgreSQL's cancel keys) lives in it.
type Decoder interface {
	// Serve runs one session until it ends. It owns s.Agent and closes
	// it. It returns nil when the session ended normally (either side
	// closed), a *RefusedError when the session was refused before it
	// started (the agent has been told, in the protocol's words, where
	// the protocol allows it), a *ViolationError when the agent broke the
	// protocol, a *LimitError when the session went over one of s.Limits,
	// and other errors for I/O failures. With s.Finish set, it may
	// instead return ErrDetached while the session goes on, and report
	// its end through s.Finish.
	Serve(ctx context.Context, s *Session) error
}

// ErrDetached is Serve's answer for a session that goes on with no
// goroutine of its own while both its sides are idle (see Session.Finish).
var ErrDetached = errors.New("session detached")

// ErrNoCredentialSource is wrapped by Upstream.Credential's error when
// interlockd has no credential source for the target: the agent is told
// so, not to try again later.
var ErrNoCredentialSource = errors.New("no credential source is configured for the target")

// Session is one agent connection handed to a decoder.
type Session struct {
	// ID names the session in the audit trail and the recording.
	ID string
	// Identity is the name of the identity the agent runs as; state shared
	// between sessions must not cross identities.
	Identity string
	// Agent is the agent's connection.
	Agent net.Conn
	// Dst is the address the agent connected to.
	Dst netip.AddrPort
	// Target is the policy target the session is for.
	Target string
	// TLS, when set, returns a new configuration that terminates TLS from
	// the agent, which the decoder may change: its certificates are minted
	// for the name the agent asked for, under Interlock's CA. A decoder
	// calls it when it may terminate TLS (HTTP: once the agent's hello
	// asks for it; PostgreSQL: at the handshake, before the SSLRequest is
	// read), so a session keeps none beyond what its TLS connection holds.
	TLS func() *tls.Config
	// Select, when set, means the target is chosen by the server name the
	// agent asks for, which only the decoder can read (HTTP: the TLS server
	// name, else the first request's Host); Target and Connect are then
	// unset. The decoder calls it once, with that name ("" when the agent
	// sent none), before anything goes upstream: the pipeline chooses the
	// target, decides the connection to it (audited) and returns the
	// target's name and that decision, which stand for Target and Connect
	// from then on. A name no target has comes back as a Deny.
	Select func(ctx context.Context, serverName string) (target string, connect Verdict)
	// Connect is the decision on the connection itself, made before Serve
	// (and already audited). A decoder with requests refuses the session
	// when it is Deny, in its protocol's words and before anything goes
	// upstream, and otherwise decides request by request; the plain relay
	// refuses anything but Allow.
	Connect Verdict
	// Refuse, when set, is why the session must not start even though the
	// policy would allow it (its identity is at its session limit). The
	// decoder tells the agent in its protocol's words and returns it.
	Refuse *LimitError
	// Handshake bounds everything before the first request: the agent's
	// side of the handshake, the credential, the upstream login.
	Handshake time.Duration
	// Limits bound what the session may make interlockd hold.
	Limits Limits
	// Upstream reaches the target.
	Upstream Upstream
	// Enforcer decides each request.
	Enforcer Enforcer
	// Recorder records the session once it has started.
	Recorder Recorder
	// Finish, when set, lets Serve return ErrDetached before the session
	// ends, once it waits on both sides with nothing in flight: its
	// waits are handed to a Watcher, and the goroutine that ran Serve
	// would otherwise hold a stack for as long as the session stays
	// idle. The decoder then calls Finish once, on a goroutine of its
	// own, with what Serve would have returned; the caller does then
	// what it does when Serve returns. A decoder may ignore it.
	Finish func(error)
}

// Limits bound one session's share of interlockd's memory and patience.
type Limits struct {
	// MaxBuffered caps, in bytes, a message the decoder has to hold whole.
	MaxBuffered int
	// Budget, when set, is shared by every session of the identity:
	// buffers beyond a decoder's standard size are reserved from it.
	Budget Budget
	// MessageTimeout bounds how long the agent may take to finish a
	// message it has begun; 0: no limit.
	MessageTimeout time.Duration
}

// Budget is memory shared by the sessions of one identity. Safe for
// concurrent use.
type Budget interface {
	// Reserve takes n bytes, reporting false when that would exceed the
	// budget.
	Reserve(n int) bool
	// Release gives back n bytes taken by Reserve.
	Release(n int)
}

// Upstream reaches the session's target.
type Upstream interface {
	// Addr is the host:port Dial connects to.
	Addr() string
	// Dial connects to the target.
	Dial(ctx context.Context) (net.Conn, error)
	// Credential issues the session's credential the first time it is
	// called and returns the same one after; the pipeline revokes it when
	// the session ends. The agent never sees it.
	Credential(ctx context.Context, r CredentialRequest) (Credential, error)
	// Resume returns a server connection an ended session of this
	// identity parked under key (Parking), and makes the credential it is
	// logged in with this session's, in place of issuing one; nil when
	// there is none. A connection that an ended session is still resetting
	// for key is waited for, briefly: a client that reconnects at once
	// must not log in afresh. keeps reports whether the target keeps
	// connections at all: only then is a reset worth it. Key names what a
	// connection was opened for (a database, startup settings) in the
	// decoder's terms.
	Resume(key string) (conn io.Closer, keeps bool)
	// Parking announces, as soon as the agent has left, that this session's
	// server connection is being reset to be kept under key; park then
	// keeps conn, logged in with this session's credential and reset to
	// the state of a new session, for a later session of the same identity
	// and target that asks for key under the same policy. The credential
	// then ends when the pipeline drops conn (idle too long, too many idle,
	// interlockd stopping), not with this session. park must be called
	// once: with nil when the reset failed. It reports false when conn is
	// not kept; the caller closes it.
	Parking(key string) (park func(conn io.Closer) bool)
}

// CredentialRequest is what a decoder brings to the issue of a credential.
type CredentialRequest struct {
	// PublicKey, for a certificate credential (SSH), is the key the
	// certificate is issued for, in authorized_keys form; the decoder made
	// the pair for this session and holds the private key.
	PublicKey []byte
	// User is the login the credential is for (SSH: the user the session
	// logs in as, the certificate's principal), "" when the source decides.
	User string
}

// Credential is what a decoder authenticates upstream with.
type Credential struct {
	// Username and Password log in (database roles, basic schemes).
	Username, Password string
	// Certificate is a signed OpenSSH certificate (authorized_keys form).
	Certificate []byte
	// PrivateKey is an SSH private key (OpenSSH PEM) to log in with
	// instead of a certificate for the session's key (static keys of
	// legacy hosts).
	PrivateKey []byte
	// Fields holds a secret's named values (HTTP header templates).
	Fields map[string]string
}

// The operations every protocol shares. Others are the protocol's own
// (HTTP methods, SSH request types, Redis commands).
const (
	// OpQuery is a SQL statement (or several, in one message).
	OpQuery = "query"
	// OpStartup is a setting the agent asks for while connecting, before
	// any statement (PostgreSQL startup parameters); a connection cannot
	// wait for an approval, so a Hold verdict never comes back for it.
	OpStartup = "startup"
)

// Request is one thing the agent asks the target for, in terms the policy
// decides on.
type Request struct {
	// Operation is what is asked: OpQuery, OpStartup, an HTTP method, an
	// SSH request type, a Redis command name.
	Operation string
	// Text is the request's own text: SQL, a startup parameter name, an
	// HTTP path with its query, a command line. It may hold secrets; the
	// pipeline redacts it before it reaches a log or the audit trail.
	Text string
	// Host is the server name the agent asked for (HTTP Host, TLS server
	// name), "" when the protocol carries none.
	Host string
	// Header holds request metadata a policy may match (HTTP headers).
	Header map[string][]string
}

// Enforcer decides requests. A decoder calls it before a request goes
// upstream; it may block (an approval), so it is called from the goroutine
// that serves that request alone. The decision is recorded beside the
// message the decoder recorded last from the agent: record a request, then
// decide it, on one goroutine, and a decoder that serves requests
// concurrently (SSH channels, HTTP/2 streams) holds each record-and-decide
// pair under one lock of its session.
type Enforcer interface {
	Decide(ctx context.Context, r Request) Verdict
}

// Action is what happens to a request.
type Action uint8

const (
	// Allow forwards the request.
	Allow Action = iota
	// Deny answers the agent with the protocol's refusal instead; the
	// session goes on where the protocol allows it.
	Deny
	// Mask forwards the request and rewrites the response with
	// Verdict.Mask.
	Mask
	// Hold tells the agent the request awaits approval, calls
	// Verdict.Wait, then forwards or denies it.
	Hold
)

// Verdict is the answer to one request.
type Verdict struct {
	Action Action
	// Rule names the policy rule that decided; a denial names it to the
	// agent.
	Rule string
	// Message, when set, is added to the denial the agent sees.
	Message string
	// Code, when set, makes a denial the error the server itself would have
	// answered (PostgreSQL: 42601 for a statement that does not parse):
	// the agent sees Code and Message as the whole error, at Position
	// (1-based, 0 for none), and no mention of a rule.
	Code     string
	Position int
	// Mask rewrites the response of a Mask verdict.
	Mask Masker
	// ApprovalID names the pending approval of a Hold.
	ApprovalID string
	// Wait blocks until the approval is decided or ctx ends and reports
	// the outcome, with a reason for a refusal. Nil refuses.
	Wait func(ctx context.Context) (approved bool, reason string)
}

// Masker plans the masking of one response.
type Masker interface {
	// Plan is called once per result (a result set's columns, a JSON
	// document's field paths) with the names of its fields; nil means
	// nothing in it is masked.
	Plan(fields []string) FieldMasker
}

// FieldMasker masks the values of one planned result.
type FieldMasker interface {
	// Mask appends to dst the value the agent sees instead of v, for the
	// field at index field of the plan, and reports whether it differs
	// from v; when it does not, dst is returned unchanged.
	Mask(dst []byte, field int, v []byte) ([]byte, bool)
}

// Recorder records a session. Start is called once, when the session is
// established (PostgreSQL: logged in upstream, before the agent is told);
// Record is called for every message after, from any goroutine (but see
// Enforcer for the agent's requests).
type Recorder interface {
	// Start begins the recording. An error means the session must not go
	// on: unrecorded traffic is unaccountable traffic.
	Start(ctx context.Context) error
	// Ready returns the error Start would for a cause already known (the
	// recordings' file system under its reserve). A decoder asks it before
	// it logs in upstream: a session that cannot be recorded must not cost
	// a credential or a server's login first.
	Ready() error
	// Record appends one message; it must not retain m.Body.
	Record(m Message)
	// Relayed reports the bytes a decoder relayed without recording them
	// message by message (TLS passthrough), from and to the agent: the
	// session's byte counts are these, not its messages'.
	Relayed(fromAgent, toAgent int64)
}

// Message is one protocol message as it crossed the proxy.
type Message struct {
	// FromClient is true for agent to server.
	FromClient bool
	// Type is the protocol's message type (PostgreSQL: the type byte).
	Type byte
	// Body is the message as the receiving side got it (masked rows, the
	// decoder's own errors); only its first part for a streamed message.
	Body []byte
	Time time.Time
}

// RecordingUnavailable is the outcome of a session refused or ended because
// it could not be recorded (Recorder.Ready, Start); Unrecordable is what the
// agent is told, in its protocol's error.
const (
	RecordingUnavailable = "recording unavailable"
	Unrecordable         = "the session cannot be recorded; try again later"
)

// RefusedError is a session refused before it started. Outcome is a short
// label for the audit trail ("denied", "upstream unreachable", ...); Err
// says why.
type RefusedError struct {
	Outcome string
	Err     error
}

func (e *RefusedError) Error() string { return e.Outcome + ": " + e.Err.Error() }

func (e *RefusedError) Unwrap() error { return e.Err }

// ViolationError is a session ended because the agent broke the protocol.
// Msg describes framing, never content.
type ViolationError struct{ Msg string }

func (e *ViolationError) Error() string { return "protocol violation: " + e.Msg }

// InternalError is a session ended by a defect of interlockd's: a panic on
// one of its goroutines, recovered there (Contained). Bytes from one agent
// or server that reach a defect end that session, not interlockd and every
// other session with it.
type InternalError struct {
	// Where names the goroutine's work ("sftp Setstat", "session").
	Where string
	// Value is what the goroutine panicked with; Stack is its stack then.
	Value any
	Stack []byte
}

func (e *InternalError) Error() string {
	return fmt.Sprintf("internal error in %s: %v", e.Where, e.Value)
}

// Contained returns v, a value recover returned on a session's goroutine,
// as the error that ends the session, or nil when v is nil (nothing
// panicked). It is called in the function deferred by every goroutine that
// runs a decoder's code for one session, directly with recover's result:
//
//	defer func() {
//		if err := protocol.Contained("where", recover()); err != nil { ... }
//	}()
func Contained(where string, v any) *InternalError {
	if v == nil {
		return nil
	}
	return &InternalError{Where: where, Value: v, Stack: debug.Stack()}
}

// Recover, deferred by a function that returns an error, makes a panic of
// that function its error (Contained), after closing closers (the
// connections the function served, which nothing else would close then):
//
//	defer protocol.Recover("where", &err, conn)
func Recover(where string, err *error, closers ...io.Closer) {
	if ie := Contained(where, recover()); ie != nil {
		for _, c := range closers {
			c.Close()
		}
		*err = ie
	}
}

// LimitError is a session refused or ended by one of its identity's limits
// ("sessions", "message_buffer", "buffer_budget", "message_timeout"). Msg
// describes sizes and counts, never content.
type LimitError struct {
	Limit string
	Msg   string
}

func (e *LimitError) Error() string { return "limit " + e.Limit + ": " + e.Msg }
