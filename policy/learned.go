package policy

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// LearnGrace is how long past its TTL an address learned from a DNS answer
// still counts for its target: clients keep addresses longer than the TTL
// says (connection pools, runtimes that cache look-ups).
const LearnGrace = 2 * time.Minute

// MaxLearned bounds the addresses a target holds from DNS answers; when it
// is full the one that expires first makes room.
const MaxLearned = 256

// Binding is an address a DNS answer gave a name, valid until Expires.
type Binding struct {
	Addr    netip.Addr
	Expires time.Time
}

// learned is a target's addresses from DNS answers, with their expiry
// (LearnGrace included), guarded by mu.
type learned struct {
	mu    sync.Mutex
	addrs map[netip.Addr]time.Time
}

// Learn records the addresses an answer interlockd relayed gave name (any
// case, with or without the final dot): every target whose host names
// (addresses:, hosts:) include name then matches them, until their expiry
// plus LearnGrace, as it matches the addresses ResolveTargets finds. It
// reports whether some target gained an address it did not hold, so that
// the caller pushes the kernel rules again before the agent can connect
// to it. Safe for concurrent use.
func (p *Policy) Learn(name string, bs []Binding) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	grew := false
	for _, t := range p.targets {
		if t.namesHost(name) && t.learned.learn(bs) {
			grew = true
		}
	}
	for pattern, l := range p.interceptHosts {
		if NameMatches(pattern, name) && l.learn(bs) {
			grew = true
		}
	}
	return grew
}

// isHostPattern reports whether s is a host name or a *.domain pattern.
func isHostPattern(s string) bool {
	return hostRE.MatchString(strings.TrimPrefix(s, "*.")) && s != "*"
}

// hostPattern is s as patterns are compared: lower case, no final dot.
func hostPattern(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// expandHosts returns intercept entries with each entry by host name
// replaced by one rule per address its pattern has learned (the latest to
// expire first), as many as fit in max beside the entries by address; an
// entry by name that has learned nothing yet gives no rule.
func (p *Policy) expandHosts(entries []InterceptRule, max int) []InterceptRule {
	room := max
	for _, r := range entries {
		if r.Host == "" {
			room--
		}
	}
	var out []InterceptRule
	for _, r := range entries {
		if r.Host == "" {
			out = append(out, r)
			continue
		}
		l := p.interceptHosts[r.Host]
		if l == nil {
			continue
		}
		for _, a := range l.latest() {
			if room <= 0 {
				break
			}
			room--
			e := r
			e.Prefix = netip.PrefixFrom(a, a.BitLen())
			out = append(out, e)
		}
	}
	return out
}

// namesHost reports whether name is one of t's host names.
func (t *Target) namesHost(name string) bool {
	for _, h := range slices.Concat(t.Hosts, t.Names) {
		if NameMatches(strings.ToLower(strings.TrimSuffix(h, ".")), name) {
			return true
		}
	}
	return false
}

// learn adds bindings (LearnGrace added to each), and reports whether an
// address was new.
func (l *learned) learn(bs []Binding) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	next := make(map[netip.Addr]time.Time, len(l.addrs)+len(bs))
	for a, exp := range l.addrs {
		if exp.After(now) {
			next[a] = exp
		}
	}
	grew := false
	for _, b := range bs {
		a, exp := b.Addr.Unmap(), b.Expires.Add(LearnGrace)
		old, ok := next[a]
		if !ok {
			grew = true
			if len(next) >= MaxLearned {
				evictFirst(next)
			}
		}
		if !ok || exp.After(old) {
			next[a] = exp
		}
	}
	l.addrs = next
	return grew
}

// latest returns the addresses that have not expired, the latest to
// expire first.
func (l *learned) latest() []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	var out []netip.Addr
	for a, exp := range l.addrs {
		if exp.After(now) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int {
		if c := l.addrs[b].Compare(l.addrs[a]); c != 0 {
			return c
		}
		return a.Compare(b)
	})
	return out
}

// evictFirst removes the address that expires first.
func evictFirst(m map[netip.Addr]time.Time) {
	var (
		first netip.Addr
		when  time.Time
	)
	for a, exp := range m {
		if !first.IsValid() || exp.Before(when) {
			first, when = a, exp
		}
	}
	delete(m, first)
}

// learnedAddrs returns t's learned addresses that have not expired.
func (t *Target) learnedAddrs() []netip.Addr {
	t.learned.mu.Lock()
	defer t.learned.mu.Unlock()
	now := time.Now()
	var out []netip.Addr
	for a, exp := range t.learned.addrs {
		if exp.After(now) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// hasLearned reports whether t learned a and it has not expired.
func (t *Target) hasLearned(a netip.Addr) bool {
	t.learned.mu.Lock()
	defer t.learned.mu.Unlock()
	exp, ok := t.learned.addrs[a]
	return ok && exp.After(time.Now())
}

// KeepLearned carries the addresses old learned from answers over to p, a
// policy about to replace it: to each target of the same name that still
// names a host, and to each intercept host pattern p shares with it, so a
// reload does not refuse the connects of agents that resolved before it.
func (p *Policy) KeepLearned(old *Policy) {
	for _, t := range p.targets {
		o := old.targetIndex[t.Name]
		if o != nil && len(t.Hosts)+len(t.Names) > 0 {
			t.learned.copyFrom(&o.learned)
		}
	}
	for pattern, l := range p.interceptHosts {
		if o := old.interceptHosts[pattern]; o != nil {
			l.copyFrom(o)
		}
	}
}

// copyFrom replaces l's addresses with o's.
func (l *learned) copyFrom(o *learned) {
	o.mu.Lock()
	addrs := maps.Clone(o.addrs)
	o.mu.Unlock()
	l.mu.Lock()
	l.addrs = addrs
	l.mu.Unlock()
}
