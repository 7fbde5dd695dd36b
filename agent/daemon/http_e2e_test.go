package daemon_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// httpFixture is interlockd in front of nginx on loopback: HTTPS with
// certificates of a test CA that interlockd's policy names (upstream_ca),
// HTTPS with a certificate that CA did not sign, and plain HTTP; the agent
// is the real curl, run as nobody under `interlock exec`.
type httpFixture struct {
	d   *daemontest.Daemon
	dir string
	// upstreamCA is the test CA's certificate (the "public" CA the
	// upstreams' certificates chain to); interlockCA is Interlock's.
	upstreamCA, interlockCA     string
	tlsPort, badPort, plainPort int
}

func startHTTP(t *testing.T) *httpFixture {
	testenv.Privileged(t)
	for _, bin := range []string{"curl", "nginx"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Unavailable(t, "no %s (apt-get install curl nginx-light): %v", bin, err)
		}
	}
	f := &httpFixture{dir: t.TempDir(), tlsPort: testenv.FreePort(t), badPort: testenv.FreePort(t), plainPort: testenv.FreePort(t)}
	for p := f.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The upstreams' CA, and another that signs the impostor.
	f.upstreamCA = filepath.Join(f.dir, "upstream-ca.crt")
	public, err := ca.Open(ca.Config{Dir: filepath.Join(f.dir, "public-ca"), PublicCert: f.upstreamCA})
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Open(ca.Config{Dir: filepath.Join(f.dir, "other-ca"), PublicCert: filepath.Join(f.dir, "other-ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	// Each server block: its name, port, certificate (none: plain HTTP).
	var servers strings.Builder
	// api.test also serves a JSON document, gzip-encoded (and so chunked
	// over HTTP/1.1: nginx does not know its length up front).
	customers := `location /customers/ {
      default_type application/json;
      gzip on; gzip_types application/json; gzip_min_length 1;
      return 200 '{"id":7,"name":"Ann","email":"ann@example.com","orders":[{"email":"ann@example.com"}]}';
    }
    location = /big.bin { alias ` + filepath.Join(f.dir, "big.bin") + `; }
    location = /connection { return 200 "$connection"; }`
	for _, srv := range []struct {
		name  string
		port  int
		ca    *ca.Authority
		extra string
	}{{"api.test", f.tlsPort, public, customers}, {"mirror.test", f.tlsPort, public, ""}, {"impostor.test", f.badPort, other, ""}, {"intranet.test", f.plainPort, nil, ""}} {
		listen := fmt.Sprintf("127.0.0.1:%d", srv.port)
		tlsConf := ""
		if srv.ca != nil {
			listen += " ssl http2"
			crt, key := f.leafFiles(t, srv.ca, srv.name)
			tlsConf = fmt.Sprintf("ssl_certificate %s;\n    ssl_certificate_key %s;", crt, key)
		}
		fmt.Fprintf(&servers, `  server {
    listen %s;
    server_name %s;
    %s
    access_log %s;
    location / { return 200 "upstream $server_protocol $request_method $request_uri host=$host\n"; }
    %s
  }
`, listen, srv.name, tlsConf, filepath.Join(f.dir, srv.name+".log"), srv.extra)
	}
	startNginx(t, f.dir, servers.String(), f.plainPort)

	pol := filepath.Join(f.dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - name: api
    protocol: http
    hosts: [api.test]
    port: %[1]d
    tls: intercept
    upstream_ca: %[4]s
  - name: mirror
    protocol: http
    hosts: [mirror.test]
    port: %[1]d
    tls: passthrough
  - name: impostor
    protocol: http
    hosts: [impostor.test]
    port: %[2]d
    tls: intercept
    upstream_ca: %[4]s
  - name: intranet
    protocol: http
    hosts: [intranet.test]
    port: %[3]d
masks:
  - {name: pii, columns: {"*email": redact}}
rules:
  - {name: no-admin, identity: ci-bot, target: api, http: {paths: [/admin/]}, action: deny}
  - {name: deploy-approved, identity: ci-bot, target: api, http: {methods: [GET], paths: [/deploy/]}, action: approve, approve: {reviewers: [root], timeout: 60s}}
  - {name: customers-masked, identity: ci-bot, target: api, http: {methods: [GET], paths: [/customers/]}, action: mask, mask: pii}
  - {name: api-read, identity: ci-bot, target: api, http: {methods: [GET]}, action: allow}
  - {name: mirror-ok, identity: ci-bot, target: mirror, action: allow}
  - {name: impostor-read, identity: ci-bot, target: impostor, http: {methods: [GET]}, action: allow}
  - {name: intranet-rw, identity: ci-bot, target: intranet, http: {methods: [GET, POST], paths: [/public/]}, action: allow}
`, f.tlsPort, f.badPort, f.plainPort, f.upstreamCA)), 0o644)
	f.d = daemontest.Start(t, daemontest.Options{Policy: pol})
	f.interlockCA = filepath.Join(filepath.Dir(f.d.Socket), "ca.crt")
	return f
}

// hits returns how many requests nginx served for a server name, once its
// access log has been still for 50 ms (2 s at most): nginx logs a request
// after answering it, so a client can have its answer, and exit, before
// the line is written.
func (f *httpFixture) hits(name string) int {
	count := func() int {
		b, _ := os.ReadFile(filepath.Join(f.dir, name+".log"))
		return bytes.Count(b, []byte("\n"))
	}
	n := count()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		m := count()
		if m == n {
			break
		}
		n = m
	}
	return n
}

// leafFiles writes a certificate of authority for name and its key where
// nginx reads them.
func (f *httpFixture) leafFiles(t testing.TB, authority *ca.Authority, name string) (crt, key string) {
	t.Helper()
	leaf, err := authority.Leaf(name)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	crt, key = filepath.Join(f.dir, name+".crt"), filepath.Join(f.dir, name+".key")
	os.WriteFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}), 0o644)
	os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	return crt, key
}

// curl runs the real curl as nobody under `interlock exec`, every host
// name of the test resolved to loopback, and returns its stdout, stderr
// and exit status.
func (f *httpFixture) curl(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	return runStatus(t, f.curlCommand(ctx, args...))
}

// runStatus runs cmd and returns its stdout, stderr and exit status.
func runStatus(t *testing.T, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return out.String(), errb.String(), 0
}

// replay returns `interlock replay` of the session a connection event
// names.
func (f *httpFixture) replay(t *testing.T, ev map[string]any) string {
	t.Helper()
	out, errOut, err := f.d.CLI("replay", fmt.Sprint(ev["conn"]))
	if err != nil {
		t.Fatalf("interlock replay: %v\n%s", err, errOut)
	}
	return out
}

// curlCommand is the agent's curl under `interlock exec`, as nobody.
func (f *httpFixture) curlCommand(ctx context.Context, args ...string) *exec.Cmd {
	argv := []string{"exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"curl", "-sS", "--max-time", "50"}
	for _, h := range []string{"api.test", "mirror.test", "impostor.test", "intranet.test", "evil.test"} {
		for _, p := range []int{f.tlsPort, f.badPort, f.plainPort} {
			argv = append(argv, "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", h, p))
		}
	}
	return f.d.Command(ctx, append(argv, args...)...)
}

// agentCommand runs argv as nobody under `interlock exec`, with the test's
// host names resolved to loopback by a hosts file of its own mount
// namespace, and returns its stdout, stderr and exit status.
func (f *httpFixture) agentCommand(t *testing.T, argv ...string) (string, string, int) {
	t.Helper()
	hosts := filepath.Join(f.dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 api.test mirror.test impostor.test intranet.test\n"), 0o644)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	return runStatus(t, f.d.Command(ctx, append([]string{"exec", "--identity", "ci-bot", "--", "unshare", "-m", "--", "sh", "-c",
		`mount --bind "$0" /etc/hosts && exec setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"`, hosts}, argv...)...))
}

// TestHTTPSIntercept: curl over HTTP/1.1 and HTTP/2 through interception
// with a leaf of Interlock's CA: a denied path gets 403 naming the rule,
// and the next request on the same connection goes through.
func TestHTTPSIntercept(t *testing.T) {
	f := startHTTP(t)
	for _, version := range []string{"--http1.1", "--http2"} {
		before := f.hits("api.test")
		url := fmt.Sprintf("https://api.test:%d", f.tlsPort)
		out, errOut, st := f.curl(t, version, "-v", "--cacert", f.interlockCA, "-w", "status=%{http_code}\n",
			url+"/admin/users", url+"/repos/acme?page=2")
		if st != 0 {
			t.Fatalf("%s: curl status %d\n%s\n%s", version, st, out, errOut)
		}
		if !strings.Contains(out, `"rule":"no-admin"`) || !strings.Contains(out, "status=403") {
			t.Errorf("%s: the denied path:\n%s", version, out)
		}
		// The upstream offers HTTP/2; an HTTP/1.1 agent's requests without
		// a body go over HTTP/1.1 (one connection, no switch per request).
		upstream := map[string]string{"--http1.1": "HTTP/1.1", "--http2": "HTTP/2.0"}[version]
		if !strings.Contains(out, "upstream "+upstream+" GET /repos/acme?page=2 host=api.test") || !strings.Contains(out, "status=200") {
			t.Errorf("%s: the allowed path after the denial:\n%s", version, out)
		}
		// One connection carried both, and Interlock's CA signed its leaf.
		if !strings.Contains(errOut, "Re-using existing") && !strings.Contains(errOut, "Reusing existing") {
			t.Errorf("%s: curl did not reuse its connection:\n%s", version, errOut)
		}
		if version == "--http2" && !strings.Contains(errOut, "ALPN: server accepted h2") {
			t.Errorf("--http2: interlockd did not speak h2 to curl:\n%s", errOut)
		}
		if got := f.hits("api.test") - before; got != 1 {
			t.Errorf("%s: the upstream served %d requests, want 1 (the denied one never left)", version, got)
		}
	}
	waitEvent(t, f.d, "decision", func(m map[string]any) bool { return m["rule"] == "no-admin" && m["action"] == "deny" })
	// interlock replay prints each exchange with its decision.
	closed := waitEvent(t, f.d, "connection_close", func(m map[string]any) bool { return m["target"] == "api" && m["outcome"] == "closed" })
	tr := f.replay(t, closed)
	for _, want := range []string{"GET /admin/users HTTP/", "decision: deny by rule no-admin", "interlock: HTTP/1.1 403 Forbidden", "GET /repos/acme?page=2 HTTP/", " 200 OK", "GET /repos/acme?page=2 host=api.test"} {
		if !strings.Contains(tr, want) {
			t.Errorf("replay lacks %q:\n%s", want, tr)
		}
	}
	// Without Interlock's CA, curl refuses the leaf: it is no upstream's.
	if _, _, st := f.curl(t, "--cacert", f.upstreamCA, fmt.Sprintf("https://api.test:%d/repos/acme", f.tlsPort)); st != 60 {
		t.Errorf("intercepted with the upstream's CA only: curl status %d, want 60 (peer certificate not trusted)", st)
	}
}

// TestHTTPSPolicyReplay: `interlock policy replay` decides recorded
// HTTP requests again on what the policy decides them on, read back from
// their recorded heads: method, path and query, host and headers. Under a
// policy that allows reads only with a change ticket, the reads that had
// none are newly denied, over HTTP/1.1 and HTTP/2, and the one with a
// ticket is not; the request interlockd denied stays denied.
func TestHTTPSPolicyReplay(t *testing.T) {
	f := startHTTP(t)
	url := fmt.Sprintf("https://api.test:%d", f.tlsPort)
	for _, args := range [][]string{
		{"--http1.1", url + "/repos/acme?page=2", url + "/admin/users"},
		{"--http2", url + "/repos/web"},
		{"--http2", "-H", "X-Change-Ticket: CHG-7", url + "/repos/infra"},
	} {
		if out, errOut, st := f.curl(t, append([]string{"--cacert", f.interlockCA}, args...)...); st != 0 {
			t.Fatalf("curl %v: status %d\n%s\n%s", args, st, out, errOut)
		}
	}
	pol, err := os.ReadFile(filepath.Join(f.dir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	reads := "http: {methods: [GET]}, action: allow}"
	if !strings.Contains(string(pol), "{name: api-read, identity: ci-bot, target: api, "+reads) {
		t.Fatalf("the fixture's policy changed; the stricter one is made from it:\n%s", pol)
	}
	stricter := filepath.Join(t.TempDir(), "stricter.yaml")
	os.WriteFile(stricter, []byte(strings.Replace(string(pol), reads, "http: {methods: [GET], headers: [X-Change-Ticket]}, action: allow}", 1)), 0o644)
	if got := replayedChanges(t, f.d, stricter); !slices.Equal(got, []string{
		"newly denied GET /repos/acme?page=2: allow/api-read -> deny/default-deny",
		"newly denied GET /repos/web: allow/api-read -> deny/default-deny",
	}) {
		t.Errorf("policy replay --since:\n%s", strings.Join(got, "\n"))
	}
}

// TestHTTPSDeniedUpload: a request denied while the agent is still
// sending its body gets the agent the 403, over HTTP/2 as over HTTP/1.1,
// not a failed upload: curl streaming a body it has not finished reading
// fails the transfer if the stream ends under it (git push did, now and
// then, "curl 92 Stream error in the HTTP/2 framing layer").
func TestHTTPSDeniedUpload(t *testing.T) {
	f := startHTTP(t)
	for _, version := range []string{"--http1.1", "--http2"} {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		cmd := f.curlCommand(ctx, version, "--cacert", f.interlockCA, "-X", "POST", "-T", "-", "-w", "status=%{http_code}\n",
			fmt.Sprintf("https://api.test:%d/admin/upload", f.tlsPort))
		pr, pw := io.Pipe()
		go func() {
			// The body's second half comes well after the decision.
			pw.Write(bytes.Repeat([]byte("a"), 100<<10))
			time.Sleep(time.Second)
			pw.Write(bytes.Repeat([]byte("b"), 100<<10))
			pw.Close()
		}()
		var out, errb bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = pr, &out, &errb
		err := cmd.Run()
		cancel()
		if err != nil || !strings.Contains(out.String(), "status=403") || !strings.Contains(out.String(), `"rule":"no-admin"`) {
			t.Errorf("%s: a denied upload: %v\n%s\n%s", version, err, out.String(), errb.String())
		}
	}
	// Python's requests sends the whole body before it reads an answer,
	// and asks no go-ahead: the body is read and dropped, the 403 comes,
	// and the connection carries the next request.
	script := `import sys, requests
s = requests.Session()
r = s.post(sys.argv[1] + "/admin/upload", data=b"x" * (5 << 20))
print(r.status_code, r.json()["rule"])
print(s.get(sys.argv[1] + "/repos/acme").status_code)`
	out, errOut, st := f.agentCommand(t, "/usr/bin/python3", "-c", script, fmt.Sprintf("https://api.test:%d", f.tlsPort))
	if st != 0 || out != "403 no-admin\n200\n" {
		t.Errorf("requests: a denied upload, then a request: exit %d\n%s\n%s", st, out, errOut)
	}
	if n := f.hits("api.test"); n != 1 {
		t.Errorf("the upstream served %d requests, want 1", n)
	}
	if n := len(auditEvents(f.d, "connection_open")); n != 3 {
		t.Errorf("%d connections, want 3 (one per client)", n)
	}
}

// TestHTTPSUpstreamMustVerify: an upstream whose certificate does not
// chain to the target's CA gets the agent a 502 and an audit record, and
// is never sent the request.
func TestHTTPSUpstreamMustVerify(t *testing.T) {
	f := startHTTP(t)
	out, errOut, st := f.curl(t, "--cacert", f.interlockCA, "-w", "status=%{http_code}\n", fmt.Sprintf("https://impostor.test:%d/x", f.badPort))
	if st != 0 || !strings.Contains(out, "status=502") || !strings.Contains(out, "does not verify") {
		t.Fatalf("unverified upstream: curl status %d\n%s\n%s", st, out, errOut)
	}
	if n := f.hits("impostor.test"); n != 0 {
		t.Errorf("the unverified upstream served %d requests", n)
	}
	waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
		return m["target"] == "impostor" && m["outcome"] == "upstream certificate" && strings.Contains(fmt.Sprint(m["reason"]), "certificate")
	})
}

// TestHTTPSPassthrough: a passthrough target's agent sees the upstream's
// own certificate; a server name no target has is refused before any
// upstream hears of it.
func TestHTTPSPassthrough(t *testing.T) {
	f := startHTTP(t)
	out, errOut, st := f.curl(t, "-v", "--cacert", f.upstreamCA, fmt.Sprintf("https://mirror.test:%d/pkg", f.tlsPort))
	if st != 0 || !strings.Contains(out, "upstream HTTP/2.0 GET /pkg host=mirror.test") {
		t.Fatalf("passthrough: curl status %d\n%s\n%s", st, out, errOut)
	}
	// The recording says what was relayed, and that it was not decrypted.
	closed := waitEvent(t, f.d, "connection_close", func(m map[string]any) bool { return m["target"] == "mirror" && m["outcome"] == "closed" })
	if tr := f.replay(t, closed); !strings.Contains(tr, "TLS passthrough to mirror.test, ALPN h2,http/1.1: not decrypted") {
		t.Errorf("replay of the passthrough session:\n%s", tr)
	}
	// Its byte counts are what was relayed: a TLS session each way, not
	// the recording's two notes (about a hundred bytes). The server's side
	// was 983 to 1 015 bytes in twenty runs; the bound was 1 000.
	if in, out := closed["bytes_sent"].(float64), closed["bytes_received"].(float64); in < 300 || out < 600 {
		t.Errorf("passthrough session closed with %v bytes sent and %v received, want a TLS session's: %v", in, out, closed)
	}
	// Interlock's CA does not do: the certificate is the upstream's. (After
	// the checks above: sessions' ends are logged in no set order, and this
	// one's is another passthrough session's.)
	if _, _, st := f.curl(t, "--cacert", f.interlockCA, fmt.Sprintf("https://mirror.test:%d/pkg", f.tlsPort)); st != 60 {
		t.Errorf("passthrough with Interlock's CA: curl status %d, want 60", st)
	}
	before := f.hits("api.test") + f.hits("mirror.test")
	// Refused with TLS's access_denied, which curl names, not an internal
	// error.
	if _, errOut, st := f.curl(t, "--cacert", f.upstreamCA, fmt.Sprintf("https://evil.test:%d/", f.tlsPort)); st == 0 || !strings.Contains(errOut, "alert access denied") {
		t.Errorf("a server name no target has: curl status %d\n%s", st, errOut)
	}
	// A URL with an IP address sends no server name; the two targets of
	// that address leave none to choose: refused, and the audit says why.
	if _, errOut, st := f.curl(t, "--cacert", f.upstreamCA, fmt.Sprintf("https://127.0.0.1:%d/", f.tlsPort)); st == 0 || !strings.Contains(errOut, "alert access denied") {
		t.Errorf("no server name: curl status %d\n%s", st, errOut)
	}
	if f.hits("api.test")+f.hits("mirror.test") != before {
		t.Error("the upstream heard of a refused server name")
	}
	waitEvent(t, f.d, "decision", func(m map[string]any) bool {
		return m["rule"] == "unknown-host" && m["operation"] == "CONNECT evil.test"
	})
	waitEvent(t, f.d, "decision", func(m map[string]any) bool {
		return m["rule"] == "unknown-host" && strings.Contains(fmt.Sprint(m["reason"]), "the agent sent no server name")
	})
}

// TestHTTPRecordingReserve: with the recordings' file system under its
// reserve, HTTP connections are refused in their own protocol's words
// before anything goes upstream: over TLS (intercepted or passed through)
// an internal_error alert at the ClientHello, before a leaf is minted or
// the upstream dialed; plain HTTP a 503. Once space is freed, they are
// served again.
func TestHTTPRecordingReserve(t *testing.T) {
	f := startHTTP(t)
	free := fillRecordings(t, f.d)
	before := f.hits("api.test") + f.hits("mirror.test") + f.hits("intranet.test")
	// Each with the CA its certificate would have: Interlock's for the
	// intercepted name (curl's from interlock exec), the upstream's for the
	// one passed through.
	for _, host := range []struct{ name, ca string }{{"api.test", f.interlockCA}, {"mirror.test", f.upstreamCA}} {
		if _, errOut, st := f.curl(t, "--cacert", host.ca, fmt.Sprintf("https://%s:%d/x", host.name, f.tlsPort)); st == 0 || !strings.Contains(errOut, "alert internal error") {
			t.Errorf("%s under the reserve: curl status %d\n%s", host.name, st, errOut)
		}
	}
	out, errOut, st := f.curl(t, "-w", "%{http_code}", fmt.Sprintf("http://intranet.test:%d/public/x", f.plainPort))
	if st != 0 || !strings.HasSuffix(out, "503") || !strings.Contains(out, "the session cannot be recorded") {
		t.Errorf("plain HTTP under the reserve: curl status %d %q %s", st, out, errOut)
	}
	if after := f.hits("api.test") + f.hits("mirror.test") + f.hits("intranet.test"); after != before {
		t.Errorf("%d requests reached the upstreams while recordings were stopped", after-before)
	}
	for _, target := range []string{"api", "mirror", "intranet"} {
		waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
			return m["target"] == target && m["outcome"] == "recording unavailable" && strings.Contains(fmt.Sprint(m["reason"]), "kept free")
		})
	}
	free()
	if out, errOut, st := f.curl(t, fmt.Sprintf("https://api.test:%d/x", f.tlsPort)); st != 0 || !strings.Contains(out, " GET /x host=api.test") {
		t.Fatalf("intercepted once space was freed: curl status %d %q %s", st, out, errOut)
	}
}

// TestHTTPSmuggling: requests that two parsers would frame two ways get
// 400 from interlockd and reach nothing.
func TestHTTPSmuggling(t *testing.T) {
	f := startHTTP(t)
	out, errOut, st := f.curl(t, "-w", "status=%{http_code}\n", fmt.Sprintf("http://intranet.test:%d/public/x", f.plainPort))
	if st != 0 || !strings.Contains(out, "upstream HTTP/1.1 GET /public/x host=intranet.test") {
		t.Fatalf("plain request: curl status %d\n%s\n%s", st, out, errOut)
	}
	before := f.hits("intranet.test")
	for _, raw := range []string{
		// CL.TE: the second request hides in what the front end takes for a body.
		"POST /public/x HTTP/1.1\r\nHost: intranet.test\r\nContent-Length: 49\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /private HTTP/1.1\r\nHost: intranet.test\r\n\r\n",
		// TE.CL.
		"POST /public/x HTTP/1.1\r\nHost: intranet.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2c\r\nGET /private HTTP/1.1\r\nHost: intranet.test\r\n\r\n\r\n0\r\n\r\n",
		// Two lengths, an obfuscated encoding, a folded header.
		"POST /public/x HTTP/1.1\r\nHost: intranet.test\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /private HTTP/1.1\r\nHost: intranet.test\r\n\r\n",
		"POST /public/x HTTP/1.1\r\nHost: intranet.test\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\n",
		"GET /public/x HTTP/1.1\r\nHost: intranet.test\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n",
	} {
		script := fmt.Sprintf(`exec 3<>/dev/tcp/127.0.0.1/%d; printf %%s "$1" >&3; timeout 5 cat <&3`, f.plainPort)
		cmd := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
			"bash", "-c", script, "smuggle", raw)
		got, _ := cmd.CombinedOutput()
		if !strings.HasPrefix(string(got), "HTTP/1.1 400 ") || strings.Count(string(got), "HTTP/1.1") != 1 {
			t.Errorf("%q: got\n%s", raw, got)
		}
	}
	if n := f.hits("intranet.test") - before; n != 0 {
		t.Errorf("the upstream served %d smuggled requests", n)
	}
}

// TestHTTPSMask: a masked JSON field arrives masked in a gzip-encoded,
// chunked response, over HTTP/1.1 and HTTP/2, with the encoding kept.
func TestHTTPSMask(t *testing.T) {
	f := startHTTP(t)
	for _, version := range []string{"--http1.1", "--http2"} {
		out, errOut, st := f.curl(t, version, "--compressed", "-D", "-", "--cacert", f.interlockCA, fmt.Sprintf("https://api.test:%d/customers/7", f.tlsPort))
		if st != 0 || strings.Contains(out, "ann@example.com") || !strings.Contains(out, `"name":"Ann"`) || !strings.Contains(out, `"id":7`) {
			t.Fatalf("%s: curl status %d\n%s\n%s", version, st, out, errOut)
		}
		if !strings.Contains(strings.ToLower(out), "content-encoding: gzip") {
			t.Errorf("%s: the gzip encoding was not kept:\n%s", version, out)
		}
	}
	// Without interlock nginx gzips the document and chunks it: the
	// masking above undid and redid both.
	out, _ := exec.Command("curl", "-sS", "--http1.1", "-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip", "--cacert", f.upstreamCA,
		"--resolve", fmt.Sprintf("api.test:%d:127.0.0.1", f.tlsPort), fmt.Sprintf("https://api.test:%d/customers/7", f.tlsPort)).CombinedOutput()
	if low := strings.ToLower(string(out)); !strings.Contains(low, "transfer-encoding: chunked") || !strings.Contains(low, "content-encoding: gzip") {
		t.Errorf("nginx's own answer is not gzip and chunked:\n%s", out)
	}
}

// TestHTTPSRelayLargeAnswers: curl over HTTP/2 takes four large answers
// from nginx at once, on one connection relayed frame by frame, each
// whole: the relay's flow control against a real server and client, with
// four times its windows in flight.
func TestHTTPSRelayLargeAnswers(t *testing.T) {
	f := startHTTP(t)
	big := make([]byte, 12<<20)
	rand.Read(big)
	if err := os.WriteFile(filepath.Join(f.dir, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	outDir := filepath.Join(f.dir, "out")
	if err := os.Mkdir(outDir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(outDir, 0o777)
	url := fmt.Sprintf("https://api.test:%d/big.bin", f.tlsPort)
	args := []string{"--http2", "--parallel", "--parallel-max", "4", "-sS", "--cacert", f.interlockCA, "-w", "%{http_version} %{http_code}\n"}
	for i := range 4 {
		args = append(args, "-o", filepath.Join(outDir, strconv.Itoa(i)), url)
	}
	out, errOut, st := f.curl(t, args...)
	if st != 0 || strings.Count(out, "2 200") != 4 {
		t.Fatalf("curl status %d:\n%s\n%s", st, out, errOut)
	}
	for i := range 4 {
		if got, _ := os.ReadFile(filepath.Join(outDir, strconv.Itoa(i))); !bytes.Equal(got, big) {
			t.Errorf("answer %d: %d bytes, not the %d served", i, len(got), len(big))
		}
	}
	if n := f.hits("api.test"); n != 4 {
		t.Errorf("nginx served %d requests, want 4", n)
	}
}

// TestHTTPSKeptUpstreamHTTP2: curl run twice over HTTP/2, as an agent's
// commands run, reaches nginx over one connection the second time too:
// the relay's upstream connection is kept for the identity's next
// connection.
func TestHTTPSKeptUpstreamHTTP2(t *testing.T) {
	f := startHTTP(t)
	url := fmt.Sprintf("https://api.test:%d/connection", f.tlsPort)
	var conns []string
	for i := range 2 {
		if i > 0 {
			// The first connection's end reaches interlockd after curl
			// exits.
			time.Sleep(200 * time.Millisecond)
		}
		out, errOut, st := f.curl(t, "--http2", "-sS", "--cacert", f.interlockCA, "-w", " %{http_version}", url)
		if fields := strings.Fields(out); st != 0 || len(fields) != 2 || fields[1] != "2" {
			t.Fatalf("curl status %d: %q %s", st, out, errOut)
		}
		conns = append(conns, strings.Fields(out)[0])
	}
	if conns[0] != conns[1] {
		t.Fatalf("nginx saw connections %s and %s, want one", conns[0], conns[1])
	}
}

// TestHTTPSHeldStream: a request held for approval waits while another
// stream of the same HTTP/2 connection completes; approved, it goes
// through.
func TestHTTPSHeldStream(t *testing.T) {
	f := startHTTP(t)
	url := fmt.Sprintf("https://api.test:%d", f.tlsPort)
	// curl, as nobody, writes each answer to its own file once it has it.
	outDir := filepath.Join(f.dir, "out")
	if err := os.Mkdir(outDir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(outDir, 0o777)
	held, fast := filepath.Join(outDir, "held"), filepath.Join(outDir, "fast")
	cmd := f.curlCommand(t.Context(), "--http2", "--parallel", "--cacert", f.interlockCA, "-o", held, "-o", fast,
		"-w", "%{url_effective} %{http_code}\n", url+"/deploy/web", url+"/repos/acme")
	var stdout, stderr daemontest.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pending []struct{ ID, Statement string }
	waitFor(t, "the held request's approval", func() bool {
		out, _, err := f.d.CLI("approvals", "--json")
		return err == nil && json.Unmarshal([]byte(out), &pending) == nil && len(pending) > 0
	})
	if pending[0].Statement != "/deploy/web" {
		t.Fatalf("pending approval: %+v", pending[0])
	}
	waitFor(t, "the other stream to complete while one is held", func() bool {
		b, _ := os.ReadFile(fast)
		return strings.Contains(string(b), "upstream HTTP/2.0 GET /repos/acme")
	})
	if b, _ := os.ReadFile(held); len(b) != 0 {
		t.Fatalf("the held request was answered before its approval: %q", b)
	}
	if out, errOut, err := f.d.CLI("approve", pending[0].ID, "--comment", "fine"); err != nil {
		t.Fatalf("approve: %v\n%s%s", err, out, errOut)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("curl: %v\n%s", err, stderr.String())
	}
	if b, _ := os.ReadFile(held); !strings.Contains(string(b), "upstream HTTP/2.0 GET /deploy/web") || !strings.Contains(stdout.String(), url+"/deploy/web 200") {
		t.Errorf("the approved request: %q, curl: %s", b, stdout.String())
	}
	// Both streams rode one connection: one connection was decided.
	n := 0
	for _, e := range auditEvents(f.d, "connection_open") {
		if e["comm"] == "curl" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("curl opened %d connections, want 1", n)
	}
}
