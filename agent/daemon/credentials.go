package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/policy"
)

// credentialCheckTimeout bounds the start-up check of the credential
// sources (one admin login and a few catalog queries per source).
const credentialCheckTimeout = 15 * time.Second

// openCredentials builds the credential manager, reporting every failed
// revocation at error level and in interlock_credential_revoke_failures_total
// (the manager retries it), and every retry that then succeeded.
func (d *Daemon) openCredentials() (*credentials.Manager, error) {
	return credentials.NewManager(d.cfg.Credentials, d.cfg.StateDir,
		credentials.OnRevokeFailure(func(f credentials.RevokeFailure) {
			d.metrics.RevokeFails.WithLabelValues(f.Source).Inc()
			d.log.Error().Err(f.Err).Str("source", f.Source).Str("handle", f.Handle).Str("lease", f.Lease).
				Msg("credential not revoked; retrying")
		}),
		credentials.OnRevokeRetried(func(f credentials.RevokeFailure) {
			d.log.Info().Str("source", f.Source).Str("handle", f.Handle).Str("lease", f.Lease).
				Msg("credential revoked on retry")
		}))
}

// checkCredentials refuses a policy whose sessions could never get their
// credential: a target whose credential block lacks what its source needs
// (an embedded source's template, a Vault role or path), a source that is
// not configured, or an embedded issuer's admin role that could create a
// session's role but not drop it again. Without any source configured
// nothing is checked: each target that needs a credential is named in a
// warning, and its sessions end with a clear error (PostgreSQL's 08004),
// as the README says. A source that cannot be reached now is logged and
// not held against the start.
func (d *Daemon) checkCredentials(ctx context.Context, p *policy.Policy) error {
	var errs []error
	var refs []credentials.Ref
	for _, t := range p.Targets() {
		// PostgreSQL sessions always need a credential; other targets
		// only when their block asks for one.
		if t.Protocol != "postgres" && t.Credential.Params == nil {
			continue
		}
		if !d.creds.Configured() {
			d.log.Warn().Str("target", t.Name).Msg("no credential source is configured: the target's sessions are refused until interlockd's credentials settings name one")
			continue
		}
		ref := credentials.RefOf(t.Credential)
		if err := d.creds.CheckRef(ref); err != nil {
			errs = append(errs, fmt.Errorf("%s: target %q: %w", t.Pos(), t.Name, err))
			continue
		}
		refs = append(refs, ref)
	}
	if len(errs) > 0 {
		return fmt.Errorf("check credentials: %w", errors.Join(errs...))
	}
	if !d.creds.Configured() {
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, credentialCheckTimeout)
	defer cancel()
	err := d.creds.CheckAccess(cctx, refs)
	switch {
	case errors.Is(err, credentials.ErrPrivileges):
		return fmt.Errorf("check credentials: %w", err)
	case err != nil:
		d.log.Warn().Err(err).Msg("credential source not checked: unreachable now; its sessions fail until it is reachable")
	}
	return nil
}

// credentialWarnings says what of the credentials block p leaves without
// effect, so that a typo in a target's name is not silent: a pool or reuse
// entry naming no target of p, and reuse for a target whose protocol keeps
// no server connections between sessions (only PostgreSQL's does; HTTP
// keeps its own upstream connections, SSH has none to keep).
func credentialWarnings(cfg credentials.Config, p *policy.Policy) []string {
	var ws []string
	for _, name := range slices.Sorted(maps.Keys(cfg.Pool)) {
		if p.Target(name) == nil {
			ws = append(ws, fmt.Sprintf("credentials.pool names target %q, which the policy does not have: nothing is issued ahead for it", name))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Reuse)) {
		switch t := p.Target(name); {
		case t == nil:
			ws = append(ws, fmt.Sprintf("credentials.reuse names target %q, which the policy does not have: no server connection is kept for it", name))
		case t.Protocol != "postgres":
			ws = append(ws, fmt.Sprintf("credentials.reuse names target %q of protocol %q: only postgres targets keep server connections between sessions", name, t.Protocol))
		}
	}
	return ws
}
