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

// MaxLearned bounds the addresses a target holds from the DNS answers of
// one identity; when it is full the one that expires first makes room.
const MaxLearned = 256

// Binding is an address a DNS answer gave a name, valid until Expires.
type Binding struct {
	Addr    netip.Addr
	Expires time.Time
}

// learned is a target's (or an intercept pattern's) addresses from DNS
// answers, per identity tag whose look-up they answered, with their
// expiry (LearnGrace included), guarded by mu. Per identity, so that an
// address only another identity's look-ups gave is, for this one, no
// address of the name: an agent cannot reach a target by an address it
// never resolved (or was never allowed to).
type learned struct {
	mu    sync.Mutex
	byTag map[string]map[netip.Addr]time.Time
}

// Learn records the addresses an answer interlockd relayed to the
// identity tagged tag gave name (any case, with or without the final
// dot): every target whose host names (addresses:, hosts:) include name
// then matches them for that identity, until their expiry plus
// LearnGrace, as it matches the addresses ResolveTargets finds for all.
// It reports whether some target gained an address it did not hold for
// tag, so that the caller pushes the kernel rules again before the agent
// can connect to it. Safe for concurrent use.
func (p *Policy) Learn(tag, name string, bs []Binding) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	grew := false
	for _, t := range p.targets {
		if t.namesHost(name) && t.learned.learn(tag, bs) {
			grew = true
		}
	}
	for pattern, l := range p.interceptHosts {
		if NameMatches(pattern, name) && l.learn(tag, bs) {
			grew = true
		}
	}
	return grew
}

// Learned returns how many addresses the policy holds from DNS answers,
// counted once per target or intercept pattern and identity, expired ones
// not yet dropped included: the size of what Learn keeps, which MaxLearned
// bounds. Safe for concurrent use.
func (p *Policy) Learned() int {
	n := 0
	for _, t := range p.targets {
		n += t.learned.size()
	}
	for _, l := range p.interceptHosts {
		n += l.size()
	}
	return n
}

// size returns how many addresses l holds, for every identity.
func (l *learned) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, addrs := range l.byTag {
		n += len(addrs)
	}
	return n
}

// isHostPattern reports whether s is a host name or a *.domain pattern.
func isHostPattern(s string) bool {
	return hostRE.MatchString(strings.TrimPrefix(s, "*.")) && s != "*"
}

// hostPattern is s as patterns are compared: lower case, no final dot.
func hostPattern(s string) string { return strings.ToLower(strings.TrimSuffix(s, ".")) }

// expandHosts returns intercept entries with each entry by host name
// replaced by one rule per address its pattern has learned from tag's
// look-ups (the latest to expire first), as many as fit in max beside the
// entries by address; an entry by name that has learned nothing yet gives
// no rule.
func (p *Policy) expandHosts(tag string, entries []InterceptRule, max int) []InterceptRule {
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
		for _, a := range l.latest(tag) {
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

// learn adds bindings of tag's look-up (LearnGrace added to each), and
// reports whether an address was new to tag.
func (l *learned) learn(tag string, bs []Binding) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	addrs := l.byTag[tag]
	next := make(map[netip.Addr]time.Time, len(addrs)+len(bs))
	for a, exp := range addrs {
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
	if l.byTag == nil {
		l.byTag = map[string]map[netip.Addr]time.Time{}
	}
	l.byTag[tag] = next
	return grew
}

// latest returns the addresses tag's look-ups gave that have not expired,
// the latest to expire first.
func (l *learned) latest(tag string) []netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	addrs := l.byTag[tag]
	var out []netip.Addr
	for a, exp := range addrs {
		if exp.After(now) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int {
		if c := addrs[b].Compare(addrs[a]); c != 0 {
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

// learnedAddrs returns the addresses t learned from tag's look-ups that
// have not expired.
func (t *Target) learnedAddrs(tag string) []netip.Addr {
	t.learned.mu.Lock()
	defer t.learned.mu.Unlock()
	now := time.Now()
	var out []netip.Addr
	for a, exp := range t.learned.byTag[tag] {
		if exp.After(now) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// hasLearned reports whether t learned a from tag's look-ups and it has
// not expired.
func (t *Target) hasLearned(tag string, a netip.Addr) bool {
	t.learned.mu.Lock()
	defer t.learned.mu.Unlock()
	exp, ok := t.learned.byTag[tag][a]
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
	byTag := make(map[string]map[netip.Addr]time.Time, len(o.byTag))
	for tag, addrs := range o.byTag {
		byTag[tag] = maps.Clone(addrs)
	}
	o.mu.Unlock()
	l.mu.Lock()
	l.byTag = byTag
	l.mu.Unlock()
}
