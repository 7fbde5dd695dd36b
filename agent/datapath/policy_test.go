package datapath

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/bpf"
	"github.com/interlock-dev/interlock/policy"
)

const rulesPolicy = `version: 1
identities:
  - name: ci
    intercept:
      - {to: [10.9.0.0/16], action: deny}
  - name: other
targets:
  - {name: db, protocol: postgres, addresses: [10.1.0.5], port: 5432}
rules:
  - {name: r, identity: ci, target: db, action: allow}
`

// TestPolicyRules: the policy's kernel rules reach the maps as the kernel
// evaluates them (an intercept entry, a target redirected,
// the rest refused), and each refusal is explained by the rule that made it.
func TestPolicyRules(t *testing.T) {
	d, prog := probe(t)
	load := func(text string) *policy.Policy {
		p, err := policy.Load(context.Background(), policy.Source{Name: "rules.yaml", Text: []byte(text)}, policy.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := load(rulesPolicy)
	r := NewPolicyRules(d)
	swapped := false
	if _, err := r.Apply(p, map[string]uint32{"ci": 1, "nobody": 2}, func() { swapped = true }); err != nil {
		t.Fatal(err)
	}
	if !swapped {
		t.Error("Apply did not call then")
	}
	const (
		redirect = int32(bpf.InterlockVerdictVERDICT_REDIRECT)
		deny     = int32(bpf.InterlockVerdictVERDICT_DENY)
		pass     = int32(bpf.InterlockVerdictVERDICT_PASS)
	)
	for _, c := range []struct {
		identity uint32
		dst      string
		verdict  int32
		reason   string // DenyReason for a refusal
	}{
		{1, "10.1.0.5:5432", redirect, ""},
		{1, "10.9.1.1:443", deny, "tcp-rule"},
		{1, "192.0.2.7:443", deny, "no-rule-allows"},
		{2, "10.1.0.5:5432", deny, "unknown-identity"},
	} {
		if got := runProbe(t, prog, false, c.identity, c.dst); got != c.verdict {
			t.Errorf("identity %d to %s: verdict %d, want %d", c.identity, c.dst, got, c.verdict)
		}
		if c.verdict == deny {
			if got := r.DenyReason(c.identity, netip.MustParseAddrPort(c.dst)); got != c.reason {
				t.Errorf("identity %d to %s: reason %q, want %q", c.identity, c.dst, got, c.reason)
			}
		}
	}
	// A policy that opens the destination: a refresh pushes only the
	// identities whose rules changed.
	p2 := load(strings.NewReplacer(
		"  - {name: db, protocol: postgres, addresses: [10.1.0.5], port: 5432}\n",
		"  - {name: db, protocol: postgres, addresses: [10.1.0.5], port: 5432}\n  - {name: web, protocol: tcp, addresses: [192.0.2.7], port: 443}\n",
		"target: db,", "target: [db, web],",
	).Replace(rulesPolicy))
	changed, err := r.Refresh(func() *policy.Policy { return p2 }, map[string]uint32{"ci": 1, "nobody": 2})
	if err != nil || len(changed) != 1 || changed[0] != "ci" {
		t.Fatalf("refresh: changed %v, %v; want [ci]", changed, err)
	}
	if got := runProbe(t, prog, false, 1, "192.0.2.7:443"); got != redirect {
		t.Errorf("after refresh, ci to 192.0.2.7:443: verdict %d, want redirect", got)
	}
	if _, err := r.ApplyIdentity(func() *policy.Policy { return p2 }, "other", 3); err != nil {
		t.Fatal(err)
	}
	if got := r.DenyReason(3, netip.MustParseAddrPort("10.1.0.5:5432")); got != "no-rule-allows" {
		t.Errorf("other to db: reason %q, want no-rule-allows", got)
	}
}
