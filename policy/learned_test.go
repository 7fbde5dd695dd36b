package policy

import (
	"net/netip"
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
	if p.TargetFor(a1, 443) != nil {
		t.Fatal("api matches before any answer")
	}
	now := time.Now()
	if p.Learn("other.example.test", []Binding{{a1, now.Add(time.Minute)}}) {
		t.Error("a name of no target grew a target")
	}
	if !p.Learn("API.example.test.", []Binding{{a1, now.Add(time.Minute)}, {a2, now.Add(time.Minute)}}) {
		t.Error("the first answer did not grow api")
	}
	if p.Learn("api.example.test", []Binding{{a1, now.Add(2 * time.Minute)}}) {
		t.Error("an address api holds counted as new")
	}
	if got := p.TargetFor(a1, 443); got == nil || got.Name != "api" {
		t.Errorf("TargetFor(%s) = %v, want api", a1, got)
	}
	if got := p.TargetFor(netip.MustParseAddr("::ffff:192.0.2.1"), 443); got == nil {
		t.Error("the IPv4-mapped form does not match")
	}
	if got := p.TargetFor(a2, 443); got == nil {
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
	p.Learn("api.example.test", []Binding{{netip.MustParseAddr("192.0.2.9"), now.Add(-LearnGrace - time.Second)}})
	if p.TargetFor(netip.MustParseAddr("192.0.2.9"), 443) != nil {
		t.Error("an expired binding matches")
	}
	// A flood of addresses keeps at most MaxLearned.
	var bs []Binding
	for i := 0; i < MaxLearned+50; i++ {
		bs = append(bs, Binding{netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), now.Add(time.Duration(i) * time.Second)})
	}
	p.Learn("api.example.test", bs)
	if n := len(p.Target("api").learnedAddrs()); n != MaxLearned {
		t.Errorf("%d learned addresses, want at most %d", n, MaxLearned)
	}
	if p.TargetFor(bs[len(bs)-1].Addr, 443) == nil {
		t.Error("the latest address was evicted")
	}
}
