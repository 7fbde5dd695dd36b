package policy

import "sync/atomic"

// Engine holds the policy in force. Readers call Current on every request
// (an atomic load); Swap replaces it atomically with one Load returned, so a
// request sees either the old policy or the new one, never a mix. Safe for
// concurrent use.
type Engine struct {
	cur atomic.Pointer[Policy]
}

// NewEngine returns an engine enforcing p (the embedded default if nil).
func NewEngine(p *Policy) *Engine {
	if p == nil {
		p = Default()
	}
	e := &Engine{}
	e.cur.Store(p)
	return e
}

// Current returns the policy in force.
func (e *Engine) Current() *Policy { return e.cur.Load() }

// Swap puts p in force and returns the policy it replaced.
func (e *Engine) Swap(p *Policy) *Policy {
	if p == nil {
		panic("policy: Engine.Swap(nil)")
	}
	return e.cur.Swap(p)
}
