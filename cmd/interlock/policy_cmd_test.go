package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// examplePolicy is the CI-runner example shipped in policy/examples.
func examplePolicy(t *testing.T) string {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	p := filepath.Join(filepath.Dir(here), "..", "..", "policy", "examples", "ci-runner.yaml")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("example policy: %v", err)
	}
	return p
}

func runPolicyCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	// No daemon answers here: explain without --policy falls back to the
	// embedded default and says so.
	sock := filepath.Join(os.TempDir(), "interlock-no-daemon.sock")
	code := run(append([]string{"--socket", sock, "policy"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestPolicyCheck(t *testing.T) {
	code, out, errOut := runPolicyCmd("check", examplePolicy(t))
	if code != 0 || !strings.Contains(out, "ci-runner.yaml: ok") {
		t.Fatalf("check example: code %d, out %q, err %q", code, out, errOut)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("rules:\n  - name: r\n    action: alow\n  - name: s\n    action: allow\n    identity: ghost\n"), 0o600)
	code, _, errOut = runPolicyCmd("check", bad)
	if code != 1 {
		t.Errorf("check bad: code %d", code)
	}
	for _, want := range []string{bad + `:3:13: rule "r": action "alow"`, bad + `:6:15: rule "s": unknown identity "ghost"`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("check bad: stderr %q lacks %q", errOut, want)
		}
	}
	if code, _, _ := runPolicyCmd("check"); code != 2 {
		t.Errorf("check without file: code %d, want 2", code)
	}
}

func TestPolicyTest(t *testing.T) {
	code, out, _ := runPolicyCmd("test", "-v", examplePolicy(t))
	if code != 0 || !strings.Contains(out, "PASS runner reads orders with PII masked") || !strings.Contains(out, "ok 18 tests") {
		t.Fatalf("test example: code %d, out %q", code, out)
	}
	failing := filepath.Join(t.TempDir(), "f.yaml")
	os.WriteFile(failing, []byte("identities: [{name: a}]\nrules: [{name: r, identity: a, action: deny}]\ntests:\n  - name: wrong\n    identity: a\n    expect: {action: allow}\n"), 0o600)
	// A failing shipped test refuses the policy, as interlockd would.
	code, _, errOut := runPolicyCmd("test", failing)
	if code != 1 || !strings.Contains(errOut, failing+`:4:5: test "wrong": got deny by r, want allow`) {
		t.Errorf("failing test: code %d, stderr %q", code, errOut)
	}
}

func TestPolicyExplain(t *testing.T) {
	code, out, errOut := runPolicyCmd("explain", "--policy", examplePolicy(t), "--identity", "ci-runner", "--target", "prod-db",
		"--sql", "SELECT email FROM customers; DELETE FROM orders")
	if code != 0 {
		t.Fatalf("explain: code %d, err %q", code, errOut)
	}
	for _, want := range []string{
		"statement 1: read SELECT", "decided:   mask by read-masked",
		"statement 2: write DELETE [destructive, multi]", "decided:   deny by deny-destructive",
		"decision:  deny by rule deny-destructive", "message:   destructive statements are never allowed on production",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runPolicyCmd("explain", "--policy", examplePolicy(t), "--identity", "migrator", "--target", "prod-db",
		"--sql", "ALTER TABLE orders ADD COLUMN x int", "--json")
	var ex explanation
	if code != 0 || json.Unmarshal([]byte(out), &ex) != nil || ex.Action != "approve" || ex.Approval == nil || ex.Approval.Quorum != 1 {
		t.Errorf("explain --json: code %d, %q", code, out)
	}
	// The default policy, a subject given by tag.
	code, out, _ = runPolicyCmd("explain", "--tag", "demo", "--target", "local-postgres", "--sql", "SELECT pg_read_file('/etc/passwd')")
	if code != 0 || !strings.Contains(out, "identities matched: demo") || !strings.Contains(out, "because:   calls pg_read_file") ||
		!strings.Contains(out, "decision:  deny by rule default-deny") ||
		!strings.Contains(out, "policy:    embedded default policy (interlockd is not running") {
		t.Errorf("explain default: code %d:\n%s", code, out)
	}
	if code, _, _ := runPolicyCmd("explain", "--identity", "nobody", "--sql", "SELECT 1"); code != 1 {
		t.Errorf("unknown identity: code %d, want 1", code)
	}
	if code, _, _ := runPolicyCmd("explain", "--sql", "SELECT 1"); code != 2 {
		t.Errorf("no caller: code %d, want 2", code)
	}
}

func TestPolicyDefaultAndUsage(t *testing.T) {
	code, out, _ := runPolicyCmd("default")
	if code != 0 || !strings.Contains(out, "name: demo") {
		t.Errorf("default: code %d", code)
	}
	if code, _, _ := runPolicyCmd("frobnicate"); code != 2 {
		t.Errorf("unknown subcommand: code %d", code)
	}
}

func TestPolicyExplainHTTP(t *testing.T) {
	file := filepath.Join(t.TempDir(), "http.yaml")
	os.WriteFile(file, []byte(`
identities: [{name: ci}]
targets:
  - {name: forge, protocol: http, hosts: ["*.example.com"], port: 443, tls: intercept}
rules:
  - {name: read-repos, identity: ci, target: forge, http: {methods: [GET], paths: [/repos/]}, action: allow}
`), 0o600)
	code, out, errOut := runPolicyCmd("explain", "--policy", file, "--identity", "ci", "--http", "GET https://api.example.com/repos/acme?page=2")
	if code != 0 || !strings.Contains(out, "target:    forge") || !strings.Contains(out, "decision:  allow by rule read-repos") {
		t.Errorf("explain https URL: code %d, err %q:\n%s", code, errOut, out)
	}
	// Another port is no target's: default-deny.
	code, out, _ = runPolicyCmd("explain", "--policy", file, "--identity", "ci", "--http", "GET https://api.example.com:8443/repos/acme")
	if code != 0 || !strings.Contains(out, "target:    none (no target's hosts match api.example.com on port 8443)") || !strings.Contains(out, "default-deny") {
		t.Errorf("explain other port: code %d:\n%s", code, out)
	}
	if code, _, _ := runPolicyCmd("explain", "--policy", file, "--identity", "ci", "--http", "GET ftp://x/y"); code != 2 {
		t.Errorf("explain ftp URL: code %d, want 2", code)
	}
	// An escaped path is explained as interlockd decides it: decoded.
	for _, req := range []string{"GET https://api.example.com/%72epos/acme", "GET /%72epos/acme"} {
		code, out, errOut = runPolicyCmd("explain", "--policy", file, "--identity", "ci", "--target", "forge", "--http", req)
		if code != 0 || !strings.Contains(out, "decision:  allow by rule read-repos") {
			t.Errorf("explain %q: code %d, err %q:\n%s", req, code, errOut, out)
		}
	}
	if code, _, _ := runPolicyCmd("explain", "--policy", file, "--identity", "ci", "--http", "GET /a b%zz"); code != 2 {
		t.Errorf("explain a path that is none: code %d, want 2", code)
	}
	// A path interlockd answers 400 before the policy: explained so.
	code, out, _ = runPolicyCmd("explain", "--policy", file, "--identity", "ci", "--target", "forge", "--http", "GET /repos/%2e%2e/admin")
	if code != 0 || !strings.Contains(out, "decision:  deny by rule interlockd") || !strings.Contains(out, "not in canonical form") {
		t.Errorf("explain dot segments: code %d:\n%s", code, out)
	}
}

// TestPolicyExplainHTTPByAddress: a URL whose host is an IP address is
// explained with the target interlockd would give its connection: the one
// that lists the address (the embedded default's loopback relay allowed a
// request explain said no target took), unless http targets chosen by name
// take the port and the request is plain HTTP, whose Host then names it.
func TestPolicyExplainHTTPByAddress(t *testing.T) {
	file := filepath.Join(t.TempDir(), "http.yaml")
	os.WriteFile(file, []byte(`
identities: [{name: ci}]
targets:
  - {name: forge, protocol: http, hosts: ["*.example.com"], port: 443, tls: intercept}
  - {name: local, protocol: tcp, addresses: [127.0.0.0/8], port: 0}
  - {name: api-ip, protocol: http, addresses: [10.0.0.5], port: 443, tls: intercept}
rules:
  - {name: local-any, identity: ci, target: local, action: allow}
  - {name: api-read, identity: ci, target: api-ip, http: {methods: [GET]}, action: allow}
`), 0o600)
	for _, c := range []struct{ req, target, decision string }{
		{"GET http://127.0.0.1:8080/x", "target:    local\n", "allow by rule local-any"},
		{"GET https://10.0.0.5/x", "target:    api-ip\n", "allow by rule api-read"},
		{"GET http://10.0.0.5:443/x", "none (no http target has host 10.0.0.5 on port 443)", "deny by rule default-deny"},
		{"GET https://192.0.2.1/", "none (no target has the address 192.0.2.1 on port 443)", "deny by rule default-deny"},
		{"GET http://[::1]:8080/", "none (no target has the address ::1 on port 8080)", "deny by rule default-deny"},
	} {
		code, out, errOut := runPolicyCmd("explain", "--policy", file, "--identity", "ci", "--http", c.req)
		if code != 0 || !strings.Contains(out, c.target) || !strings.Contains(out, "decision:  "+c.decision) {
			t.Errorf("explain %q: code %d, err %q:\n%s\nwant %q and %q", c.req, code, errOut, out, c.target, c.decision)
		}
	}
	// The embedded default (no daemon answers), as the quick start's curl
	// to a local server, which interlockd relays.
	code, out, errOut := runPolicyCmd("explain", "--identity", "demo", "--http", "GET http://127.0.0.1:8080/")
	if code != 0 || !strings.Contains(out, "target:    local-http\n") || !strings.Contains(out, "decision:  allow by rule demo-http") {
		t.Errorf("explain the quick start's local request: code %d, err %q:\n%s", code, errOut, out)
	}
}
