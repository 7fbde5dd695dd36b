package credentials

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/pgrole"
)

// backend is one configured source as the Manager drives it.
type backend interface {
	// issue mints a credential. It calls commit with the handle revocation
	// will need (a role name, a Vault lease id) as soon as that is known
	// and before the credential is used: for sources that can choose the
	// handle, before the credential exists, so a crash cannot orphan it.
	// When commit fails, issue undoes what it did and returns the error.
	issue(ctx context.Context, req Request, commit func(handle string) error) (grant, error)
	// renew extends the credential by ttl and returns its new expiry.
	renew(ctx context.Context, handle string, ttl time.Duration) (time.Time, error)
	// revoke makes the credential stop working; revoking what no longer
	// exists succeeds.
	revoke(ctx context.Context, handle string) error
	// checkRef reports, without touching the network, what ref lacks
	// for this source to issue it.
	checkRef(ref Ref) error
	// checkAccess reports whether the source lets interlockd issue refs
	// and revoke what it issued; the error wraps ErrPrivileges when a
	// privilege is missing.
	checkAccess(ctx context.Context, refs []Ref) error
	close() error
}

// grant is what a backend issued.
type grant struct {
	cred   Credential
	handle string // "" when there is nothing to revoke
	// renewTTL is the increment asked for at each renewal; zero when the
	// credential is not renewable.
	renewTTL time.Duration
}

// Manager issues, renews and revokes credentials for proxied sessions. It is
// safe for concurrent use and is itself a Source.
type Manager struct {
	cfg      Config
	def      string
	backends map[string]backend
	kinds    map[string]string // source name -> static, embedded or vault
	journal  *journal
	orphans  []record // outstanding leases of earlier runs, until Recover

	onRevokeFailure func(RevokeFailure)
	onRevokeRetried func(RevokeFailure)
	retryKick       chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	open   map[string]*lease
	pools  map[string]*pool
	retry  []pendingRevoke // revocations that failed while running, retried by retryRevocations
	closed bool
}

// RevokeFailure is a revocation that failed (or, for OnRevokeRetried, one
// that failed before and has now succeeded).
type RevokeFailure struct {
	// Source is the configured source's name, Handle what it revokes (a
	// role name, a Vault lease id), Lease the journal's lease id.
	Source, Handle, Lease string
	Err                   error
}

// Option configures a Manager.
type Option func(*Manager)

// OnRevokeFailure has fn called after every failed revocation attempt, the
// retries included; the Manager keeps retrying while it runs. fn must not
// block.
func OnRevokeFailure(fn func(RevokeFailure)) Option {
	return func(m *Manager) { m.onRevokeFailure = fn }
}

// OnRevokeRetried has fn called when a revocation that had failed succeeds
// on a retry (Err is the last failure). fn must not block.
func OnRevokeRetried(fn func(RevokeFailure)) Option {
	return func(m *Manager) { m.onRevokeRetried = fn }
}

// ErrPrivileges is wrapped by CheckAccess's error when a source's account
// lacks a privilege that issuing or revoking needs.
var ErrPrivileges = pgrole.ErrPrivileges

// Bounds of the wait between retries of failed revocations: the first
// retry comes soon (a connection the role still had, a restarting server),
// later ones back off so an unreachable server is not hammered.
const (
	retryMin = time.Second
	retryMax = time.Minute
)

// NewManager builds the configured sources and opens the lease journal in
// stateDir (created 0700 if missing; locked against a second daemon). It
// does not contact PostgreSQL or Vault: connections and the Vault login
// happen on first use; CheckAccess tests them. Call Recover before serving.
func NewManager(cfg Config, stateDir string, opts ...Option) (*Manager, error) {
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("check credentials config: %w", err)
	}
	if stateDir == "" {
		return nil, errors.New("open lease journal: no state dir")
	}
	m := &Manager{
		cfg:       cfg,
		def:       cfg.Default,
		backends:  map[string]backend{},
		kinds:     map[string]string{},
		open:      map[string]*lease{},
		pools:     map[string]*pool{},
		retryKick: make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(m)
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	fail := func(err error) (*Manager, error) {
		m.cancel()
		for _, b := range m.backends {
			b.close()
		}
		return nil, err
	}
	for name, s := range cfg.Static {
		b, err := newStatic(s)
		if err != nil {
			return fail(fmt.Errorf("configure static source %q: %w", name, err))
		}
		m.backends[name], m.kinds[name] = b, "static"
	}
	for name, e := range cfg.Embedded {
		b, err := newEmbedded(name, e)
		if err != nil {
			return fail(fmt.Errorf("configure embedded source %q: %w", name, err))
		}
		m.backends[name], m.kinds[name] = b, "embedded"
	}
	if cfg.Vault != nil {
		b, err := newVault(m.ctx, *cfg.Vault)
		if err != nil {
			return fail(fmt.Errorf("configure vault source: %w", err))
		}
		m.backends[vaultSourceName], m.kinds[vaultSourceName] = b, "vault"
	}
	if m.def == "" && len(m.backends) == 1 {
		for name := range m.backends {
			m.def = name
		}
	}
	j, orphans, err := openJournal(stateDir)
	if err != nil {
		return fail(err)
	}
	m.journal, m.orphans = j, orphans
	m.wg.Add(1)
	go m.retryRevocations()
	return m, nil
}

// Reuse is how target keeps the server connections of ended sessions
// (Config.Reuse): servers is 0 when it keeps none.
func (m *Manager) Reuse(target string) (servers int, idle time.Duration) {
	r := m.cfg.Reuse[target]
	return r.Servers, cmp.Or(r.Idle, defaultReuseIdle)
}

// Configured reports whether any source is configured.
func (m *Manager) Configured() bool { return len(m.backends) > 0 }

// SourceName is the configured source a Ref's Source resolves to (the
// default for "", the only source of a kind for a kind), or the name as
// written ("none" for "") when none does: a label for metrics and audit
// records.
func (m *Manager) SourceName(source string) string {
	if name, _, err := m.backend(source); err == nil {
		return name
	}
	return cmp.Or(source, "none")
}

// CheckRef reports what ref lacks to be issued by the source it names (a
// missing template, Vault role or path), without touching the network, so
// that a configuration that can never work is refused at start rather than
// failing each session.
func (m *Manager) CheckRef(ref Ref) error {
	name, b, err := m.backend(ref.Source)
	if err != nil {
		return err
	}
	if err := b.checkRef(ref); err != nil {
		return fmt.Errorf("credential source %q: %w", name, err)
	}
	return nil
}

// CheckAccess connects to the sources refs name and reports whether
// interlockd may issue those credentials and revoke them again (for the
// embedded issuer: the admin role's attributes and memberships on this
// server version). When a privilege is missing the error wraps
// ErrPrivileges and names it; other errors (a server unreachable) do not.
func (m *Manager) CheckAccess(ctx context.Context, refs []Ref) error {
	bySource := map[string][]Ref{}
	for _, r := range refs {
		name, _, err := m.backend(r.Source)
		if err != nil {
			return err
		}
		bySource[name] = append(bySource[name], r)
	}
	names := make([]string, 0, len(bySource))
	for n := range bySource {
		names = append(names, n)
	}
	sort.Strings(names)
	var errs []error
	for _, n := range names {
		if err := m.backends[n].checkAccess(ctx, bySource[n]); err != nil {
			errs = append(errs, fmt.Errorf("credential source %q: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// Pending returns how many revocations failed while running and wait for
// their retry.
func (m *Manager) Pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.retry)
}

// pendingRevoke is a journaled lease whose revocation failed, with the
// latest failure.
type pendingRevoke struct {
	rec record
	err error
}

func (p pendingRevoke) failure() RevokeFailure {
	return RevokeFailure{Source: p.rec.Source, Handle: p.rec.Handle, Lease: p.rec.ID, Err: p.err}
}

// revokeFailed reports a failed revocation and queues it for retry.
func (m *Manager) revokeFailed(r record, err error) {
	p := pendingRevoke{rec: r, err: err}
	if m.onRevokeFailure != nil {
		m.onRevokeFailure(p.failure())
	}
	m.mu.Lock()
	m.retry = append(m.retry, p)
	m.mu.Unlock()
	select {
	case m.retryKick <- struct{}{}:
	default:
	}
}

// retryRevocations retries failed revocations until they succeed or the
// Manager closes, waiting retryMin and doubling up to retryMax while some
// keep failing. What is still pending at Close stays journaled for the
// next start's Recover.
func (m *Manager) retryRevocations() {
	defer m.wg.Done()
	delay := retryMin
	for {
		if m.Pending() == 0 {
			delay = retryMin
			select {
			case <-m.ctx.Done():
				return
			case <-m.retryKick:
			}
			continue
		}
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(delay):
		}
		m.mu.Lock()
		batch := m.retry
		m.retry = nil
		m.mu.Unlock()
		var left []pendingRevoke
		for i, p := range batch {
			if m.ctx.Err() != nil {
				left = append(left, batch[i:]...)
				break
			}
			ctx, cancel := context.WithTimeout(m.ctx, revokeTimeout)
			err := m.backends[p.rec.Source].revoke(ctx, p.rec.Handle)
			cancel()
			if err != nil {
				if m.ctx.Err() != nil {
					left = append(left, batch[i:]...)
					break
				}
				p.err = fmt.Errorf("revoke lease %s from %q: %w", p.rec.ID, p.rec.Source, err)
				left = append(left, p)
				if m.onRevokeFailure != nil {
					m.onRevokeFailure(p.failure())
				}
				continue
			}
			m.journal.append(record{Op: opRevoke, ID: p.rec.ID})
			if m.onRevokeRetried != nil {
				m.onRevokeRetried(p.failure())
			}
		}
		m.mu.Lock()
		m.retry = append(left, m.retry...)
		m.mu.Unlock()
		if len(left) > 0 {
			delay = min(2*delay, retryMax)
		}
	}
}

// Outstanding returns how many leases of earlier runs are still journaled as
// not revoked (Recover's work).
func (m *Manager) Outstanding() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.orphans)
}

// Recover revokes every lease an earlier run journaled and did not revoke
// (Vault leases through sys/leases/revoke, embedded roles by terminating
// their backends and dropping them). The daemon calls it before serving.
// Leases it cannot revoke stay journaled; the error names them, and a later
// Recover (or the next start) tries again.
func (m *Manager) Recover(ctx context.Context) error {
	m.mu.Lock()
	orphans := m.orphans
	m.mu.Unlock()
	var errs []error
	var left []record
	for _, r := range orphans {
		b, ok := m.backends[r.Source]
		if !ok {
			errs = append(errs, fmt.Errorf("revoke lease %s (%s): source %q is no longer configured", r.ID, r.Handle, r.Source))
			left = append(left, r)
			continue
		}
		if err := b.revoke(ctx, r.Handle); err != nil {
			err = fmt.Errorf("revoke lease %s (%s) from %q: %w", r.ID, r.Handle, r.Source, err)
			if m.onRevokeFailure != nil {
				m.onRevokeFailure(pendingRevoke{rec: r, err: err}.failure())
			}
			errs = append(errs, err)
			left = append(left, r)
			continue
		}
		if err := m.journal.append(record{Op: opRevoke, ID: r.ID}); err != nil {
			errs = append(errs, err)
		}
	}
	m.mu.Lock()
	m.orphans = left
	m.mu.Unlock()
	return errors.Join(errs...)
}

// Issue mints the credential for one session: from the pool when the target
// has one with a credential ready, otherwise from the source the Ref names.
// The lease is renewed in the background until it is closed. Every error
// wraps ErrNotIssued and never contains a password.
func (m *Manager) Issue(ctx context.Context, req Request) (Lease, error) {
	name, b, err := m.backend(req.Ref.Source)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotIssued, err)
	}
	req.Ref.Source = name
	if p := m.pool(req); p != nil {
		if l := p.take(req); l != nil {
			return l, nil
		}
	}
	l, err := m.issue(ctx, name, b, req)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (m *Manager) backend(source string) (string, backend, error) {
	if source == "" {
		source = m.def
	}
	if source == "" {
		return "", nil, fmt.Errorf("%w (none named, and no default)", ErrUnconfigured)
	}
	b, ok := m.backends[source]
	if !ok {
		// A policy may name the kind of source rather than its name:
		// "embedded" means the one embedded source, if there is one.
		var only string
		n := 0
		for name, kind := range m.kinds {
			if kind == source {
				only = name
				n++
			}
		}
		if n == 1 {
			return only, m.backends[only], nil
		}
		names := make([]string, 0, len(m.backends))
		for n := range m.backends {
			names = append(names, n)
		}
		if len(names) == 0 {
			return "", nil, fmt.Errorf("%w: the policy names source %q, and none is configured", ErrUnconfigured, source)
		}
		sort.Strings(names)
		return "", nil, fmt.Errorf("%w: source %q is not one of %v", ErrUnconfigured, source, names)
	}
	return source, b, nil
}

// issue mints a fresh credential, journals it and starts its renewal.
func (m *Manager) issue(ctx context.Context, name string, b backend, req Request) (*lease, error) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("%w: credential manager is closed", ErrNotIssued)
	}
	id := newID()
	var journaled string
	commit := func(handle string) error {
		if handle == "" {
			return nil
		}
		err := m.journal.append(record{Op: opIssue, ID: id, Source: name, Handle: handle,
			Target: req.Target, Session: req.Session, Identity: req.Identity})
		if err == nil {
			journaled = handle
		}
		return err
	}
	g, err := b.issue(ctx, req, commit)
	if err != nil {
		if journaled != "" {
			// The backend may have half-created it; make sure it is gone
			// and say so in the journal, or leave it for Recover.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
			if err := b.revoke(rctx, journaled); err != nil {
				m.revokeFailed(record{ID: id, Source: name, Handle: journaled}, fmt.Errorf("revoke lease %s from %q: %w", id, name, err))
			} else {
				m.journal.append(record{Op: opRevoke, ID: id})
			}
			cancel()
		}
		return nil, fmt.Errorf("%w: source %q for target %q: %w", ErrNotIssued, name, req.Target, err)
	}
	l := &lease{m: m, id: id, source: name, b: b, handle: g.handle, renewTTL: g.renewTTL,
		cred: g.cred, done: make(chan struct{})}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		// Closed while this was being issued: Close did not see it.
		revokeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
		l.revoke(revokeCtx)
		cancel()
		return nil, fmt.Errorf("%w: credential manager is closed", ErrNotIssued)
	}
	m.open[id] = l
	// Added under m.mu so that Close, once it has seen l, waits for its
	// renewals through l.done before it waits for m.wg.
	renews := g.renewTTL > 0 && g.handle != "" && !g.cred.Expires.IsZero()
	if renews {
		m.wg.Add(1)
	}
	m.mu.Unlock()
	if renews {
		l.startRenewals()
	} else {
		close(l.done)
	}
	return l, nil
}

// Close drains the pools, revokes every lease still open (the daemon's
// sessions end with it), stops renewals, closes the sources and the journal.
// Leases it cannot revoke stay journaled for the next Recover.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	pools := m.pools
	m.mu.Unlock()
	for _, p := range pools {
		p.stop()
	}
	m.mu.Lock()
	open := make([]*lease, 0, len(m.open))
	for _, l := range m.open {
		open = append(open, l)
	}
	m.mu.Unlock()
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, l := range open {
		if err := l.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	m.cancel()
	m.wg.Wait()
	for _, b := range m.backends {
		if err := b.close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.journal.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// lease is a Manager-issued Lease.
type lease struct {
	m        *Manager
	id       string
	source   string
	b        backend
	handle   string
	renewTTL time.Duration
	done     chan struct{} // closed when renewals have ended

	mu   sync.Mutex
	cred Credential

	// The renewals' state (see startRenewals), under rmu: timer runs the
	// next one, cancel interrupts the one under way, stopped asks them to
	// end and over says they have.
	rmu     sync.Mutex
	timer   *time.Timer
	cancel  context.CancelFunc
	stopped bool
	over    bool

	closeOnce sync.Once
	closeErr  error
}

func (l *lease) Credential() Credential {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cred
}

// revokeTimeout bounds one revocation in Close.
const revokeTimeout = 30 * time.Second

// Close ignores ctx's cancellation: it is usually called as the session's
// context ends, and revocation must happen all the same. It gives up after
// revokeTimeout.
func (l *lease) Close(ctx context.Context) error {
	l.closeOnce.Do(func() {
		l.stopRenewals()
		<-l.done
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), revokeTimeout)
		defer cancel()
		l.closeErr = l.revoke(rctx)
	})
	return l.closeErr
}

// revoke revokes the credential, journals it and forgets the lease. When
// revocation fails, the Manager retries it in the background.
func (l *lease) revoke(ctx context.Context) error {
	defer func() {
		l.m.mu.Lock()
		delete(l.m.open, l.id)
		l.m.mu.Unlock()
	}()
	if l.handle == "" {
		return nil
	}
	if err := l.b.revoke(ctx, l.handle); err != nil {
		err = fmt.Errorf("revoke lease %s from %q: %w", l.id, l.source, err)
		l.m.revokeFailed(record{ID: l.id, Source: l.source, Handle: l.handle}, err)
		return err
	}
	return l.m.journal.append(record{Op: opRevoke, ID: l.id})
}

// startRenewals renews at half the remaining lifetime. Failures (Vault or
// PostgreSQL unreachable) are retried every tenth of the TTL: a session is
// never ended because renewal failed, only the credential's expiry bounds it.
// They stop when renewal no longer extends the lease (a maximum TTL reached),
// at stopRenewals or when the Manager closes, and then close l.done, once,
// with no renewal running. They run on a timer, not a goroutine of their
// own: a lease waits most of its life, and a goroutine parked for it kept
// the stack its last renewal had grown (with 300 idle PostgreSQL sessions
// renewing, RSS rose by 2.6 KiB per session every 10 s). Their state is
// the lease's own fields, not closures and contexts of their own: every
// idle PostgreSQL session holds a lease, and those were 0.8 KiB of the
// 9 KiB it held.
func (l *lease) startRenewals() {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	l.timer = time.AfterFunc(l.nextRenewal(), l.renew)
}

// renew is one renewal, run by l.timer.
func (l *lease) renew() {
	l.rmu.Lock()
	if l.stopped {
		// Stopped as the timer fired: stopRenewals left the end to this.
		l.endRenewals()
		l.rmu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(l.m.ctx)
	l.cancel = cancel
	l.rmu.Unlock()

	next := min(max(l.renewTTL/10, 100*time.Millisecond), 10*time.Second) // after a failure
	prev := l.Credential().Expires
	exp, err := l.b.renew(ctx, l.handle, l.renewTTL)
	cancel()
	if err == nil {
		l.mu.Lock()
		l.cred.Expires = exp
		l.mu.Unlock()
		next = 0
		if exp.After(prev) {
			next = l.nextRenewal()
		}
	}

	l.rmu.Lock()
	defer l.rmu.Unlock()
	l.cancel = nil
	if next == 0 || l.stopped || l.m.ctx.Err() != nil {
		l.endRenewals()
		return
	}
	l.timer.Reset(next)
}

// stopRenewals ends the renewals: at once when none is under way, else
// when it returns (interrupted).
func (l *lease) stopRenewals() {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	if l.stopped {
		return
	}
	l.stopped = true
	if l.timer == nil {
		return // it never renewed: l.done is closed
	}
	if l.cancel != nil {
		l.cancel()
	}
	if !l.over && l.timer.Stop() {
		l.endRenewals()
	}
}

// endRenewals says the renewals are over; l.rmu is held.
func (l *lease) endRenewals() {
	l.over = true
	close(l.done)
	l.m.wg.Done()
}

// fresh reports whether the credential has more than a quarter of its TTL
// left (or does not expire).
func (l *lease) fresh() bool {
	exp := l.Credential().Expires
	return exp.IsZero() || l.renewTTL == 0 || time.Until(exp) > l.renewTTL/4
}

func (l *lease) nextRenewal() time.Duration {
	return max(time.Until(l.Credential().Expires)/2, 10*time.Millisecond)
}

func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sameRef reports whether two refs ask for the same kind of credential.
func sameRef(a, b Ref) bool { return reflect.DeepEqual(a, b) }
