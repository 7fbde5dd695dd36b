// Package credentials issues just-in-time credentials for proxied sessions:
// one credential per session, minted when the agent connects, renewed while
// the session lasts, revoked when it ends, and never handed to the agent.
//
// A Manager owns the configured sources (static, the embedded PostgreSQL
// issuer, Vault), a lease journal in the daemon's state directory so that a
// restarted daemon can revoke what a crash left behind, the renewal loops and
// an optional pool of pre-issued credentials.
package credentials

import (
	"context"
	"errors"
	"time"

	"github.com/interlock-dev/interlock/policy"
)

// ErrNotIssued is wrapped by every error Issue returns: the credential could
// not be issued (source unreachable, refused, misconfigured). The proxy turns
// it into a protocol-native error for the agent; errors.Is finds it.
var ErrNotIssued = errors.New("credential could not be issued")

// ErrUnconfigured is wrapped, with ErrNotIssued, when no configured source
// answers for the request: a setting to fix, which asking again will not.
var ErrUnconfigured = errors.New("no credential source is configured for it")

// Ref is what a policy target says about its credential (the policy file's
// `credential:` block). Which fields matter depends on the source:
//
//	{Source: "vault", Kind: "database", Role: "readonly"}   Vault database/creds/readonly
//	{Source: "vault", Kind: "ssh", Role: "agents"}           Vault ssh/sign/agents
//	{Source: "vault", Kind: "kv", Path: "secret/data/app"}   Vault KV v2 read
//	{Source: "vault", Kind: "kv", Path: "secret/data/ci/forge", Field: "token"}
//	{Source: "vault", Kind: "aws", Role: "s3-rw"}            Vault aws/creds/s3-rw
//	{Source: "vault", Kind: "aws", Path: "aws/sts/deploy"}   Vault aws/sts/deploy
//	{Source: "vault", Kind: "generic", Path: "github/token", Field: "token"}  any Vault read
//	{Source: "embedded", Template: "agent_readonly"}         embedded PostgreSQL role
//	{Source: "legacy"}                                       a static source named legacy
type Ref struct {
	// Source names a configured source; empty means the configured
	// default. A kind (static, embedded) also works when exactly one source
	// of that kind is configured.
	Source string `yaml:"source" json:"source,omitempty"`
	// Kind is the Vault secrets engine: database (default), ssh, kv, aws,
	// or generic (any path read, its fields kept).
	Kind string `yaml:"kind" json:"kind,omitempty"`
	// Role is the Vault role (database/creds/<role>, ssh/sign/<role>).
	Role string `yaml:"role" json:"role,omitempty"`
	// Path is the full Vault API path of a KV v2 secret, e.g. secret/data/app.
	Path string `yaml:"path" json:"path,omitempty"`
	// Field, for Kind kv and generic, names the field that is the
	// credential's Password (an HTTP target's .secret); without it,
	// Password is a KV secret's "password" field (generic: none).
	Field string `yaml:"field" json:"field,omitempty"`
	// Template is the PostgreSQL role the embedded issuer grants to the
	// session's role; the session's privileges are exactly the template's.
	Template string `yaml:"template" json:"template,omitempty"`
	// TTL is the credential's lifetime between renewals; zero means the
	// source's default. Renewal keeps the credential valid while the
	// session lasts, so a short TTL only bounds how long a leaked or
	// orphaned credential stays usable.
	TTL time.Duration `yaml:"ttl" json:"ttl,omitempty"`
	// Principals are the SSH certificate's valid principals (Kind ssh).
	Principals []string `yaml:"principals" json:"principals,omitempty"`
}

// Request asks for the credential of one session.
type Request struct {
	Ref Ref
	// Target is the policy target's name; pools are kept per target.
	Target string
	// Session is the proxy's session id, recorded in the lease journal.
	Session string
	// Identity is the kernel-attested identity of the agent; the embedded
	// issuer puts it in the role name so database logs show who it was.
	Identity string
	// PublicKey is the SSH public key (authorized_keys format) to certify
	// for Kind ssh; the proxy holds the private key, never the agent.
	PublicKey []byte
}

// Credential is what the proxy presents upstream. It never reaches the agent.
type Credential struct {
	// Username and Password log in upstream (database credentials, or a
	// KV secret's "username" and "password" fields; an AWS access key id
	// and secret key).
	Username string
	Password string
	// Certificate is the signed OpenSSH certificate (authorized_keys
	// format) for Kind ssh.
	Certificate []byte
	// PrivateKey is a static source's SSH private key (OpenSSH PEM).
	PrivateKey []byte
	// Data holds every field of a KV secret as strings (Username and
	// Password are also filled from its "username" and "password").
	Data map[string]string
	// Expires is when the credential stops working unless renewed; zero
	// means it does not expire on its own (static, KV).
	Expires time.Time
}

// Lease is one issued credential. Implementations are safe for concurrent
// use.
type Lease interface {
	// Credential returns the credential; Expires moves forward with each
	// renewal.
	Credential() Credential
	// Close stops renewal, revokes the credential (for the embedded issuer:
	// terminates the role's backends and drops it) and records the
	// revocation in the journal. It is idempotent: later calls return the
	// first call's result. Revocation goes ahead even when ctx is already
	// cancelled (a session's context typically is by then), bounded by its
	// own timeout. When revocation fails, the Manager retries it in the
	// background while it runs, and the lease stays in the journal until
	// it succeeds, for the next start's Recover if the daemon stops first.
	Close(ctx context.Context) error
}

// Source issues credentials. A Manager is a Source; tests and the proxy
// may provide others (a func adapter is SourceFunc).
type Source interface {
	Issue(ctx context.Context, req Request) (Lease, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context, req Request) (Lease, error)

// Issue calls f.
func (f SourceFunc) Issue(ctx context.Context, req Request) (Lease, error) { return f(ctx, req) }

// RefOf turns a policy target's credential block into a Ref.
func RefOf(r policy.CredentialRef) Ref {
	ref := Ref{Source: r.Source, Role: r.Role, Path: r.Path}
	str := func(k string) string { s, _ := r.Params[k].(string); return s }
	ref.Kind, ref.Template, ref.Field = str("kind"), str("template"), str("field")
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
