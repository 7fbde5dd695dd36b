package session

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/decoders/protocol"
)

// revokeTimeout bounds revoking a session's credential at its end.
const revokeTimeout = 10 * time.Second

// upstream reaches one session's target (protocol.Upstream) and holds the
// credential issued for it.
type upstream struct {
	p *Pipeline
	c *conn

	mu    sync.Mutex
	lease credentials.Lease
	cred  protocol.Credential
	err   error
}

// Addr implements protocol.Upstream.
func (u *upstream) Addr() string { return u.c.upstreamAddr() }

// Dial implements protocol.Upstream.
func (u *upstream) Dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", u.Addr())
	if err != nil {
		return nil, err
	}
	// Every read and write of a relay is a system call on the session's
	// critical path; see rawsock.
	return rawsock.Wrap(conn), nil
}

// Credential implements protocol.Upstream: the first call issues the
// session's credential, audited; revoke ends it.
func (u *upstream) Credential(ctx context.Context, r protocol.CredentialRequest) (protocol.Credential, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.lease != nil || u.err != nil {
		return u.cred, u.err
	}
	t := u.c.target
	source := u.p.cfg.Credentials.SourceName(t.Credential.Source)
	start := time.Now()
	lease, err := u.p.cfg.Credentials.Issue(ctx, credentials.Request{
		Ref: credentials.RefOf(t.Credential), Target: t.Name, Session: u.c.id, Identity: u.c.identity.Name,
		PublicKey: r.PublicKey,
	})
	u.p.cfg.Metrics.CredentialLat.WithLabelValues(source, outcomeOf(err)).Observe(metrics.Since(start))
	if err != nil {
		u.p.cfg.Log.Warn().Err(err).Str("conn", u.c.id).Str("target", t.Name).Msg("credential not issued")
		u.err = err
		return u.cred, err
	}
	cred := lease.Credential()
	u.lease = lease
	u.cred = protocol.Credential{Username: cred.Username, Password: cred.Password, Certificate: cred.Certificate, Fields: cred.Data}
	u.p.record(audit.CredentialIssued{Session: u.c.id, Identity: u.c.identity.Name, Target: t.Name, Source: source, Username: cred.Username})
	return u.cred, nil
}

// revoke ends the session's credential, if one was issued, and records how
// that went (a failed revocation is retried by the credentials manager).
func (u *upstream) revoke() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), revokeTimeout)
	defer cancel()
	t := u.c.target
	ev := audit.CredentialRevoked{Session: u.c.id, Identity: u.c.identity.Name, Target: t.Name,
		Source: u.p.cfg.Credentials.SourceName(t.Credential.Source), Username: u.cred.Username}
	if err := u.lease.Close(ctx); err != nil {
		ev.Error = err.Error()
	}
	u.lease = nil
	u.p.record(ev)
}

func outcomeOf(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
