package credentials

import (
	"context"
	"sync"
	"time"
)

// pool keeps up to size pre-issued credentials for one target so that a
// session's connect does not wait for a role to be created or for Vault.
// Each pooled credential goes to exactly one session. Pooled leases are
// journaled and renewed like any other; Manager.Close revokes what is left.
type pool struct {
	m    *Manager
	ref  Ref
	req  Request
	size int
	ch   chan *lease
	kick chan struct{}

	mu    sync.Mutex
	stale []*lease // taken out as too close to expiry, to revoke

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// pool returns the target's pool, starting it on the target's first
// request (its Ref is what the pool issues), or nil without one.
func (m *Manager) pool(req Request) *pool {
	size := m.cfg.Pool[req.Target]
	if size <= 0 {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	if p, ok := m.pools[req.Target]; ok {
		return p
	}
	p := &pool{
		m: m, ref: req.Ref, size: size,
		req:  Request{Ref: req.Ref, Target: req.Target, Session: "pool"},
		ch:   make(chan *lease, size),
		kick: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(m.ctx)
	m.pools[req.Target] = p
	go p.fill()
	return p
}

// take returns a pooled lease for req, or nil when none is ready or req
// asks for a different credential than the pool holds.
func (p *pool) take(req Request) *lease {
	if !sameRef(req.Ref, p.ref) {
		return nil
	}
	defer p.refill()
	for {
		select {
		case l := <-p.ch:
			if l.fresh() {
				return l
			}
			// Renewal failed for most of its life (source down): it may
			// be dead by the time the session logs in. The filler
			// revokes it, off the connect path.
			p.mu.Lock()
			p.stale = append(p.stale, l)
			p.mu.Unlock()
		default:
			return nil
		}
	}
}

func (p *pool) refill() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// fill tops the pool up whenever a credential is taken, backing off while
// the source fails.
func (p *pool) fill() {
	defer close(p.done)
	backoff := time.Second
	for {
		for len(p.ch) < p.size {
			l, err := p.m.issue(p.ctx, p.ref.Source, p.m.backends[p.ref.Source], p.req)
			if err != nil {
				if p.ctx.Err() != nil {
					return
				}
				select {
				case <-p.ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 30*time.Second)
				continue
			}
			backoff = time.Second
			p.ch <- l // only fill sends, and it checked there is room
		}
		select {
		case <-p.ctx.Done():
			return
		case <-p.kick:
		}
		p.mu.Lock()
		stale := p.stale
		p.stale = nil
		p.mu.Unlock()
		for _, l := range stale {
			l.Close(p.ctx) // on failure it stays journaled for Recover
		}
	}
}

// stop ends the filler; the pooled leases stay open for Manager.Close to
// revoke.
func (p *pool) stop() {
	p.cancel()
	<-p.done
}
