package policy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestLearn: addresses a relayed answer gives a target's host name make
// the target match them (and reach the kernel's redirects) until their TTL
// plus LearnGrace; names that are no target's change nothing.
func TestLearn(t *testing.T) {
	p := mustParse(t, `
identities: [{name: ci}]
targets:
  - {name: api, protocol: tcp, addresses: [api.example.test], port: 443}
  - {name: db, protocol: postgres, addresses: [10.0.0.9], port: 5432}
rules:
  - {name: ci-api, identity: ci, target: [api, db], action: allow}
`)
	a1, a2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	if p.TargetFor("ci", a1, 443) != nil {
		t.Fatal("api matches before any answer")
	}
	now := time.Now()
	if p.Learn("ci", "other.example.test", []Binding{{a1, now.Add(time.Minute)}}) {
		t.Error("a name of no target grew a target")
	}
	if !p.Learn("ci", "API.example.test.", []Binding{{a1, now.Add(time.Minute)}, {a2, now.Add(time.Minute)}}) {
		t.Error("the first answer did not grow api")
	}
	if p.Learn("ci", "api.example.test", []Binding{{a1, now.Add(2 * time.Minute)}}) {
		t.Error("an address api holds counted as new")
	}
	if got := p.TargetFor("ci", a1, 443); got == nil || got.Name != "api" {
		t.Errorf("TargetFor(%s) = %v, want api", a1, got)
	}
	if got := p.TargetFor("ci", netip.MustParseAddr("::ffff:192.0.2.1"), 443); got == nil {
		t.Error("the IPv4-mapped form does not match")
	}
	if got := p.TargetFor("ci", a2, 443); got == nil {
		t.Errorf("TargetFor(%s) = nil", a2)
	}
	reach := p.Intercept("ci", 16)
	found := false
	for _, r := range reach {
		if r.Prefix == netip.PrefixFrom(a1, 32) && r.Action == "redirect" && r.PortMin == 443 {
			found = true
		}
	}
	if !found {
		t.Errorf("Intercept does not redirect the learned address: %v", reach)
	}
	// Expired, grace included: no longer api's.
	p.Learn("ci", "api.example.test", []Binding{{netip.MustParseAddr("192.0.2.9"), now.Add(-LearnGrace - time.Second)}})
	if p.TargetFor("ci", netip.MustParseAddr("192.0.2.9"), 443) != nil {
		t.Error("an expired binding matches")
	}
	// A flood of addresses keeps at most MaxLearned.
	var bs []Binding
	for i := 0; i < MaxLearned+50; i++ {
		bs = append(bs, Binding{netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), now.Add(time.Duration(i) * time.Second)})
	}
	p.Learn("ci", "api.example.test", bs)
	if n := len(p.Target("api").learnedAddrs("ci")); n != MaxLearned {
		t.Errorf("%d learned addresses, want at most %d", n, MaxLearned)
	}
	if p.TargetFor("ci", bs[len(bs)-1].Addr, 443) == nil {
		t.Error("the latest address was evicted")
	}
}

// TestInterceptByName: an intercept entry by host name becomes one kernel
// rule per address relayed answers gave the name, in its place, from the
// answer on; before any, it gives none.
func TestInterceptByName(t *testing.T) {
	p := mustParse(t, `
identities:
  - name: ci
    intercept:
      - {to: [blocked.example.test], action: deny}
      - {to: ["*.cdn.example.test"], ports: "443", action: pass}
      - {to: [10.9.0.0/16], action: deny}
rules:
  - {name: ci-tcp, identity: ci, protocol: tcp, action: allow}
`)
	rules := func() []InterceptRule { return p.Intercept("ci", 16) }
	if r := rules(); len(r) != 3 || r[0].Prefix != netip.MustParsePrefix("10.9.0.0/16") {
		t.Fatalf("before any answer: %+v", r)
	}
	now := time.Now()
	blocked := netip.MustParseAddr("192.0.2.8")
	if !p.Learn("ci", "blocked.example.test", []Binding{{blocked, now.Add(time.Minute)}}) {
		t.Error("learning a deny entry's address did not say so")
	}
	p.Learn("ci", "a.cdn.example.test", []Binding{{netip.MustParseAddr("2001:db8::7"), now.Add(time.Minute)}})
	r := rules()
	if len(r) != 5 || r[0].Prefix != netip.PrefixFrom(blocked, 32) || r[0].Action != "deny" ||
		r[1].Prefix != netip.MustParsePrefix("2001:db8::7/128") || r[1].Action != "pass" || r[1].PortMin != 443 {
		t.Fatalf("after answers: %+v", r)
	}
	// The pass entry's names may be looked up by default; the deny one's not.
	if d := p.DecideDNS(&Subject{Tag: "ci"}, "img.cdn.example.test", "A"); !d.Allow {
		t.Errorf("pass entry's name refused: %+v", d)
	}
	if d := p.DecideDNS(&Subject{Tag: "ci"}, "blocked.example.test", "A"); d.Allow {
		t.Errorf("deny entry's name allowed: %+v", d)
	}
	// Many addresses: the entries stay within the kernel's rules.
	var bs []Binding
	for i := 0; i < 40; i++ {
		bs = append(bs, Binding{netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), now.Add(time.Duration(i) * time.Second)})
	}
	p.Learn("ci", "blocked.example.test", bs)
	if r := rules(); len(r) > 16 {
		t.Errorf("%d rules, at most 16", len(r))
	}
	if _, err := compile("t.yaml", []byte("identities:\n  - name: a\n    udp_allow: [{to: [ntp.example.test], ports: \"123\"}]\n"), protocols); err == nil ||
		!strings.Contains(err.Error(), "udp_allow needs literal addresses") {
		t.Errorf("udp_allow by name: %v", err)
	}
}

// TestKeepLearned: a reloaded policy keeps what the one it replaces
// learned, for the targets and intercept patterns it still has.
func TestKeepLearned(t *testing.T) {
	src := `
identities:
  - name: ci
    intercept: [{to: [blocked.example.test], action: deny}]
targets:
  - {name: api, protocol: tcp, addresses: [api.example.test], port: 443}
rules:
  - {name: ci-api, identity: ci, target: api, action: allow}
`
	old := mustParse(t, src)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	old.Learn("ci", "api.example.test", []Binding{{a, time.Now().Add(time.Minute)}})
	old.Learn("ci", "blocked.example.test", []Binding{{b, time.Now().Add(time.Minute)}})
	p := mustParse(t, src)
	p.KeepLearned(old)
	if p.TargetFor("ci", a, 443) == nil {
		t.Error("the reloaded policy lost api's learned address")
	}
	if r := p.Intercept("ci", 16); len(r) == 0 || r[0].Prefix != netip.PrefixFrom(b, 32) || r[0].Action != "deny" {
		t.Errorf("the reloaded policy lost the deny entry's address: %+v", r)
	}
	// Learning in one does not change the other.
	p.Learn("ci", "api.example.test", []Binding{{netip.MustParseAddr("192.0.2.3"), time.Now().Add(time.Minute)}})
	if old.TargetFor("ci", netip.MustParseAddr("192.0.2.3"), 443) != nil {
		t.Error("the policies share their learned sets")
	}
}

// TestLearnPerIdentity: an address an answer to one identity gave a
// target's host name is that target's for that identity only; for another
// it is an unknown host, in the session's lookup and in the kernel's
// redirects, until that identity's own look-up gives it.
func TestLearnPerIdentity(t *testing.T) {
	p := mustParse(t, `
identities: [{name: ci}, {name: other}]
targets:
  - {name: api, protocol: tcp, addresses: [api.example.test], port: 443}
rules:
  - {name: api, identity: [ci, other], target: api, action: allow}
`)
	a := netip.MustParseAddr("192.0.2.1")
	redirects := func(tag string) bool {
		for _, r := range p.Intercept(tag, 16) {
			if r.Prefix == netip.PrefixFrom(a, 32) && r.Action == "redirect" {
				return true
			}
		}
		return false
	}
	if !p.Learn("ci", "api.example.test", []Binding{{a, time.Now().Add(time.Minute)}}) {
		t.Fatal("ci's answer did not grow api")
	}
	if p.TargetFor("ci", a, 443) == nil || !redirects("ci") {
		t.Error("ci's own answer does not make the address api's for ci")
	}
	if p.TargetFor("other", a, 443) != nil || redirects("other") {
		t.Error("ci's answer made the address api's for other")
	}
	if !p.Learn("other", "api.example.test", []Binding{{a, time.Now().Add(time.Minute)}}) {
		t.Error("other's first answer with the address did not say it grew")
	}
	if p.TargetFor("other", a, 443) == nil || !redirects("other") {
		t.Error("other's own answer does not make the address api's for other")
	}
	if n := p.Learned(); n != 2 {
		t.Errorf("Learned() = %d, want 2 (one address, two identities)", n)
	}
}
