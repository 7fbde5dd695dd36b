package daemon_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// The secrets of the credential tests: a static token in a file, a token
// in Vault KV v2.
const (
	staticForgeToken = "ghp_StaticForgeToken0123456789abcdef"
	kvForgeToken     = "kv-forge-token-5f0c2d8e9b7a4e61"
)

// echoUpstream is an HTTPS server on loopback for every host name of the
// credential tests: it logs the Authorization each request carried, and
// echoes the request's headers back, in its body and in response headers,
// as a careless API would.
type echoUpstream struct {
	port int
	mu   sync.Mutex
	log  []string // "host path authorization x-token"
}

func (u *echoUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The body is read before the answer, as an API does: an answer
	// before the whole body would end the request before the leak guard
	// has seen all of it.
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.log = append(u.log, r.Host+" "+r.URL.Path+" "+r.Header.Get("Authorization")+" "+r.Header.Get("X-Token"))
	if bytes.Contains(body, []byte(staticForgeToken)) {
		u.log = append(u.log, "BODY WITH THE STATIC TOKEN")
	}
	u.mu.Unlock()
	w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "upstream %s %s host=%s body=%d\n", r.Method, r.URL.RequestURI(), r.Host, len(body))
	for _, k := range keys {
		fmt.Fprintf(w, "%s: %s\n", k, strings.Join(r.Header[k], ", "))
	}
}

// seen returns what the upstream logged.
func (u *echoUpstream) seen() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.log, "\n")
}

// credFixture is interlockd with a static token source and Vault (the
// in-tree test server) in front of echoUpstream, with these targets:
// forge (api.forge.test, the static token), kvforge (kv.forge.test, the KV
// token), nokv (missing.forge.test, a KV path Vault does not have) and
// other (other.test, no credential).
type credFixture struct {
	d     *daemontest.Daemon
	dir   string
	up    *echoUpstream
	vault *vaultcompat.Server
}

func startCred(t *testing.T) *credFixture {
	testenv.Privileged(t)
	if _, err := exec.LookPath("curl"); err != nil {
		testenv.Unavailable(t, "no curl (apt-get install curl): %v", err)
	}
	f := &credFixture{dir: t.TempDir(), up: &echoUpstream{port: testenv.FreePort(t)}}
	for p := f.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	upstreamCA := filepath.Join(f.dir, "upstream-ca.crt")
	public, err := ca.Open(ca.Config{Dir: filepath.Join(f.dir, "public-ca"), PublicCert: upstreamCA})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", f.up.port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f.up, TLSConfig: &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return public.Leaf(h.ServerName)
	}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	f.vault, err = vaultcompat.New(vaultcompat.Config{KV: map[string]map[string]any{
		"ci/forge": {"token": kvForgeToken, "username": "ci-bot"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.vault.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.vault.Close() })
	tokenFile := filepath.Join(f.dir, "vault-token")
	os.WriteFile(tokenFile, []byte(f.vault.RootToken()), 0o600)
	forgeToken := filepath.Join(f.dir, "forge.token")
	os.WriteFile(forgeToken, []byte(staticForgeToken+"\n"), 0o600)
	cfg := filepath.Join(f.dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`credentials:
  static:
    forge-token: {password_file: %s}
  vault:
    address: %s
    timeout: 3s
    auth: {method: token, token_file: %s}
`, forgeToken, f.vault.URL(), tokenFile)), 0o600)

	pol := filepath.Join(f.dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - name: forge
    protocol: http
    hosts: [api.forge.test]
    port: %[1]d
    tls: intercept
    upstream_ca: %[2]s
    credential:
      source: forge-token
      inject: {header: Authorization, template: "Bearer {{.secret}}"}
  - name: kvforge
    protocol: http
    hosts: [kv.forge.test]
    port: %[1]d
    tls: intercept
    upstream_ca: %[2]s
    credential:
      source: vault
      kind: kv
      path: secret/data/ci/forge
      field: token
      inject: {header: X-Api-Key, template: "{{.username}}:{{.secret}}"}
  - name: nokv
    protocol: http
    hosts: [missing.forge.test]
    port: %[1]d
    tls: intercept
    upstream_ca: %[2]s
    credential:
      source: vault
      kind: kv
      path: secret/data/ci/missing
      field: token
      inject: {header: Authorization, template: "Bearer {{.secret}}"}
  - name: other
    protocol: http
    hosts: [other.test]
    port: %[1]d
    tls: intercept
    upstream_ca: %[2]s
rules:
  - {name: forge-any, identity: ci-bot, target: [forge, kvforge, nokv, other], http: {methods: [GET, POST]}, action: allow}
`, f.up.port, upstreamCA)), 0o644)
	f.d = daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	return f
}

// curl runs the real curl as nobody under `interlock exec`, with no
// credential of its own and no CA flag (exec's environment trusts
// Interlock's CA); it returns stdout and stderr together, and curl's
// exit status.
func (f *credFixture) curl(t *testing.T, execArgs []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	argv := append([]string{"exec", "--identity", "ci-bot"}, execArgs...)
	argv = append(argv, "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"curl", "-sS", "--max-time", "50", "-w", "status=%{http_code}\n")
	for _, h := range []string{"api.forge.test", "kv.forge.test", "missing.forge.test", "other.test"} {
		argv = append(argv, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", h, f.up.port))
	}
	cmd := f.d.Command(ctx, append(argv, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("curl %v: %v", args, err)
	}
	return out.String(), 0
}

func (f *credFixture) url(host, path string) string {
	return fmt.Sprintf("https://%s:%d%s", host, f.up.port, path)
}

// TestHTTPCredentialInjected: the agent's own Authorization ("wrong") is
// replaced by the credential the target names, a static token or a Vault
// KV field; the upstream sees the real value, the agent never does (the
// upstream echoes it back and interlockd scrubs the echo), and neither
// does the recording.
func TestHTTPCredentialInjected(t *testing.T) {
	f := startCred(t)
	out, st := f.curl(t, nil, "-H", "Authorization: Bearer wrong", "-D", "-", f.url("api.forge.test", "/user"))
	if st != 0 || !strings.Contains(out, "status=200") {
		t.Fatalf("static: curl %d\n%s\n%s", st, out, f.d.Logs())
	}
	if !strings.Contains(f.up.seen(), fmt.Sprintf("api.forge.test:%d /user Bearer %s ", f.up.port, staticForgeToken)) {
		t.Errorf("the upstream did not see the static token:\n%s", f.up.seen())
	}
	stars := strings.Repeat("*", len(staticForgeToken))
	if strings.Contains(out, staticForgeToken) || strings.Contains(out, "wrong") || !strings.Contains(out, "Authorization: Bearer "+stars) ||
		!strings.Contains(strings.ToLower(out), "x-echo-authorization: bearer "+stars) {
		t.Errorf("the agent read:\n%s", out)
	}

	out, st = f.curl(t, nil, "-H", "Authorization: Bearer wrong", "-H", "X-Api-Key: mine", f.url("kv.forge.test", "/repos"))
	if st != 0 || !strings.Contains(out, "status=200") {
		t.Fatalf("kv: curl %d\n%s\n%s", st, out, f.d.Logs())
	}
	seen := f.up.seen()
	if !strings.Contains(seen, fmt.Sprintf("kv.forge.test:%d /repos  ", f.up.port)) {
		t.Errorf("the agent's Authorization reached the KV target:\n%s", seen)
	}
	if strings.Contains(out, kvForgeToken) || !strings.Contains(out, "X-Api-Key: ci-bot:"+strings.Repeat("*", len(kvForgeToken))) {
		t.Errorf("kv: the agent read:\n%s", out)
	}
	recs := f.d.Recordings(t)
	if len(recs) == 0 {
		t.Fatal("no recording written")
	}
	for id, data := range recs {
		if bytes.Contains(data, []byte(staticForgeToken)) || bytes.Contains(data, []byte(kvForgeToken)) {
			t.Errorf("a secret in the recording of session %s", id)
		}
	}
}

// TestHTTPCredentialNotIssued: a credential Vault cannot give (a KV path
// it lacks, then Vault down) answers 502 with a JSON body that holds no
// secret; the audit names the target and the path; other targets go on.
func TestHTTPCredentialNotIssued(t *testing.T) {
	f := startCred(t)
	out, st := f.curl(t, nil, f.url("missing.forge.test", "/x"))
	if st != 0 || !strings.Contains(out, "status=502") || !strings.Contains(out, `"error":"the credential for target nokv could not be issued"`) {
		t.Fatalf("missing KV path: curl %d\n%s", st, out)
	}
	ev := waitEvent(t, f.d, "credential_failed", func(e map[string]any) bool { return e["target"] == "nokv" })
	if ev["role"] != "secret/data/ci/missing" || ev["source"] != "vault" {
		t.Errorf("audit: %v", ev)
	}
	f.vault.Stop()
	out, _ = f.curl(t, nil, f.url("kv.forge.test", "/x"))
	if !strings.Contains(out, "status=502") || !strings.Contains(out, "could not be issued") {
		t.Errorf("Vault down: %s", out)
	}
	out, _ = f.curl(t, nil, f.url("api.forge.test", "/x"))
	if !strings.Contains(out, "status=200") {
		t.Errorf("the static target with Vault down: %s", out)
	}
	if strings.Contains(f.up.seen(), "missing.forge.test") {
		t.Errorf("a request without its credential reached the upstream:\n%s", f.up.seen())
	}
}

// TestHTTPSecretRefusedElsewhere: a secret interlockd injects for one
// target, sent by the agent to another host (in a header, the URL or the
// body), is refused with 403 before any of it leaves, and audited.
func TestHTTPSecretRefusedElsewhere(t *testing.T) {
	f := startCred(t)
	// A secret is known to interlockd once a session has used it; static
	// and KV secrets stay guarded after that session.
	if out, _ := f.curl(t, nil, f.url("api.forge.test", "/warm"), f.url("kv.forge.test", "/warm")); strings.Count(out, "status=200") != 2 {
		t.Fatalf("warm-up: %s", out)
	}
	for _, c := range []struct {
		what, where string
		args        []string
	}{
		{"a secret", "header X-Token", []string{"-H", "X-Token: " + staticForgeToken, f.url("other.test", "/h")}},
		{"a secret (base64)", "header Authorization", []string{"-u", "x-access-token:" + staticForgeToken, f.url("other.test", "/a")}},
		{"a secret", "url", []string{f.url("other.test", "/q?t="+staticForgeToken)}},
		{"a secret", "body", []string{"--data-binary", strings.Repeat("a", 100<<10) + staticForgeToken, f.url("other.test", "/b")}},
	} {
		out, _ := f.curl(t, nil, c.args...)
		if !strings.Contains(out, "status=403") || !strings.Contains(out, c.what+" of target forge in its "+c.where) {
			t.Errorf("%s: %s", c.where, out)
		}
		waitEvent(t, f.d, "secret_refused", func(e map[string]any) bool {
			return e["where"] == c.where && e["owner"] == "forge" && e["target"] == "other"
		})
	}
	// The body's head went before the secret was found, never the secret.
	if seen := f.up.seen(); strings.Contains(seen, " /h ") || strings.Contains(seen, " /a ") || strings.Contains(seen, " /q ") || strings.Contains(seen, "BODY WITH") {
		t.Errorf("a refused request reached the upstream:\n%s", f.up.seen())
	}
	// The same token to its own target is its business.
	if out, _ := f.curl(t, nil, "-H", "X-Token: "+staticForgeToken, f.url("api.forge.test", "/ok")); !strings.Contains(out, "status=200") {
		t.Errorf("own target: %s", out)
	}
}

// TestHTTPPlaceholder: `interlock exec --placeholder` gives the command a
// fake of the token's shape; sent to its target it arrives as the real
// token, sent to another host it is refused and audited; the credential
// behind it is released when the command ends.
func TestHTTPPlaceholder(t *testing.T) {
	f := startCred(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	curl := fmt.Sprintf("curl -sS --max-time 50 -w 'status=%%{http_code}\\n' --resolve api.forge.test:%[1]d:127.0.0.1 --resolve other.test:%[1]d:127.0.0.1", f.up.port)
	script := fmt.Sprintf(`echo "token=$FORGE_TOKEN"
%[1]s -H "X-Token: $FORGE_TOKEN" %[2]s
%[1]s -H "X-Token: $FORGE_TOKEN" %[3]s`, curl, f.url("api.forge.test", "/mine"), f.url("other.test", "/theirs"))
	cmd := f.d.Command(ctx, "exec", "--identity", "ci-bot", "--placeholder", "FORGE_TOKEN=forge", "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("exec: %v\n%s\n%s", err, out, f.d.Logs())
	}
	var placeholder string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "token="); ok {
			placeholder = v
		}
	}
	if len(placeholder) != len(staticForgeToken) || !strings.HasPrefix(placeholder, "ghp_") || placeholder == staticForgeToken {
		t.Fatalf("placeholder %q is not a fake of the token's shape\n%s", placeholder, out)
	}
	if strings.Contains(string(out), staticForgeToken) {
		t.Errorf("the command read the real token:\n%s", out)
	}
	// Its own target got the real token; the echo shows the placeholder.
	if !strings.Contains(string(out), "X-Token: "+placeholder) || !strings.Contains(string(out), "status=200") {
		t.Errorf("the echo of its own target:\n%s", out)
	}
	if !strings.Contains(f.up.seen(), fmt.Sprintf("api.forge.test:%d /mine Bearer %s %s", f.up.port, staticForgeToken, staticForgeToken)) {
		t.Errorf("its own target did not get the real token:\n%s", f.up.seen())
	}
	if strings.Contains(f.up.seen(), "theirs") {
		t.Errorf("the placeholder reached another host:\n%s", f.up.seen())
	}
	if !strings.Contains(string(out), "status=403") || !strings.Contains(string(out), "a placeholder of target forge in its header X-Token") {
		t.Errorf("the placeholder sent to another host:\n%s", out)
	}
	waitEvent(t, f.d, "secret_refused", func(e map[string]any) bool { return e["placeholder"] == true && e["target"] == "other" })
	waitEvent(t, f.d, "credential_revoked", func(e map[string]any) bool {
		return e["target"] == "forge" && strings.Contains(fmt.Sprint(e["conn"]), "interlock-exec")
	})
}
