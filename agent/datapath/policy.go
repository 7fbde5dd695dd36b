package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/interlock-dev/interlock/policy"
)

// PolicyRules keeps the kernel's share of the policy in the maps: each
// identity's TCP rules (what policy.Intercept derives; DNS goes to
// interlockd whatever they say), UDP allowances, listen entries and unix socket
// lists. It remembers the TCP rules it pushed, to tell which rule refused a
// connect. Every push is serialised, so a refresh or a tag never writes an
// older policy's rules over a newer one's. Safe for concurrent use.
type PolicyRules struct {
	dp *Datapath

	mu  sync.Mutex
	tcp map[uint32]tcpRuleSet
}

// tcpRuleSet is an identity's TCP rules as pushed, with the reason each
// rule the policy derived denies for (empty for the others).
type tcpRuleSet struct {
	rules   []Rule
	reasons []string
}

// NewPolicyRules returns the policy's kernel rules for d.
func NewPolicyRules(d *Datapath) *PolicyRules {
	return &PolicyRules{dp: d, tcp: map[uint32]tcpRuleSet{}}
}

// Apply pushes p's rules for every identity of ids (name to id) and the
// host's unix deny list; when they are all in, it calls then (nil for
// none), still holding the lock, so the caller can put p in force before
// any other push. Unenforced is what this kernel cannot enforce of p (the
// rest is in force).
func (r *PolicyRules) Apply(p *policy.Policy, ids map[string]uint32, then func()) (unenforced []error, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, id := range ids {
		w, err := r.applyIdentity(p, name, id)
		if err != nil {
			return nil, err
		}
		unenforced = append(unenforced, w...)
	}
	if err := r.dp.SetDenyUnix(p.DenyUnixPaths()); err != nil {
		if !errors.Is(err, ErrUnsupported) {
			return nil, fmt.Errorf("set unix deny rules: %w", err)
		}
		unenforced = append(unenforced, fmt.Errorf("unix socket deny rules: %w", err))
	}
	if then != nil {
		then()
	}
	return unenforced, nil
}

// ApplyIdentity pushes the rules of one identity under the policy current
// returns, read under the lock.
func (r *PolicyRules) ApplyIdentity(current func() *policy.Policy, name string, id uint32) (unenforced []error, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applyIdentity(current(), name, id)
}

func (r *PolicyRules) applyIdentity(p *policy.Policy, name string, id uint32) ([]error, error) {
	if err := r.setTCP(name, id, r.tcpRulesOf(p, name)); err != nil {
		return nil, err
	}
	if err := r.dp.SetUDPAllow(id, rulesOf(p.UDPAllow(name))); err != nil {
		return nil, fmt.Errorf("set udp rules of %s: %w", name, err)
	}
	if err := r.dp.SetListen(id, rulesOf(p.Listen(name))); err != nil {
		return nil, fmt.Errorf("set listen rules of %s: %w", name, err)
	}
	paths, on := p.AllowUnixPaths(name)
	if !on {
		paths = nil
	}
	if err := r.dp.SetAllowUnix(id, paths); err != nil {
		if !errors.Is(err, ErrUnsupported) {
			return nil, fmt.Errorf("set unix allow-list of %s: %w", name, err)
		}
		if on {
			return []error{fmt.Errorf("unix socket allow-list of %s: %w", name, err)}, nil
		}
	}
	return nil, nil
}

// Refresh pushes again the TCP rules of every identity whose rules changed
// under the policy current returns (after a refresh moved a host-name
// target's addresses) and names them.
func (r *PolicyRules) Refresh(current func() *policy.Policy, ids map[string]uint32) (changed []string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := current()
	for name, id := range ids {
		s := r.tcpRulesOf(p, name)
		if old, ok := r.tcp[id]; ok && slices.Equal(old.rules, s.rules) && slices.Equal(old.reasons, s.reasons) {
			continue
		}
		if err := r.setTCP(name, id, s); err != nil {
			return changed, err
		}
		changed = append(changed, name)
	}
	return changed, nil
}

// DenyReason says why the kernel refused a TCP connect of identity to dst:
// the reason of the rule the policy derived ("no-rule-allows",
// "unknown-identity"), or "tcp-rule" for an intercept entry. It matches the
// rules pushed last; a connect refused just before a reload changed them
// may be explained by the new ones (the kernel's event does not name the
// rule).
func (r *PolicyRules) DenyReason(identity uint32, dst netip.AddrPort) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.tcp[identity]
	if i := Match(s.rules, dst); i >= 0 && s.rules[i].Verdict == Deny && s.reasons[i] != "" {
		return s.reasons[i]
	}
	return string(ReasonTCPRule)
}

// tcpRulesOf computes the TCP rules of the identity name under p: what
// p.Intercept gives. The kernel sends DNS to the proxy before it looks at
// them, so agents need no rule for name resolution.
func (r *PolicyRules) tcpRulesOf(p *policy.Policy, name string) tcpRuleSet {
	var s tcpRuleSet
	pr := p.Intercept(name, MaxRules)
	s.rules = append(s.rules, rulesOf(pr)...)
	for _, rule := range pr {
		s.reasons = append(s.reasons, rule.Reason)
	}
	return s
}

// setTCP pushes s as the identity's TCP rules. The caller holds r.mu.
func (r *PolicyRules) setTCP(name string, id uint32, s tcpRuleSet) error {
	if err := r.dp.SetRules(id, s.rules); err != nil {
		return fmt.Errorf("set intercept rules of %s: %w", name, err)
	}
	r.tcp[id] = s
	return nil
}

// rulesOf turns the policy's kernel rules into the data path's.
func rulesOf(rs []policy.InterceptRule) []Rule {
	out := make([]Rule, 0, len(rs))
	for _, r := range rs {
		v := Redirect
		switch r.Action {
		case "deny":
			v = Deny
		case "pass":
			v = Pass
		}
		out = append(out, Rule{Prefix: r.Prefix, PortMin: r.PortMin, PortMax: r.PortMax, Verdict: v})
	}
	return out
}
