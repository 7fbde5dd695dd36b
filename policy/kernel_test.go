package policy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestListenAndUnixAllow(t *testing.T) {
	p := mustParse(t, `
identities:
  - name: web
    tag: web
    listen:
      - {addresses: [0.0.0.0, "::"], ports: 8080}
      - {addresses: 10.0.0.0/8}
    allow_unix_paths: [/run/postgresql/.s.PGSQL.5432, "@agent-bus"]
  - name: locked
    allow_unix_paths: []
  - name: plain
`)
	l := p.Listen("web")
	if len(l) != 3 || l[0].Prefix.String() != "0.0.0.0/32" || l[1].Prefix.String() != "::/128" ||
		l[0].PortMin != 8080 || l[0].PortMax != 8080 || l[2].PortMin != 1 || l[2].PortMax != 65535 || l[2].Action != "pass" {
		t.Errorf("Listen(web) = %+v", l)
	}
	if l := p.Listen("plain"); len(l) != 0 {
		t.Errorf("Listen(plain) = %+v, want none: loopback only", l)
	}
	if paths, on := p.AllowUnixPaths("web"); !on || len(paths) != 2 || paths[1] != "@agent-bus" {
		t.Errorf("AllowUnixPaths(web) = %v, %v", paths, on)
	}
	if paths, on := p.AllowUnixPaths("locked"); !on || paths == nil || len(paths) != 0 {
		t.Errorf("AllowUnixPaths(locked) = %#v, %v; want an empty list, on", paths, on)
	}
	if paths, on := p.AllowUnixPaths("plain"); on || paths != nil {
		t.Errorf("AllowUnixPaths(plain) = %v, %v; want off", paths, on)
	}
}

func TestUnixReachable(t *testing.T) {
	p := mustParse(t, `
identities:
  - {name: web, allow_unix_paths: [/run/user/1000/bus]}
  - {name: plain}
deny_unix_paths: [/run/user/1000/systemd/private]
`)
	for _, c := range []struct {
		tag, path string
		want      bool
	}{
		{"plain", "/run/user/1000/bus", true},
		{"plain", "/run/user/1000/systemd/private", false}, // denied to every tagged task
		{"web", "/run/user/1000/bus", true},
		{"web", "/run/user/1000/systemd/private", false},
		{"web", "/run/dbus/system_bus_socket", false}, // not in its allow-list
	} {
		if got := p.UnixReachable(c.tag, c.path); got != c.want {
			t.Errorf("UnixReachable(%s, %s) = %v, want %v", c.tag, c.path, got, c.want)
		}
	}
}

func TestListenAndUnixAllowErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"identities:\n  - name: a\n    listen:\n      - {to: 0.0.0.0}\n", `test.yaml:4:10: unknown key "to"`},
		{"identities:\n  - name: a\n    listen:\n      - {addresses: any}\n", `test.yaml:4:21: identity "a": listen address "any": not an IP address`},
		{"identities:\n  - name: a\n    listen:\n      - {ports: 80}\n", `identity "a": listen entry needs addresses`},
		{"identities:\n  - name: a\n    listen:\n      - {addresses: 0.0.0.0, ports: http}\n", `listen ports "http"`},
		{"identities:\n  - name: a\n    allow_unix_paths: [run/x.sock]\n", `test.yaml:3:23: identity "a": allow_unix_paths: "run/x.sock" is not an absolute path`},
		{"identities:\n  - name: a\n    allow_unix_paths: [//run/x.sock]\n", `"//run/x.sock" would never match; write it as "/run/x.sock"`},
		{"identities:\n  - name: a\n    allow_unix_paths: [/run/./x.sock]\n", `write it as "/run/x.sock"`},
		{"identities:\n  - name: a\n    allow_unix_paths: [\"@\"]\n", `abstract name "@" is empty`},
		{"identities:\n  - name: a\n    allow_unix_paths: [/" + strings.Repeat("x", 107) + "]\n", `is longer than 107 bytes`},
		{"deny_unix_paths: [/var/run//docker.sock]\n", `deny_unix_paths: "/var/run//docker.sock" would never match`},
	} {
		_, err := load("test.yaml", c.src, fakeResolver{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.src, err, c.want)
		}
	}
}

// kernelVerdict evaluates rules the way the data path does: IPv4 is held
// IPv4-mapped, so an IPv4 prefix also matches a mapped destination and
// ::/0 matches every destination; the first match wins; none redirects.
func kernelVerdict(rules []InterceptRule, dst netip.AddrPort) InterceptRule {
	a := netip.AddrFrom16(dst.Addr().As16())
	for _, r := range rules {
		p := r.Prefix
		if p.Addr().Is4() {
			p = netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96)
		}
		if p.Contains(a) && dst.Port() >= r.PortMin && dst.Port() <= r.PortMax {
			return r
		}
	}
	return InterceptRule{Action: "redirect"}
}

// probeSubjects are the subjects of a tag a refusal must hold for: the
// kernel knows only the tag, so every uid, comm and executable the test
// policies select on is tried.
func probeSubjects(tag string) []Subject {
	var out []Subject
	for _, uid := range []uint32{0, 1000} {
		for _, comm := range []string{"psql", "curl"} {
			for _, exe := range []string{"/usr/bin/psql", "/usr/bin/curl"} {
				out = append(out, Subject{Tag: tag, UID: uid, GID: uid, Comm: comm, Exe: exe, Unit: "ci.service"})
			}
		}
	}
	return out
}

const reachTargets = `
targets:
  - {name: db, protocol: postgres, addresses: [10.0.0.5], port: 5432}
  - {name: web, protocol: tcp, addresses: [10.1.0.0/16]}
  - {name: v6, protocol: tcp, addresses: ["2001:db8::/64"], port: 443}
  - {name: named, protocol: postgres, addresses: [db.internal], port: 5432}
`

// TestInterceptRefuses: Intercept has the kernel refuse (EPERM) exactly
// the destinations no rule could allow for the tag, redirects the rest,
// and refuses nothing where it cannot tell; every refusal it derives is
// one interlockd would make too, for every subject of the tag.
func TestInterceptRefuses(t *testing.T) {
	const (
		redirect = "redirect"
		noRule   = "deny:" + RefuseNoRule
		unknown  = "deny:" + RefuseUnknownIdentity
		explicit = "deny:"
		pass     = "pass"
	)
	// all are the probes that every case is checked against.
	all := []string{"10.0.0.5:5432", "10.0.0.5:5433", "[::ffff:10.0.0.5]:5432", "10.1.2.3:80", "10.1.2.3:5432",
		"10.2.0.1:80", "[2001:db8::1]:443", "[2001:db8::1]:80", "[2001:db8:1::1]:443", "198.51.100.7:5432",
		"198.51.100.8:5432", "8.8.8.8:443", "[2606:4700::1]:443", "192.0.2.1:80"}
	type probes map[string]string
	cases := []struct {
		name, src, tag string
		max            int // 0: 16
		want           probes
		// redirectOthers: a probe the case does not list is redirected
		// (else refused with Reason noRule).
		redirectOthers bool
		otherDeny      string
	}{
		{name: "one target allowed", tag: "ci", src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: db, action: allow}]`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect}},
		{name: "target on every port", tag: "ci", src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: web, action: allow}]`,
			want: probes{"10.1.2.3:80": redirect, "10.1.2.3:5432": redirect}},
		{name: "IPv6 target", tag: "ci", src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: v6, action: allow}]`,
			want: probes{"[2001:db8::1]:443": redirect}},
		{name: "rule without target for tcp reaches everything", tag: "ci", redirectOthers: true, src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, protocol: [tcp], action: allow}]`},
		{name: "rule without target or protocol reaches everything", tag: "ci", redirectOthers: true, src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, action: allow}]`},
		{name: "rule without target for postgres reaches the postgres targets", tag: "ci", src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, protocol: [postgres], action: allow}]`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect, "198.51.100.7:5432": redirect}},
		{name: "rule whose protocol the target does not speak", tag: "ci", src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: web, protocol: [postgres], action: allow}]`},
		{name: "deny rules never let a connection in", tag: "ci", src: `
identities: [{name: ci}]
rules:
  - {name: d1, identity: ci, target: db, action: deny}
  - {name: d2, identity: ci, target: web, sql: {class: [read]}, action: deny}
  - {name: d3, identity: ci, action: deny}`},
		{name: "mask, approve and operation matchers need interlockd", tag: "ci", src: `
identities: [{name: ci}]
masks: [{name: m, detectors: {pii: redact}}]
rules:
  - {name: m, identity: ci, target: db, sql: {class: [read]}, action: mask, mask: m}
  - {name: a, identity: ci, target: web, action: approve, approve: {reviewers: [ops]}}
  - {name: s, identity: ci, target: named, sql: {class: [write]}, action: allow}`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect, "10.1.2.3:80": redirect,
				"10.1.2.3:5432": redirect, "198.51.100.7:5432": redirect}},
		{name: "rule for several identities", tag: "ci", src: `
identities: [{name: ci}, {name: other}]
rules: [{name: r, identity: [other, ci], target: db, action: allow}]`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect}},
		{name: "rule for another identity", tag: "ci", src: `
identities: [{name: ci}, {name: other}]
rules: [{name: r, identity: other, target: db, action: allow}]`},
		{name: "identity of the tag selecting on comm may match", tag: "ci", src: `
identities: [{name: ci}, {name: ci-psql, tag: ci, comm: [psql]}]
rules: [{name: r, identity: ci-psql, target: db, action: allow}]`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect}},
		{name: "identity without tag may match any tag", tag: "stranger", src: `
identities: [{name: ci}, {name: root, uid: [0]}]
rules: [{name: r, identity: root, target: web, action: allow}]`,
			want: probes{"10.1.2.3:80": redirect, "10.1.2.3:5432": redirect}},
		{name: "identity selecting another tag and uid", tag: "ci", src: `
identities: [{name: ci}, {name: cd-root, tag: cd, uid: [0]}]
rules: [{name: r, identity: cd-root, target: web, action: allow}]`},
		{name: "unknown tag", tag: "stranger", otherDeny: unknown, src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: db, action: allow}]`},
		{name: "rule for every identity reaches an unknown tag", tag: "stranger", otherDeny: unknown, src: `
identities: [{name: ci}]
rules: [{name: r, target: db, action: allow}]`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect}},
		{name: "identity in audit mode", tag: "ci", redirectOthers: true, src: `
identities: [{name: ci, mode: audit}]
rules: [{name: r, identity: ci, target: db, action: allow}]`},
		{name: "audit by default", tag: "ci", redirectOthers: true, src: `
mode: audit
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: db, action: allow}]`},
		{name: "unknown tag under audit by default", tag: "stranger", redirectOthers: true, src: `
mode: audit
identities: [{name: ci}]`},
		{name: "enforced identity under audit by default", tag: "ci", src: `
mode: audit
identities: [{name: ci, mode: enforce}]
rules: [{name: r, identity: ci, target: db, action: allow}]`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect}},
		{name: "audited identity selecting on uid", tag: "ci", redirectOthers: true, src: `
identities: [{name: ci-dev, tag: ci, uid: [1000], mode: audit}, {name: other}]`},
		{name: "audited identity with an enforced one of the same tag", tag: "ci", src: `
identities: [{name: ci}, {name: ci-dev, tag: ci, uid: [1000], mode: audit}]
rules: [{name: r, identity: ci, target: db, action: allow}]`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect}},
		{name: "audited identity without tag", tag: "ci", redirectOthers: true, src: `
identities: [{name: other}, {name: dev, uid: [1000], mode: audit}]`},
		{name: "audited identity without tag, enforced identity of the tag", tag: "ci", src: `
identities: [{name: ci}, {name: dev, uid: [1000], mode: audit}]`},
		{name: "target in audit mode", tag: "ci", src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: db, action: allow}]` + reachTargets + `
  - {name: trial, protocol: tcp, addresses: [192.0.2.0/24], port: 80, mode: audit}`,
			want: probes{"10.0.0.5:5432": redirect, "[::ffff:10.0.0.5]:5432": redirect, "192.0.2.1:80": redirect}},
		{name: "host-name target at its resolved address", tag: "ci", src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: named, action: allow}]`,
			want: probes{"198.51.100.7:5432": redirect}},
		{name: "intercept entries come first", tag: "ci", src: `
identities:
  - name: ci
    intercept:
      - {to: [10.0.0.0/8], action: deny}
      - {to: [192.0.2.0/24], ports: 80, action: pass}
      - {to: [8.8.8.8], ports: 443}
rules: [{name: r, identity: ci, target: [db, web], action: allow}]`,
			want: probes{"10.0.0.5:5432": explicit, "10.0.0.5:5433": explicit, "[::ffff:10.0.0.5]:5432": explicit,
				"10.1.2.3:80": explicit, "10.1.2.3:5432": explicit, "10.2.0.1:80": explicit,
				"192.0.2.1:80": pass, "8.8.8.8:443": redirect}},
		{name: "too many destinations for the kernel", tag: "ci", max: 4, redirectOthers: true, src: `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: [db, web, v6], action: allow}]`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.src
			if !strings.Contains(src, "targets:") {
				src += reachTargets
			}
			p, err := load("test.yaml", src, fakeResolver{"db.internal": {netip.MustParseAddr("198.51.100.7")}})
			if err != nil {
				t.Fatal(err)
			}
			max := c.max
			if max == 0 {
				max = 16
			}
			rules := p.Intercept(c.tag, max)
			if len(rules) > max {
				t.Errorf("%d rules, at most %d fit", len(rules), max)
			}
			written := 0
			for _, id := range p.identities {
				if id.Tag == c.tag {
					written += len(id.intercept)
				}
			}
			for _, r := range rules[written:] {
				if r.Action != "redirect" && r.Action != "deny" {
					t.Errorf("derived rule %+v: only redirect and deny may be derived", r)
				}
			}
			other := noRule
			switch {
			case c.redirectOthers:
				other = redirect
			case c.otherDeny != "":
				other = c.otherDeny
			}
			for _, probe := range all {
				dst := netip.MustParseAddrPort(probe)
				want, ok := c.want[probe]
				if !ok {
					want = other
				}
				r := kernelVerdict(rules, dst)
				got := r.Action
				if got == "deny" {
					got += ":" + r.Reason
				}
				if got != want {
					t.Errorf("%s: %s, want %s; rules:\n%s", probe, got, want, dumpRules(rules))
				}
				if r.Reason != "" {
					checkRefusal(t, p, c.tag, dst)
				}
			}
		})
	}
}

// checkRefusal fails unless interlockd would refuse every subject of tag
// connecting to dst (enforced, denied at connect).
func checkRefusal(t *testing.T, p *Policy, tag string, dst netip.AddrPort) {
	t.Helper()
	tg := p.TargetFor("", dst.Addr(), dst.Port())
	proto := "tcp"
	if tg != nil {
		proto = tg.Protocol
	}
	for _, s := range probeSubjects(tag) {
		d := p.Decide(&Input{Subject: &s, Target: tg, Protocol: proto, Op: Operation{Kind: OpConnect}})
		if d.Action != Deny || p.Mode(&s, tg) != Enforce {
			t.Errorf("%s refused in the kernel, but interlockd would %s it for %+v (rule %s)",
				dst, p.Mode(&s, tg).Describe(d.Action), s, d.Rule)
		}
	}
}

func dumpRules(rules []InterceptRule) string {
	var b strings.Builder
	for _, r := range rules {
		fmt.Fprintf(&b, "  %s %d-%d %s %s\n", r.Prefix, r.PortMin, r.PortMax, r.Action, r.Reason)
	}
	return b.String()
}

// TestInterceptFollowsRefresh: the redirect a host-name target gets follows
// its addresses as ResolveTargets finds them; a name that does not resolve
// yet reaches nothing, as interlockd would refuse it too.
func TestInterceptFollowsRefresh(t *testing.T) {
	r := fakeResolver{}
	p, err := load("test.yaml", `
identities: [{name: ci}]
rules: [{name: r, identity: ci, target: named, action: allow}]`+reachTargets, r)
	if err != nil {
		t.Fatal(err)
	}
	old, moved := netip.MustParseAddrPort("198.51.100.7:5432"), netip.MustParseAddrPort("198.51.100.8:5432")
	verdicts := func() (string, string) {
		rules := p.Intercept("ci", 16)
		return kernelVerdict(rules, old).Action, kernelVerdict(rules, moved).Action
	}
	if a, b := verdicts(); a != "deny" || b != "deny" {
		t.Errorf("unresolved: %s, %s; want both refused", a, b)
	}
	r["db.internal"] = []netip.Addr{old.Addr()}
	p.ResolveTargets(context.Background())
	if a, b := verdicts(); a != "redirect" || b != "deny" {
		t.Errorf("resolved: %s, %s; want redirect, deny", a, b)
	}
	r["db.internal"] = []netip.Addr{moved.Addr()}
	p.ResolveTargets(context.Background())
	if a, b := verdicts(); a != "deny" || b != "redirect" {
		t.Errorf("moved: %s, %s; want deny, redirect", a, b)
	}
}

// TestInterceptMergesDestinations: destinations one redirect already
// covers take no rule of their own, so more policies fit the kernel's
// sixteen.
func TestInterceptMergesDestinations(t *testing.T) {
	p, err := load("test.yaml", `
identities: [{name: ci}]
targets:
  - {name: db, protocol: postgres, addresses: [10.0.0.5], port: 5432}
  - {name: db-again, protocol: postgres, addresses: [10.0.0.5, 10.0.0.5], port: 5432}
  - {name: inner, protocol: tcp, addresses: [10.1.0.5], port: 80}
  - {name: web, protocol: tcp, addresses: [10.1.0.0/16]}
  - {name: db-any, protocol: tcp, addresses: [10.0.0.5/32]}
rules: [{name: r, identity: ci, action: allow, target: [db, db-again, inner, web, db-any]}]`, fakeResolver{})
	if err != nil {
		t.Fatal(err)
	}
	got := dumpRules(p.Intercept("ci", 16))
	want := "  10.1.0.0/16 1-65535 redirect \n  10.0.0.5/32 1-65535 redirect \n" +
		"  0.0.0.0/0 1-65535 deny no-rule-allows\n  ::/0 1-65535 deny no-rule-allows\n"
	if got != want {
		t.Errorf("rules:\n%s\nwant:\n%s", got, want)
	}
}
