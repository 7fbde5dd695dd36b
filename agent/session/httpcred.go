package session

import (
	"cmp"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	nethttp "net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/decoders/http"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
)

// httpGuard is the pipeline's http.Guard: it writes the session's
// credential into requests for a target with an inject block, swaps
// placeholders for their secret on requests to the secret's target,
// refuses any request that carries a secret (or placeholder) elsewhere,
// and scrubs secrets out of what the agent reads.
type httpGuard struct{ p *Pipeline }

// Outbound implements http.Guard.
func (g httpGuard) Outbound(ctx context.Context, s *protocol.Session, target string, req *nethttp.Request) error {
	u, _ := s.Upstream.(*upstream)
	if secrets := g.p.secrets.load(); len(secrets) > 0 {
		if err := g.guardRequest(u, secrets, target, req); err != nil {
			return err
		}
	}
	t := g.p.cfg.Policy.Current().Target(target)
	if t == nil || u == nil || t.Credential.Params == nil {
		return nil
	}
	if credentials.RefOf(t.Credential).Kind == "aws" {
		return g.awsResign(ctx, u, target, req)
	}
	if t.Inject == nil {
		return nil
	}
	cred, err := g.credential(ctx, u, target)
	if err != nil {
		return err
	}
	var b strings.Builder
	if err := t.Inject.Template.Execute(&b, templateData(cred)); err != nil {
		return &http.Refusal{Status: nethttp.StatusBadGateway,
			Message: fmt.Sprintf("the credential for target %s does not fit its inject template: %v", t.Name, err)}
	}
	// What the agent sent as a credential is never trusted: its own
	// Authorization goes, and the named header is replaced.
	req.Header.Del("Authorization")
	req.Header.Set(t.Inject.Header, b.String())
	return nil
}

// Passes implements http.Guard: with no secret known to the leak guard
// and no credential written into target's requests, Outbound and Inbound
// change nothing.
func (g httpGuard) Passes(s *protocol.Session, target string) bool {
	if len(g.p.secrets.load()) > 0 {
		return false
	}
	t := g.p.cfg.Policy.Current().Target(target)
	return t == nil || t.Credential.Params == nil
}

// auditCredentialFailed is the audit event of a credential t's session u
// could not get.
func auditCredentialFailed(p *Pipeline, u *upstream, t *policy.Target, err error) audit.CredentialFailed {
	return audit.CredentialFailed{Session: u.c.id, Identity: u.c.identity.Name, Target: t.Name,
		Source: p.cfg.Credentials.SourceName(t.Credential.Source), Role: cmp.Or(t.Credential.Role, t.Credential.Path), Error: err.Error()}
}

// templateData is what an inject template sees: the secret's fields by
// name, .username and .secret.
func templateData(c protocol.Credential) map[string]string {
	data := make(map[string]string, len(c.Fields)+2)
	for k, v := range c.Fields {
		data[k] = v
	}
	data["username"], data["secret"] = c.Username, c.Password
	return data
}

// guardRequest looks for known secrets in a request to target: a
// placeholder of target is swapped for its secret, a secret of target is
// let through, anything else refuses the request (audited). The body is
// checked as it streams, and its Accept-Encoding dropped so that the
// response can be scrubbed.
func (g httpGuard) guardRequest(u *upstream, secrets []secret, target string, req *nethttp.Request) error {
	refuse := func(where string) func(s *secret) ([]byte, error) {
		return func(s *secret) ([]byte, error) {
			switch {
			case s.ownedBy(target) && s.real != nil:
				return s.real, nil
			case s.ownedBy(target):
				return s.value, nil
			}
			ev := audit.SecretRefused{Target: target, Host: hostOnly(req.Host), Owner: strings.Join(s.owners, ","), Where: where, Placeholder: s.placeholder}
			if u != nil {
				ev.Session, ev.Identity = u.c.id, u.c.identity.Name
			}
			g.p.record(ev)
			what := "a secret"
			if s.placeholder {
				what = "a placeholder"
			}
			if s.encoded {
				what += " (base64)"
			}
			return nil, &http.Refusal{Status: nethttp.StatusForbidden,
				Message: fmt.Sprintf("refused by interlock: the request carries %s of target %s in its %s, and goes to %s", what, strings.Join(s.owners, ","), where, target)}
		}
	}
	for k, vs := range req.Header {
		for i, v := range vs {
			nv, err := replaceAll(v, secrets, refuse("header "+k))
			if err != nil {
				return err
			}
			vs[i] = nv
		}
	}
	for _, part := range []*string{&req.URL.Path, &req.URL.RawPath, &req.URL.RawQuery} {
		nv, err := replaceAll(*part, secrets, refuse("url"))
		if err != nil {
			return err
		}
		*part = nv
	}
	// A secret percent-encoded in the query is a secret all the same.
	if q, err := url.QueryUnescape(req.URL.RawQuery); err == nil && q != req.URL.RawQuery {
		if _, err := replaceAll(q, secrets, refuse("url")); err != nil {
			return err
		}
	}
	if req.Body != nil && req.Body != nethttp.NoBody {
		req.Body = newScanner(req.Body, secrets, refuse("body"))
	}
	req.Header.Del("Accept-Encoding")
	return nil
}

// Inbound implements http.Guard: the secrets interlockd holds are replaced
// in the response's head and body by what the agent may see (asterisks,
// or the placeholder it holds).
func (g httpGuard) Inbound(_ *protocol.Session, _ string, resp *nethttp.Response) error {
	var secrets []secret
	for _, s := range g.p.secrets.load() {
		if !s.placeholder {
			secrets = append(secrets, s)
		}
	}
	if len(secrets) == 0 {
		return nil
	}
	show := func(s *secret) ([]byte, error) { return s.shown, nil }
	for _, vs := range resp.Header {
		for i, v := range vs {
			vs[i], _ = replaceAll(v, secrets, show)
		}
	}
	if resp.Body == nil || resp.Body == nethttp.NoBody || resp.StatusCode == nethttp.StatusSwitchingProtocols {
		// A 101's body is the upgraded connection, relayed as it is.
		return nil
	}
	switch enc := strings.ToLower(resp.Header.Get("Content-Encoding")); enc {
	case "", "identity":
	case "gzip":
		// The request went without Accept-Encoding; a server that
		// compresses all the same is answered decompressed.
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return fmt.Errorf("the response could not be checked for secrets: %w", err)
		}
		resp.Body = struct {
			io.Reader
			io.Closer
		}{zr, resp.Body}
		resp.Header.Del("Content-Encoding")
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
	default:
		resp.Body.Close()
		return fmt.Errorf("the response is encoded %s and could not be checked for secrets", enc)
	}
	resp.Body = newScanner(resp.Body, secrets, show)
	return nil
}

// hostOnly is a Host header without its port.
func hostOnly(hostport string) string {
	if i := strings.LastIndexByte(hostport, ':'); i >= 0 && !strings.Contains(hostport[i:], "]") {
		return hostport[:i]
	}
	return hostport
}

// Placeholder issues target's credential for the commands of an `interlock
// exec` (session names it in the lease journal) and returns a fake of its
// secret's shape for the command's environment: on requests to target it
// is swapped for the secret, sent anywhere else it is refused, and a
// response shows it where the secret was. release forgets the placeholder
// and revokes the credential; call it when the exec ends.
func (p *Pipeline) Placeholder(ctx context.Context, identity, target, session string) (placeholder string, release func(), err error) {
	t := p.cfg.Policy.Current().Target(target)
	if t == nil || t.Inject == nil {
		return "", nil, fmt.Errorf("target %q has no credential written into its requests (an http target with credential inject)", target)
	}
	source := p.cfg.Credentials.SourceName(t.Credential.Source)
	lease, err := p.cfg.Credentials.Issue(ctx, credentials.Request{Ref: credentials.RefOf(t.Credential), Target: t.Name, Session: session, Identity: identity})
	if err != nil {
		p.record(audit.CredentialFailed{Session: session, Identity: identity, Target: t.Name, Source: source,
			Role: cmp.Or(t.Credential.Role, t.Credential.Path), Error: err.Error()})
		return "", nil, fmt.Errorf("the credential for target %s could not be issued", t.Name)
	}
	real := lease.Credential().Password
	if len(real) < minSecretLen {
		lease.Close(ctx)
		return "", nil, fmt.Errorf("the secret of target %s is shorter than %d bytes: a placeholder for it would be found by chance", t.Name, minSecretLen)
	}
	p.record(audit.CredentialIssued{Session: session, Identity: identity, Target: t.Name, Source: source})
	placeholder = newPlaceholder(real)
	forget := p.secrets.addPlaceholder(placeholder, real, t.Name)
	var once sync.Once
	return placeholder, func() {
		once.Do(func() {
			forget()
			ev := audit.CredentialRevoked{Session: session, Identity: identity, Target: t.Name, Source: source}
			if err := lease.Close(context.Background()); err != nil {
				ev.Error = err.Error()
			}
			p.record(ev)
		})
	}, nil
}
