package policy

import (
	"net/netip"
	"strings"
	"testing"
)

const httpPolicy = `
identities: [{name: ci}]
targets:
  - name: forge
    protocol: http
    hosts: [api.example.com, "*.example.com"]
    port: 443
    tls: intercept
    upstream_ca: /etc/ssl/forge-ca.pem
  - name: pkgs
    protocol: http
    hosts: [pkgs.example.org]
    port: 443
    tls: passthrough
  - name: plain
    protocol: http
    hosts: [intranet.test]
    port: 80
rules:
  - name: no-admin
    target: forge
    http: {paths: [/admin/]}
    action: deny
  - name: read-repos
    identity: ci
    target: forge
    http: {methods: [GET, head], paths: ["/repos/acme/*"], hosts: [api.example.com]}
    action: allow
  - name: search
    identity: ci
    target: forge
    http: {methods: [GET], paths: [/search], query: {scope: "acme*"}, headers: [x-request-id]}
    action: allow
  - name: push-approved
    identity: ci
    target: forge
    http: {methods: [POST], paths: [/repos/acme/*/git/*]}
    action: approve
    approve: {reviewers: [alice]}
  - name: fetch-pkgs
    identity: ci
    target: pkgs
    action: allow
tests:
  - {name: read, identity: ci, target: forge, http: {method: GET, host: api.example.com, path: /repos/acme/x}, expect: {action: allow, rule: read-repos}}
  - {name: other-host, identity: ci, target: forge, http: {method: GET, host: www.example.com, path: /repos/acme/x}, expect: {action: deny}}
  - {name: search, identity: ci, target: forge, http: {method: GET, path: "/search?scope=acme-web", headers: {X-Request-Id: ["1"]}}, expect: {action: allow, rule: search}}
`

func TestHTTPTargets(t *testing.T) {
	p, err := load("test.yaml", httpPolicy, fakeResolver{})
	if err != nil {
		t.Fatal(err)
	}
	forge := p.Target("forge")
	if forge.TLS != TLSIntercept || forge.UpstreamCA != "/etc/ssl/forge-ca.pem" || len(forge.Names) != 2 {
		t.Fatalf("forge: %+v", forge)
	}
	for _, c := range []struct {
		name string
		port uint16
		want string
	}{
		{"api.example.com", 443, "forge"},
		{"API.Example.COM.", 443, "forge"},
		{"git.example.com", 443, "forge"},
		{"a.b.example.com", 443, ""}, // a wildcard stands for one label
		{"example.com", 443, ""},
		{"api.example.com", 8443, ""},
		{"pkgs.example.org", 443, "pkgs"},
		{"intranet.test", 80, "plain"},
		{"evil-example.com", 443, ""},
	} {
		got := ""
		if tg := p.TargetForName(c.name, c.port); tg != nil {
			got = tg.Name
		}
		if got != c.want {
			t.Errorf("TargetForName(%q, %d) = %q, want %q", c.name, c.port, got, c.want)
		}
	}
	if !p.ChoosesByName(nil, 443) || !p.ChoosesByName(nil, 80) || p.ChoosesByName(nil, 5432) {
		t.Error("ChoosesByName: by-name ports are 443 and 80")
	}
	// The kernel brings the by-name ports of every address to interlockd.
	rules := p.Intercept("ci", 64)
	found := false
	for _, r := range rules {
		if r.Action == "redirect" && r.Prefix == netip.MustParsePrefix("0.0.0.0/0") && r.PortMin == 443 && r.PortMax == 443 {
			found = true
		}
	}
	if !found {
		t.Errorf("Intercept(ci) = %v, want a redirect of port 443 everywhere", rules)
	}
}

func TestDecideHTTP(t *testing.T) {
	p := mustParse(t, httpPolicy)
	ci := &Subject{Tag: "ci"}
	forge := p.Target("forge")
	cases := []struct {
		req    HTTPRequest
		action Action
		rule   string
	}{
		{HTTPRequest{Method: "GET", Host: "api.example.com", URI: "/repos/acme/web"}, Allow, "read-repos"},
		{HTTPRequest{Method: "head", Host: "api.example.com", URI: "/repos/acme/web?x=1"}, Allow, "read-repos"},
		{HTTPRequest{Method: "GET", Host: "git.example.com", URI: "/repos/acme/web"}, Deny, "default-deny"},
		{HTTPRequest{Method: "DELETE", Host: "api.example.com", URI: "/repos/acme/web"}, Deny, "default-deny"},
		{HTTPRequest{Method: "GET", Host: "api.example.com", URI: "/admin/users"}, Deny, "no-admin"},
		{HTTPRequest{Method: "GET", Host: "api.example.com", URI: "/administrator"}, Deny, "default-deny"},
		{HTTPRequest{Method: "GET", URI: "/search?scope=acme-web", Header: map[string][]string{"x-request-id": {"1"}}}, Allow, "search"},
		{HTTPRequest{Method: "GET", URI: "/search?scope=acme-web", Header: map[string][]string{"X-Request-Id": {"1"}, "accept": {"*/*"}}}, Allow, "search"},
		{HTTPRequest{Method: "GET", URI: "/search?scope=other", Header: map[string][]string{"X-Request-Id": {"1"}}}, Deny, "default-deny"},
		{HTTPRequest{Method: "GET", URI: "/search?scope=acme"}, Deny, "default-deny"},
		{HTTPRequest{Method: "POST", URI: "/repos/acme/web/git/refs"}, Approve, "push-approved"},
		{HTTPRequest{Method: "GET", URI: "http://api.example.com/repos/acme/web"}, Deny, "unparseable"},
	}
	for _, c := range cases {
		d := p.DecideHTTP(ci, forge, c.req)
		if d.Action != c.action || d.Rule != c.rule {
			t.Errorf("%+v: got %v by %s, want %v by %s", c.req, d.Action, d.Rule, c.action, c.rule)
		}
	}
	// The passthrough target is decided at connect only.
	if d := p.Decide(&Input{Subject: ci, Target: p.Target("pkgs"), Op: Operation{Kind: OpConnect}}); d.Action != Allow || d.Rule != "fetch-pkgs" {
		t.Errorf("passthrough connect: %+v", d)
	}
	for _, r := range p.RunTests() {
		if !r.Pass {
			t.Error(r)
		}
	}
}

func TestHTTPPolicyErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{"targets:\n  - {name: f, protocol: http, hosts: [api.example.com], tls: mitm}\n", `test.yaml:2:62: target "f": tls "mitm": use intercept or passthrough`},
		{"targets:\n  - {name: f, protocol: http, hosts: [\"*.*.example.com\"]}\n", `target "f": hosts entry "*.*.example.com" is not a host name or *.domain`},
		{"targets:\n  - {name: f, protocol: http}\n", `target "f" needs addresses`},
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], upstream_ca: /ca.pem}\n", `upstream_ca is only used with tls: intercept`},
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], tls: intercept, upstream_ca: ca.pem}\n", `upstream_ca "ca.pem" is not an absolute path`},
		{"targets:\n  - {name: db, protocol: postgres, addresses: [10.0.0.1], tls: intercept}\n", `target "db": tls is only for http targets`},
		{"targets:\n  - {name: p, protocol: http, hosts: [a.test], tls: passthrough}\nrules:\n  - {name: r, target: p, http: {methods: [GET]}, action: allow}\n",
			`test.yaml:4:32: rule "r": target "p" is tls: passthrough`},
		{"rules:\n  - {name: r, http: {paths: [repos]}, action: allow}\n", `rule "r": http path "repos" must start with /`},
		{"rules:\n  - {name: r, http: {method: [GET]}, action: allow}\n", `unknown key "method"`},
	}
	for _, c := range cases {
		_, err := load("test.yaml", c.src, fakeResolver{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q:\n got: %v\nwant: %s", c.src, err, c.want)
		}
	}
}
