package policy

import (
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
