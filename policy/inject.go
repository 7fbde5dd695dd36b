package policy

import (
	"net/textproto"
	"text/template"
)

// Inject is where an http target's credential goes in each request: the
// header Header, set to Template executed over the credential (.secret, its
// secret; .username, its user name; and each field of a Vault secret by
// its own name, e.g. .token). Whatever the agent sent in that header is
// replaced.
type Inject struct {
	// Header is the header's canonical name.
	Header string
	// Template fails on a field the credential does not have
	// (missingkey=error), so a misspelt field is an issue error, not an
	// empty header.
	Template *template.Template
}

// credentialKindAWS is the credential kind that re-signs each request
// (Signature V4) rather than writing a header: the only credential of an
// http target that needs no inject block.
const credentialKindAWS = "aws"

// httpCredential checks an http target's credential block: a credential is
// only added to requests interlockd decrypts, and it goes into a header
// its inject block names (aws keys re-sign the request instead).
func (c *compiler) httpCredential(r *rawTarget, t *Target) {
	raw, has := r.Credential["inject"]
	if r.Protocol != "http" {
		if has {
			c.errorf(r.Keys.at("credential", r.Pos), "target %q: credential inject is only for http targets", r.Name)
		}
		return
	}
	if r.Credential == nil {
		return
	}
	if r.TLS != TLSIntercept {
		c.errorf(r.Keys.at("credential", r.Pos), "target %q: a credential is only added to requests interlockd decrypts: set tls: intercept", r.Name)
		return
	}
	kind, _ := r.Credential["kind"].(string)
	if kind == credentialKindAWS {
		if has {
			c.errorf(r.Keys.at("credential", r.Pos), "target %q: aws credentials re-sign each request (Signature V4); drop inject", r.Name)
		}
		return
	}
	m, ok := raw.(map[string]any)
	if !ok {
		c.errorf(r.Keys.at("credential", r.Pos), "target %q: credential needs inject: {header: NAME, template: \"... {{.secret}} ...\"}", r.Name)
		return
	}
	for k := range m {
		if k != "header" && k != "template" {
			c.errorf(r.Keys.at("credential", r.Pos), "target %q: credential inject: unknown key %q (want header, template)", r.Name, k)
		}
	}
	header, _ := m["header"].(string)
	text, _ := m["template"].(string)
	if header == "" || text == "" {
		c.errorf(r.Keys.at("credential", r.Pos), "target %q: credential inject needs header and template", r.Name)
		return
	}
	tmpl, err := template.New(r.Name).Option("missingkey=error").Parse(text)
	if err != nil {
		c.errorf(r.Keys.at("credential", r.Pos), "target %q: credential inject template: %v", r.Name, err)
		return
	}
	t.Inject = &Inject{Header: textproto.CanonicalMIMEHeaderKey(header), Template: tmpl}
}
