package policy

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Engine holds the policy in force. Readers call Current on every request
// (an atomic load); Reload and Swap replace it atomically, so a request
// sees either the old policy or the new one, never a mix. Safe for
// concurrent use.
type Engine struct {
	cur    atomic.Pointer[Policy]
	reload sync.Mutex // one reload at a time
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

// Reload loads path and puts it in force. An invalid file is refused with
// its errors and the old policy stays in force; so does one whose shipped
// tests fail, because a policy that contradicts its own tests is not what
// its author meant.
func (e *Engine) Reload(path string) (*Policy, error) {
	e.reload.Lock()
	defer e.reload.Unlock()
	p, err := Load(path)
	if err != nil {
		return nil, err
	}
	for _, r := range p.RunTests() {
		if !r.Pass {
			return nil, fmt.Errorf("reload policy %s: shipped test failed: %s", path, r)
		}
	}
	e.cur.Store(p)
	return p, nil
}
