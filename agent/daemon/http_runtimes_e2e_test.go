package daemon_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// runtimesFixture is interlockd intercepting HTTPS to nginx on loopback,
// which serves api.test (a plain answer naming the request) and git.test
// (git's http-backend through fcgiwrap), both with certificates of a test
// CA the policy names as upstream_ca. The agents' names resolve through
// interlockd's DNS relay to a test resolver, so the clients are given
// nothing but what `interlock exec` sets.
type runtimesFixture struct {
	d    *daemontest.Daemon
	dir  string
	port int
	// repos is git's project root; home a HOME nobody can write.
	repos, home string
}

// runtimesPolicy: pushes to protected.git and /admin/ are denied, the
// rest of forge allowed.
const runtimesPolicy = `version: 1
identities: [{name: ci-bot}]
targets:
  - name: forge
    protocol: http
    hosts: [api.test, git.test]
    port: %d
    tls: intercept
    upstream_ca: %s
rules:
  - {name: no-admin, identity: ci-bot, target: forge, http: {paths: [/admin/]}, action: deny}
  - {name: protected-push, identity: ci-bot, target: forge, http: {paths: [/git/protected.git/git-receive-pack]}, action: deny}
  - {name: forge-rw, identity: ci-bot, target: forge, action: allow}
`

func startRuntimes(t *testing.T) *runtimesFixture {
	testenv.Privileged(t)
	for _, bin := range []string{"nginx", "fcgiwrap", "git", "/usr/bin/python3", "/usr/bin/node", "/usr/lib/git-core/git-http-backend"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Unavailable(t, "no %s (make deps): %v", bin, err)
		}
	}
	if err := exec.Command("/usr/bin/python3", "-c", "import requests").Run(); err != nil {
		testenv.Unavailable(t, "no requests for /usr/bin/python3 (apt-get install python3-requests): %v", err)
	}
	f := &runtimesFixture{dir: t.TempDir(), port: testenv.FreePort(t)}
	for p := f.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.repos, f.home = filepath.Join(f.dir, "repos"), filepath.Join(f.dir, "home")
	if err := os.MkdirAll(f.home, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(f.home, 0o777)
	// Two bare repositories with one commit each, served read-write.
	seed := filepath.Join(f.dir, "seed")
	git(t, "", "init", "-q", "-b", "main", seed)
	os.WriteFile(filepath.Join(seed, "README"), []byte("seed\n"), 0o644)
	git(t, seed, "add", "README")
	git(t, seed, "commit", "-q", "-m", "seed")
	for _, name := range []string{"repo.git", "protected.git"} {
		bare := filepath.Join(f.repos, name)
		git(t, "", "clone", "-q", "--bare", seed, bare)
		git(t, bare, "config", "http.receivepack", "true")
	}

	public, err := ca.Open(ca.Config{Dir: filepath.Join(f.dir, "public-ca"), PublicCert: filepath.Join(f.dir, "upstream-ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	leaves := &httpFixture{dir: f.dir}
	sock := filepath.Join(f.dir, "fcgiwrap.sock")
	// One fcgiwrap serves git's requests one at a time, as a client makes
	// them; in its own process group so that the backends it forks end
	// with it.
	fcgi := exec.Command("fcgiwrap", "-s", "unix:"+sock)
	fcgiOut := &daemontest.Buffer{}
	fcgi.Stdout, fcgi.Stderr = fcgiOut, fcgiOut
	fcgi.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fcgi.WaitDelay = 5 * time.Second
	if err := fcgi.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-fcgi.Process.Pid, syscall.SIGKILL)
		fcgi.Wait()
		if t.Failed() {
			t.Logf("fcgiwrap:\n%s", fcgiOut.String())
		}
	})
	var servers strings.Builder
	for _, name := range []string{"api.test", "git.test"} {
		crt, key := leaves.leafFiles(t, public, name)
		fmt.Fprintf(&servers, `  server {
    listen 127.0.0.1:%[1]d ssl http2;
    server_name %[2]s;
    ssl_certificate %[3]s;
    ssl_certificate_key %[4]s;
    access_log %[5]s/%[2]s.log;
    location / { return 200 "upstream $server_protocol $request_method $request_uri host=$host\n"; }
    location ~ ^/git(/.*)$ {
      client_max_body_size 0;
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:%[6]s;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT %[7]s;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $1;
    }
  }
`, f.port, name, crt, key, f.dir, sock, f.repos)
	}
	startNginx(t, f.dir, servers.String(), f.port)

	res := startResolver(t)
	res.answer("api.test.", "127.0.0.1")
	res.answer("git.test.", "127.0.0.1")
	pol, conf := filepath.Join(f.dir, "policy.yaml"), filepath.Join(f.dir, "interlockd.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(runtimesPolicy, f.port, public.PublicCertPath())), 0o644)
	os.WriteFile(conf, []byte(fmt.Sprintf("dns_resolvers: [%q]\n", res.addr)), 0o644)
	f.d = daemontest.Start(t, daemontest.Options{Policy: pol, Config: conf})
	return f
}

// startNginx runs nginx in the foreground with the server blocks given,
// its files under dir, until the test ends, and waits for port.
func startNginx(t testing.TB, dir, servers string, port int) {
	t.Helper()
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log;
events {}
http {
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  default_type text/plain;
%[2]s}
`, dir, servers)), 0o644)
	nginx := exec.Command("nginx", "-c", conf, "-e", filepath.Join(dir, "nginx-error.log"))
	out := &daemontest.Buffer{}
	nginx.Stdout, nginx.Stderr = out, out
	if err := nginx.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		nginx.Process.Kill()
		nginx.Wait()
		if t.Failed() {
			errLog, _ := os.ReadFile(filepath.Join(dir, "nginx-error.log"))
			t.Logf("nginx:\n%s\n%s", out.String(), errLog)
		}
	})
	waitFor(t, "nginx to listen", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// git runs git as root (the servers' side) in dir.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=seed", "GIT_AUTHOR_EMAIL=seed@test", "GIT_COMMITTER_NAME=seed", "GIT_COMMITTER_EMAIL=seed@test",
		"GIT_CONFIG_NOSYSTEM=1", "HOME="+os.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// agent runs argv as nobody under `interlock exec` in dir, with only the
// environment a CI job would have (no CA, proxy or resolver settings of
// its own), and returns its combined output and exit status.
func (f *runtimesFixture) agent(t *testing.T, dir string, argv ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	args := append([]string{"exec", "--identity", "ci-bot", "--"}, unprivileged...)
	cmd := f.d.Command(ctx, append(args, argv...)...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + f.home, "LANG=C.UTF-8",
		"GIT_AUTHOR_NAME=agent", "GIT_AUTHOR_EMAIL=agent@test", "GIT_COMMITTER_NAME=agent", "GIT_COMMITTER_EMAIL=agent@test"}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return out.String(), 0
}

// connections counts the connections a command opened.
func connections(d *daemontest.Daemon, comm string) int {
	n := 0
	for _, e := range auditEvents(d, "connection_open") {
		if e["comm"] == comm {
			n++
		}
	}
	return n
}

const pythonRequests = `
import sys, requests
s = requests.Session()
for method, path in [("GET", "/admin/users"), ("POST", "/repos/acme/issues")]:
    r = s.request(method, sys.argv[1] + path, json={"title": "t"})
    print(r.status_code, r.text.strip())
`

const nodeFetch = `
(async () => {
  for (const [method, path] of [["GET", "/admin/users"], ["POST", "/repos/acme/issues"]]) {
    const r = await fetch(process.argv[1] + path, {method, body: method === "POST" ? '{"title":"t"}' : undefined});
    console.log(r.status, (await r.text()).trim());
  }
})().catch(e => { console.log(String(e), e.cause); process.exit(1); });
`

// TestHTTPSRuntimes: Python requests, Node fetch and git over HTTPS, each
// run as is under `interlock exec`: names resolve through interlockd,
// Interlock's leaf verifies with the CA variables exec sets, a denied path
// gets 403 naming the rule and the next request on the same connection
// goes through, and git clones and pushes (a denied push is refused).
func TestHTTPSRuntimes(t *testing.T) {
	f := startRuntimes(t)
	api := fmt.Sprintf("https://api.test:%d", f.port)
	for _, rt := range []struct{ name, comm string }{
		{"python requests", "python3"},
		{"node fetch", "node"},
	} {
		t.Run(rt.name, func(t *testing.T) {
			argv := []string{"/usr/bin/python3", "-c", pythonRequests, api}
			if rt.comm == "node" {
				argv = []string{"/usr/bin/node", "-e", nodeFetch, api}
			}
			out, st := f.agent(t, f.home, argv...)
			if st != 0 {
				t.Fatalf("exit %d:\n%s", st, out)
			}
			if !strings.Contains(out, `403 {"error":`) || !strings.Contains(out, `"rule":"no-admin"`) {
				t.Errorf("the denied path:\n%s", out)
			}
			if !strings.Contains(out, "200 upstream HTTP/2.0 POST /repos/acme/issues host=api.test") {
				t.Errorf("the allowed request after the denial:\n%s", out)
			}
			// requests keeps one connection; undici's pool may open a
			// second while the first is still being released.
			if n := connections(f.d, rt.comm); rt.comm == "python3" && n != 1 {
				t.Errorf("%s opened %d connections, want 1", rt.comm, n)
			}
		})
	}

	// The Python session exported as pcap is HTTP that tshark decodes: the
	// denied request with interlockd's 403, the POST with its JSON body
	// and the upstream's answer.
	closed := waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
		open := auditEvents(f.d, "connection_open")
		for _, o := range open {
			if o["conn"] == m["conn"] && o["comm"] == "python3" {
				return true
			}
		}
		return false
	})
	pcap := filepath.Join(f.dir, "python.pcap")
	if out, stderr, err := f.d.CLI("export", fmt.Sprint(closed["conn"]), "--pcap", pcap); err != nil {
		t.Fatalf("export: %v\n%s%s", err, out, stderr)
	}
	ts, err := exec.Command("tshark", "-r", pcap, "-Y", "http", "-T", "fields", "-e", "http.request.method", "-e", "http.request.uri",
		"-e", "http.response.code", "-e", "http.file_data").Output()
	lines := strings.Split(strings.TrimSpace(string(ts)), "\n")
	if err != nil || len(lines) != 4 || !strings.HasPrefix(lines[0], "GET\t/admin/users\t\t") || !strings.HasPrefix(lines[1], "\t\t403\t") ||
		!strings.Contains(lines[1], "no-admin") || !strings.HasPrefix(lines[2], "POST\t/repos/acme/issues\t\t") || !strings.Contains(lines[2], "title") ||
		!strings.Contains(lines[3], "200\t") || !strings.Contains(lines[3], "upstream HTTP/2.0 POST") {
		t.Errorf("tshark on the exported Python session: %v\n%s", err, ts)
	}
	// policy replay decides the export as it would a plain-HTTP capture.
	replayed, stderr, err := f.d.CLI("policy", "replay", "--policy", filepath.Join(f.dir, "policy.yaml"), "--pcap", pcap, "--identity", "ci-bot")
	if err != nil || !strings.Contains(replayed, "[forge] deny by no-admin: GET /admin/users\n") || !strings.Contains(replayed, "[forge] allow by forge-rw: POST /repos/acme/issues\n") {
		t.Errorf("policy replay of the export: %v %s\n%s", err, stderr, replayed)
	}

	work := filepath.Join(f.home, "work")
	repo := fmt.Sprintf("https://git.test:%d/git/repo.git", f.port)
	if out, st := f.agent(t, f.home, "git", "clone", repo, work); st != 0 {
		t.Fatalf("git clone: exit %d\n%s", st, out)
	}
	if b, err := os.ReadFile(filepath.Join(work, "README")); err != nil || string(b) != "seed\n" {
		t.Fatalf("the clone's README: %q %v", b, err)
	}
	os.WriteFile(filepath.Join(work, "CHANGES"), []byte("pushed through interlock\n"), 0o666)
	for _, argv := range [][]string{{"git", "add", "CHANGES"}, {"git", "commit", "-q", "-m", "agent change"}} {
		if out, st := f.agent(t, work, argv...); st != 0 {
			t.Fatalf("%v: exit %d\n%s", argv, st, out)
		}
	}
	if out, st := f.agent(t, work, "git", "push", "origin", "main"); st != 0 {
		t.Fatalf("git push: exit %d\n%s", st, out)
	}
	if got := git(t, filepath.Join(f.repos, "repo.git"), "log", "-1", "--format=%s", "main"); got != "agent change" {
		t.Errorf("the upstream's main after the push: %q", got)
	}
	out, st := f.agent(t, work, "git", "push", fmt.Sprintf("https://git.test:%d/git/protected.git", f.port), "main")
	if st == 0 || !strings.Contains(out, "403") {
		t.Errorf("a push the policy denies: exit %d\n%s", st, out)
	}
	if got := git(t, filepath.Join(f.repos, "protected.git"), "log", "-1", "--format=%s", "main"); got != "seed" {
		t.Errorf("the protected repository's main: %q", got)
	}
	waitEvent(t, f.d, "decision", func(m map[string]any) bool { return m["rule"] == "protected-push" && m["action"] == "deny" })
}
