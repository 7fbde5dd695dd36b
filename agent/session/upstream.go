package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
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

	mu     sync.Mutex
	issued bool
	lease  credentials.Lease // nil for a credential with nothing to revoke
	cred   protocol.Credential
	err    error
	// forget drops the credential's secret from the leak guard's set,
	// once revoked; nil for a secret that outlives the session.
	forget func()
}

// Addr implements protocol.Upstream.
func (u *upstream) Addr() string { return u.c.upstreamAddr() }

// Dial implements protocol.Upstream.
func (u *upstream) Dial(ctx context.Context) (net.Conn, error) { return dialUpstream(ctx, u.Addr()) }

// dialUpstream connects a session to its upstream: the one dial of the
// pipeline, for decoders and plain relays alike.
func dialUpstream(ctx context.Context, addr string) (net.Conn, error) {
	// Keepalive finds an upstream that vanished under an idle session, with
	// the host's timers (net.ipv4.tcp_keepalive_*), as PgBouncer does: Go's
	// own 15 s probes would cost three more setsockopt calls per session.
	d := net.Dialer{Timeout: dialTimeout, KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1},
		ControlContext: connectEarly}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	// Every read and write of a relay is a system call on the session's
	// critical path; see rawsock.
	return rawsock.Wrap(conn), nil
}

// connectEarly is the upstream dial's Control: it starts the connect
// before the runtime does. On loopback, where a host's databases and local
// services listen, the kernel completes the handshake within that call (the
// peer's SYN-ACK is processed as connect releases the socket), so the
// runtime's own connect finds the socket connected (EISCONN) and returns at
// once instead of parking the dial until the poller reports the socket
// writable: a scheduling round trip, a deadline timer and a context callback
// on every new connection's path. Anywhere else the runtime's connect gets
// EALREADY and waits as it would have; a connect that failed fails again in
// the runtime's call, which reports it as before.
func connectEarly(_ context.Context, network, address string, c syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || ap.Addr().Zone() != "" {
		return nil
	}
	var sa syscall.Sockaddr
	switch network {
	case "tcp4":
		sa = &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	case "tcp6":
		sa = &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	default:
		return nil
	}
	return c.Control(func(fd uintptr) { syscall.Connect(int(fd), sa) })
}

// Credential implements protocol.Upstream: the first call issues the
// session's credential, audited; revoke ends it.
func (u *upstream) Credential(ctx context.Context, r protocol.CredentialRequest) (protocol.Credential, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.issued || u.err != nil {
		return u.cred, u.err
	}
	t := u.c.target
	if t.Protocol == "ssh" && t.Credential.Params == nil {
		return u.sshCertificate(r)
	}
	source := u.p.cfg.Credentials.SourceName(t.Credential.Source)
	start := time.Now()
	lease, err := u.p.cfg.Credentials.Issue(ctx, credentials.Request{
		Ref: credentials.RefOf(t.Credential), Target: t.Name, Session: u.c.id, Identity: u.c.identity.Name,
		PublicKey: r.PublicKey,
	})
	u.p.cfg.Metrics.CredentialLat.WithLabelValues(source, outcomeOf(err)).Observe(metrics.Since(start))
	if err != nil {
		u.p.cfg.Log.Warn().Err(err).Str("conn", u.c.id).Str("target", t.Name).Msg("credential not issued")
		if errors.Is(err, credentials.ErrUnconfigured) {
			err = fmt.Errorf("%w: %w", protocol.ErrNoCredentialSource, err)
		}
		u.err = err
		return u.cred, err
	}
	cred := lease.Credential()
	u.issued, u.lease = true, lease
	u.cred = protocol.Credential{Username: cred.Username, Password: cred.Password, Certificate: cred.Certificate, PrivateKey: cred.PrivateKey, Fields: cred.Data}
	if cred.Expires.IsZero() {
		// It stays valid after the session (static, KV): guarded for
		// good.
		u.p.secrets.keep(cred.Password, t.Name)
	} else {
		u.forget = u.p.secrets.add(cred.Password, t.Name)
	}
	u.p.record(audit.CredentialIssued{Session: u.c.id, Identity: u.c.identity.Name, Target: t.Name, Source: source, Username: cred.Username})
	return u.cred, nil
}

// sshUserCA names Interlock's SSH user CA as a credential source.
const sshUserCA = "interlock-ssh-ca"

// sshCertificate is the credential of an SSH target that names none:
// Interlock's user CA certifies the session's key for its login user alone,
// valid for minutes, so there is nothing to revoke. The caller holds u.mu.
func (u *upstream) sshCertificate(r protocol.CredentialRequest) (protocol.Credential, error) {
	start := time.Now()
	var cert []byte
	err := errors.New("this interlockd has no SSH user CA")
	if sign := u.p.cfg.SSHUser; sign != nil {
		cert, err = sign(r.PublicKey, r.User, fmt.Sprintf("interlock session %s identity %s", u.c.id, u.c.identity.Name))
	}
	u.p.cfg.Metrics.CredentialLat.WithLabelValues(sshUserCA, outcomeOf(err)).Observe(metrics.Since(start))
	if err != nil {
		u.p.cfg.Log.Warn().Err(err).Str("conn", u.c.id).Str("target", u.c.target.Name).Msg("credential not issued")
		u.err = err
		return u.cred, err
	}
	u.issued = true
	u.cred = protocol.Credential{Username: r.User, Certificate: cert}
	u.p.record(audit.CredentialIssued{Session: u.c.id, Identity: u.c.identity.Name, Target: u.c.target.Name,
		Source: sshUserCA, Username: r.User})
	return u.cred, nil
}

// revoke ends the session's credential, if one was issued, and records how
// that went (a failed revocation is retried by the credentials manager).
func (u *upstream) revoke() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.forget != nil {
		u.forget()
		u.forget = nil
	}
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
