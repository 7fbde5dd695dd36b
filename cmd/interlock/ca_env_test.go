package main

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/testenv"
)

func TestWithCAVars(t *testing.T) {
	env := []string{"PATH=/usr/bin", "PGSSLROOTCERT=/etc/pg-ca.pem", "CURL_CA_BUNDLE=/etc/mine.pem",
		"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", "GIT_SSL_CAINFO="}
	got, replaced := withCAVars(env, caVars("/run/interlock/ca.crt", "/run/interlock/ca-bundle.crt"))
	want := []string{"PATH=/usr/bin", "PGSSLROOTCERT=/etc/pg-ca.pem", // a verify-full client's own CA is kept
		"SSL_CERT_FILE=/run/interlock/ca-bundle.crt",
		"REQUESTS_CA_BUNDLE=/run/interlock/ca-bundle.crt",
		"CURL_CA_BUNDLE=/run/interlock/ca-bundle.crt",
		"NODE_EXTRA_CA_CERTS=/run/interlock/ca.crt",
		"GIT_SSL_CAINFO=/run/interlock/ca-bundle.crt",
		"AWS_CA_BUNDLE=/run/interlock/ca-bundle.crt"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("env:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The system roots are in the bundle: replacing them needs no word.
	if strings.Join(replaced, ",") != "CURL_CA_BUNDLE=/etc/mine.pem" {
		t.Errorf("replaced %v, want [CURL_CA_BUNDLE=/etc/mine.pem]", replaced)
	}
}

// TestCAEnvRealClients has curl, Python requests, Node's fetch and git
// verify an HTTPS server on loopback whose certificate Interlock's CA
// signed, each given nothing but the variables interlock exec sets: and,
// without them, refuse it.
func TestCAEnvRealClients(t *testing.T) {
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	a, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"),
		PublicCert: filepath.Join(run, "ca.crt"), PublicBundle: filepath.Join(run, "ca-bundle.crt")})
	if err != nil {
		t.Fatal(err)
	}
	gitExec, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		testenv.Unavailable(t, "git not installed: %v", err)
		return
	}
	repos := filepath.Join(dir, "repos")
	if out, err := exec.Command("git", "init", "-q", "--bare", filepath.Join(repos, "app.git")).CombinedOutput(); err != nil {
		t.Fatalf("git init: %v\n%s", err, out)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "interlock-ok\n") })
	mux.Handle("/git/", &cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(gitExec)), "git-http-backend"), Root: "/git",
		Env: []string{"GIT_PROJECT_ROOT=" + repos, "GIT_HTTP_EXPORT_ALL=1"}})
	leaf, err := a.Leaf("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*leaf}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refusals below are expected
	srv.StartTLS()
	defer srv.Close()
	url := srv.URL // https://127.0.0.1:PORT

	home := t.TempDir()
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home}
	withCA, _ := withCAVars(base, caVars(a.PublicCertPath(), a.PublicBundlePath()))
	clients := []struct {
		name string
		argv []string
		want string
	}{
		{"curl", []string{"curl", "-sS", "--fail", url}, "interlock-ok"},
		{"python-requests", []string{"python3", "-c", "import requests, sys; print(requests.get(sys.argv[1]).text)", url}, "interlock-ok"},
		{"node-fetch", []string{"node", "-e", "fetch(process.argv[1]).then(r => r.text()).then(t => process.stdout.write(t), e => { console.error(e.cause || e); process.exit(1) })", url}, "interlock-ok"},
		{"git", []string{"git", "ls-remote", url + "/git/app.git"}, ""},
	}
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			if _, err := exec.LookPath(c.argv[0]); err != nil {
				testenv.Unavailable(t, "%s not installed", c.argv[0])
				return
			}
			cmd := exec.Command(c.argv[0], c.argv[1:]...)
			cmd.Env = withCA
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), c.want) {
				t.Fatalf("%s with the CA variables: %v\n%s", c.name, err, out)
			}
			// Without them the same client refuses the server: the
			// variables, not some host-wide trust, made it pass.
			cmd = exec.Command(c.argv[0], c.argv[1:]...)
			cmd.Env = base
			if out, err := cmd.CombinedOutput(); err == nil {
				t.Fatalf("%s trusted Interlock's CA without the variables:\n%s", c.name, out)
			}
		})
	}
}

// TestCAInstall installs the certificate where update-ca-certificates takes
// it from and removes it again, each time rebuilding the store.
func TestCAInstall(t *testing.T) {
	state := t.TempDir()
	a, err := ca.Open(ca.Config{Dir: ca.Dir(state)})
	if err != nil {
		t.Fatal(err)
	}
	trust := filepath.Join(t.TempDir(), "ca-certificates")
	runs := filepath.Join(t.TempDir(), "runs")
	updateCACertificates = []string{"sh", "-c", "echo run >> " + runs}
	defer func() { updateCACertificates = []string{"update-ca-certificates"} }()
	// interlockd is down: the certificate comes from the state directory.
	c := control.NewClient(filepath.Join(t.TempDir(), "interlock.sock"))
	var out strings.Builder
	if err := caInstall(t.Context(), c, state, trust, &out); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(trust, "interlock.crt"))
	if err != nil || string(got) != string(a.CertificatePEM()) {
		t.Fatalf("installed %q, %v; want the CA certificate", got, err)
	}
	if err := caUninstall(t.Context(), trust, &out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(trust, "interlock.crt")); !os.IsNotExist(err) {
		t.Fatalf("certificate still installed: %v", err)
	}
	if r, _ := os.ReadFile(runs); string(r) != "run\nrun\n" {
		t.Errorf("update-ca-certificates ran %q, want twice", r)
	}
	// Removing what is not there changes nothing.
	if err := caUninstall(t.Context(), trust, &out); err != nil {
		t.Fatal(err)
	}
	if r, _ := os.ReadFile(runs); string(r) != "run\nrun\n" {
		t.Errorf("update-ca-certificates ran for nothing: %q", r)
	}
}
