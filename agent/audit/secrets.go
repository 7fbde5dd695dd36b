package audit

import "github.com/rs/zerolog"

// Kinds of the credential events of HTTP targets.
const (
	KindCredentialFailed Kind = "credential.failed"
	KindSecretRefused    Kind = "secret.refused"
)

// CredentialFailed is a credential a session needed and could not get
// (Vault unreachable, a role or path missing): the request that needed it
// was answered with an error, other sessions go on. Error is the source's
// error, which names no secret; Role is the Vault role or path asked for.
type CredentialFailed struct {
	Session  string `json:"session"`
	Identity string `json:"identity,omitempty"`
	Target   string `json:"target"`
	Source   string `json:"source"`
	Role     string `json:"role,omitempty"`
	Error    string `json:"error"`
}

// SecretRefused is a request refused because it carried a secret
// interlockd injects for another target (or the placeholder standing for
// one) to a host that is not that target's. Owner is the target the secret
// belongs to, Target and Host where the request went, Where the part of the
// request it was found in ("header Authorization", "url", "body").
type SecretRefused struct {
	Session  string `json:"session"`
	Identity string `json:"identity,omitempty"`
	Target   string `json:"target"`
	Host     string `json:"host"`
	Owner    string `json:"owner"`
	Where    string `json:"where"`
	// Placeholder is true when what was sent was the placeholder an
	// `interlock exec --placeholder` child holds, not the secret itself.
	Placeholder bool `json:"placeholder,omitempty"`
}

// Kind implements Event.
func (CredentialFailed) Kind() Kind { return KindCredentialFailed }

// Kind implements Event.
func (SecretRefused) Kind() Kind { return KindSecretRefused }

func (e CredentialFailed) logTo(l *zerolog.Logger) {
	l.Error().Str("event", "credential_failed").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Str("source", e.Source).Str("role", e.Role).Str("error", e.Error).
		Msg("credential not issued")
}

func (e SecretRefused) logTo(l *zerolog.Logger) {
	l.Warn().Str("event", "secret_refused").Str("conn", e.Session).Str("identity", e.Identity).
		Str("target", e.Target).Str("host", e.Host).Str("owner", e.Owner).Str("where", e.Where).
		Bool("placeholder", e.Placeholder).Msg("request refused: it carried another target's secret")
}
