package session

import (
	"context"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
)

// reuseMargin is how long a parked connection's credential must still be
// valid for a session to take it: one whose renewals have been failing may
// expire under the session (the server would let the backend go on, but
// the credential's lifetime is the promise).
const reuseMargin = 30 * time.Second

// resumeWait bounds how long a session waits for a server connection that
// an ended session of its identity is resetting (Parking) before it logs
// in afresh. A reset is one round trip (DISCARD ALL) and takes well under
// a millisecond; a server slower than this would be slow to log in to as
// well.
const resumeWait = 20 * time.Millisecond

// servers holds the server connections ended sessions parked
// (protocol.Upstream.Parking) until a session of the same identity, target
// and key takes one, or they are dropped with their credential
// (credentials.ReuseConfig).
type servers struct {
	mu   sync.Mutex
	idle map[serverKey][]*parked
	// resetting counts, per key, the connections ended sessions are
	// resetting to park (Parking); sessions that find none idle wait for
	// them.
	resetting map[serverKey]*resets
	closed    bool
}

// resets is how many connections of one key are being reset; settled is
// closed, and replaced, each time one of them is parked or given up.
type resets struct {
	n       int
	settled chan struct{}
}

// serverKey is what a parked connection may serve. The target is the
// policy's own: a reload makes new targets, so a connection parked under
// an older policy (perhaps another role for the target) serves nobody and
// idles out.
type serverKey struct {
	identity string
	target   *policy.Target
	key      string
}

// parked is an idle server connection with the credential it is logged in
// with, which it holds, as a session would, until it is dropped.
type parked struct {
	k       serverKey
	conn    io.Closer
	lease   credentials.Lease // nil for a credential with nothing to revoke
	cred    protocol.Credential
	forget  func()
	session string // the last session it served, for the audit trail
	timer   *time.Timer
}

// fresh reports whether pk's credential stays valid for reuseMargin.
func (pk *parked) fresh() bool {
	if pk.lease == nil {
		return true
	}
	exp := pk.lease.Credential().Expires
	return exp.IsZero() || time.Until(exp) > reuseMargin
}

// Parking implements protocol.Upstream: sessions that ask for key wait
// for the connection until park is called. The session's credential goes
// with the connection, so revoke at the session's end has nothing left to
// do.
func (u *upstream) Parking(key string) func(conn io.Closer) bool {
	n, idle := u.p.cfg.Credentials.Reuse(u.c.target.Name)
	if n == 0 {
		return func(io.Closer) bool { return false }
	}
	k := serverKey{identity: u.c.identity.Name, target: u.c.target, key: key}
	u.p.servers.reset(k)
	var once sync.Once
	return func(conn io.Closer) (kept bool) {
		once.Do(func() {
			// Settled after the connection is parked, so that a session
			// woken by it finds it.
			defer u.p.servers.settle(k)
			kept = conn != nil && u.park(k, conn, n, idle)
		})
		return kept
	}
}

// park parks conn under k with the session's credential.
func (u *upstream) park(k serverKey, conn io.Closer, n int, idle time.Duration) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.issued || u.err != nil {
		return false
	}
	pk := &parked{k: k, conn: conn, lease: u.lease, cred: u.cred, forget: u.forget, session: u.c.id}
	if !pk.fresh() || !u.p.servers.put(pk, n, idle, u.p.expire) {
		return false
	}
	u.lease, u.forget = nil, nil
	return true
}

// Resume implements protocol.Upstream. A parked connection whose
// credential is about to expire is dropped, off the session's path.
// Without one idle, a connection being reset for key is waited for, up to
// resumeWait.
func (u *upstream) Resume(key string) (io.Closer, bool) {
	if n, _ := u.p.cfg.Credentials.Reuse(u.c.target.Name); n == 0 {
		return nil, false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.issued || u.err != nil {
		return nil, true
	}
	k := serverKey{identity: u.c.identity.Name, target: u.c.target, key: key}
	var deadline <-chan time.Time
	for {
		pk, settled := u.p.servers.take(k)
		if pk == nil {
			if settled == nil {
				return nil, true
			}
			if deadline == nil {
				t := time.NewTimer(resumeWait)
				defer t.Stop()
				deadline = t.C
			}
			select {
			case <-settled:
				continue
			case <-deadline:
				return nil, true
			}
		}
		if !pk.fresh() {
			go u.p.drop(pk)
			continue
		}
		u.issued, u.lease, u.cred, u.forget = true, pk.lease, pk.cred, pk.forget
		t := u.c.target
		u.p.record(audit.CredentialIssued{Session: u.c.id, Identity: u.c.identity.Name, Target: t.Name,
			Source: u.p.cfg.Credentials.SourceName(t.Credential.Source), Username: pk.cred.Username, ReusedFrom: pk.session})
		return pk.conn, true
	}
}

// put parks pk unless max connections of its key are idle already or the
// pipeline is closed; expire drops it once it has been idle for idle.
func (s *servers) put(pk *parked, max int, idle time.Duration, expire func(*parked)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || len(s.idle[pk.k]) >= max {
		return false
	}
	if s.idle == nil {
		s.idle = map[serverKey][]*parked{}
	}
	s.idle[pk.k] = append(s.idle[pk.k], pk)
	pk.timer = time.AfterFunc(idle, func() { expire(pk) })
	return true
}

// take removes and returns the connection parked last under k (the one
// most likely still warm; the others idle out first). With none parked, it
// returns what is closed when a connection being reset for k settles (nil
// when none is).
func (s *servers) take(k serverKey) (*parked, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.idle[k]
	if len(list) == 0 {
		if r := s.resetting[k]; r != nil {
			return nil, r.settled
		}
		return nil, nil
	}
	pk := list[len(list)-1]
	list[len(list)-1] = nil
	if len(list) == 1 {
		delete(s.idle, k)
	} else {
		s.idle[k] = list[:len(list)-1]
	}
	pk.timer.Stop()
	return pk, nil
}

// reset counts a connection being reset to be parked under k.
func (s *servers) reset(k serverKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resetting == nil {
		s.resetting = map[serverKey]*resets{}
	}
	r := s.resetting[k]
	if r == nil {
		r = &resets{settled: make(chan struct{})}
		s.resetting[k] = r
	}
	r.n++
}

// settle ends what reset counted, waking the sessions waiting on k.
func (s *servers) settle(k serverKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.resetting[k]
	close(r.settled)
	if r.n--; r.n == 0 {
		delete(s.resetting, k)
	} else {
		r.settled = make(chan struct{})
	}
}

// remove takes pk out if it is still parked, reporting whether it was.
func (s *servers) remove(pk *parked) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.idle[pk.k]
	i := slices.Index(list, pk)
	if i < 0 {
		return false
	}
	list = slices.Delete(list, i, i+1)
	if len(list) == 0 {
		delete(s.idle, pk.k)
	} else {
		s.idle[pk.k] = list
	}
	return true
}

// closeAll stops parking and returns what was parked.
func (s *servers) closeAll() []*parked {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var all []*parked
	for _, list := range s.idle {
		all = append(all, list...)
	}
	s.idle = nil
	for _, pk := range all {
		pk.timer.Stop()
	}
	return all
}

// expire drops pk once it has been idle for its target's time, unless a
// session took it meanwhile.
func (p *Pipeline) expire(pk *parked) {
	if p.servers.remove(pk) {
		p.drop(pk)
	}
}

// drop closes a parked connection, then revokes its credential (the
// embedded issuer would otherwise terminate the backend under it), and
// records the revocation as the end of the last session it served.
func (p *Pipeline) drop(pk *parked) {
	pk.conn.Close()
	if pk.forget != nil {
		pk.forget()
	}
	if pk.lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), revokeTimeout)
	defer cancel()
	t := pk.k.target
	ev := audit.CredentialRevoked{Session: pk.session, Identity: pk.k.identity, Target: t.Name,
		Source: p.cfg.Credentials.SourceName(t.Credential.Source), Username: pk.cred.Username}
	if err := pk.lease.Close(ctx); err != nil {
		ev.Error = err.Error()
	}
	p.record(ev)
}

// Close drops the parked server connections, revoking their credentials,
// and parks no more. Sessions still open are not touched.
func (p *Pipeline) Close() {
	for _, pk := range p.servers.closeAll() {
		p.drop(pk)
	}
}
