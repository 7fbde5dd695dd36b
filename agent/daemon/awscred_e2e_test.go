package daemon_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/agent/testenv/s3server"
)

// s3Host is the S3 endpoint's name; its region and service are what
// interlockd signs for when the agent sends no signature.
const s3Host = "s3.eu-west-1.amazonaws.test"

// awsFixture is interlockd with Vault's AWS engine (the in-tree test
// server) in front of an S3 test server on loopback that verifies SigV4
// with its own implementation and knows only the keys Vault minted.
type awsFixture struct {
	d     *daemontest.Daemon
	dir   string
	s3    *s3server.Server
	port  int
	vault *vaultcompat.Server
	hosts string // an /etc/hosts naming s3Host for the agent
}

func startAWS(t *testing.T) *awsFixture {
	testenv.Privileged(t)
	for _, bin := range []string{"aws", "unshare", "curl"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Unavailable(t, "no %s (apt-get install awscli util-linux curl): %v", bin, err)
		}
	}
	f := &awsFixture{dir: t.TempDir(), s3: s3server.New(), port: testenv.FreePort(t)}
	for p := f.dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755)
	}
	upstreamCA := filepath.Join(f.dir, "upstream-ca.crt")
	public, err := ca.Open(ca.Config{Dir: filepath.Join(f.dir, "public-ca"), PublicCert: upstreamCA})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", f.port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: f.s3, TLSConfig: &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return public.Leaf(h.ServerName)
	}}}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	f.vault, err = vaultcompat.New(vaultcompat.Config{AWS: &vaultcompat.AWS{
		Roles: map[string]vaultcompat.AWSRole{"s3-rw": {DefaultTTL: time.Minute}}, Keys: f.s3}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.vault.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.vault.Close() })
	tokenFile := filepath.Join(f.dir, "vault-token")
	os.WriteFile(tokenFile, []byte(f.vault.RootToken()), 0o600)
	cfg := filepath.Join(f.dir, "interlockd.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("credentials:\n  vault:\n    address: %s\n    timeout: 3s\n    auth: {method: token, token_file: %s}\n",
		f.vault.URL(), tokenFile)), 0o600)
	pol := filepath.Join(f.dir, "policy.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - name: s3
    protocol: http
    hosts: [%s]
    port: %d
    tls: intercept
    upstream_ca: %s
    credential: {source: vault, kind: aws, role: s3-rw}
rules:
  - {name: s3-any, identity: ci-bot, target: s3, http: {methods: [GET, HEAD, PUT, POST, DELETE]}, action: allow}
`, s3Host, f.port, upstreamCA)), 0o644)
	f.hosts = filepath.Join(f.dir, "hosts")
	os.WriteFile(f.hosts, []byte("127.0.0.1 localhost "+s3Host+"\n"), 0o644)
	os.MkdirAll(filepath.Join(f.dir, "home"), 0o777)
	os.Chmod(filepath.Join(f.dir, "home"), 0o777)
	f.d = daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	return f
}

// agent runs a shell script as nobody under `interlock exec`, in a mount
// namespace whose /etc/hosts names s3Host, with no AWS credential in its
// environment; it returns the output and the exit status.
func (f *awsFixture) agent(ctx context.Context, t *testing.T, script string) *exec.Cmd {
	cmd := f.d.Command(ctx, "exec", "--identity", "ci-bot", "--", "unshare", "-m", "sh", "-c",
		`mount --bind "$HOSTS_FILE" /etc/hosts && exec setpriv --reuid=65534 --regid=65534 --clear-groups -- sh -c "$AGENT_SCRIPT"`)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "AWS_") && !strings.HasPrefix(e, "HOME=") {
			env = append(env, e)
		}
	}
	cmd.Env = append(env, "HOSTS_FILE="+f.hosts, "AGENT_SCRIPT="+script, "HOME="+filepath.Join(f.dir, "home"),
		"AWS_DEFAULT_REGION=eu-west-1", "AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=")
	return cmd
}

// TestAWSCLIThroughInterlock: the real aws CLI, with no credential at
// all (--no-sign-request), creates a bucket, copies a file in and lists
// it (and lists it again signing with dummy keys) through interlockd, which signs each request with keys Vault minted
// for that session; the S3 server verified them. After the sessions the
// keys are revoked: a request recorded with one fails when replayed.
func TestAWSCLIThroughInterlock(t *testing.T) {
	f := startAWS(t)
	ctx, cancel := context.WithTimeout(t.Context(), 120*time.Second)
	defer cancel()
	file := filepath.Join(f.dir, "report.txt")
	os.WriteFile(file, []byte("quarterly numbers\n"), 0o644)
	endpoint := fmt.Sprintf("https://%s:%d", s3Host, f.port)
	script := fmt.Sprintf(`set -e
aws --no-sign-request --endpoint-url %[1]s s3 mb s3://reports
aws --no-sign-request --endpoint-url %[1]s s3 cp %[2]s s3://reports/q3/report.txt
aws --no-sign-request --endpoint-url %[1]s s3 ls s3://reports/q3/
aws --no-sign-request --endpoint-url %[1]s s3 cp s3://reports/q3/report.txt -
AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=dummy aws --endpoint-url %[1]s s3 ls s3://reports/q3/ | sed 's/^/dummy-keys: /'`, endpoint, file)
	out, err := f.agent(ctx, t, script).CombinedOutput()
	if err != nil {
		t.Fatalf("aws: %v\n%s\n%s", err, out, f.d.Logs())
	}
	if !strings.Contains(string(out), "report.txt") || !strings.Contains(string(out), "quarterly numbers") || !strings.Contains(string(out), "dummy-keys: ") {
		t.Errorf("aws output:\n%s", out)
	}
	seen := f.s3.Seen()
	if len(seen) < 5 || seen["AKIAIOSFODNN7EXAMPLE"] != 0 {
		t.Errorf("the S3 server saw %d session keys for 5 commands: %v", len(seen), seen)
	}
	// Each session's lease is revoked at its end, and its key with it.
	waitFor(t, "the sessions' leases to be revoked", func() bool { return len(f.vault.Leases()) == 0 })
	replayed := 0
	for id := range seen {
		if !strings.HasPrefix(id, "AKIA") {
			t.Errorf("key %q is not Vault's", id)
		}
		last := f.s3.Last(id)
		if last == nil {
			continue
		}
		replayed++
		// A replay of what the session sent, byte for byte.
		replay, _ := http.NewRequest(last.Method, endpoint+last.URL.RequestURI(), nil)
		replay.Header = last.Header.Clone()
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", f.port))
			}}}
		resp, err := client.Do(replay)
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		body.ReadFrom(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body.String(), "InvalidAccessKeyId") {
			t.Errorf("replay with revoked key %s: %d %s", id, resp.StatusCode, body.String())
		}
	}
	if replayed == 0 {
		t.Error("no request was recorded to replay")
	}
}

// TestAWSLeaseRevokedAfterKill: interlockd killed with SIGKILL while a
// session holds AWS keys; at restart the lease is revoked before it
// serves, and the S3 server no longer takes the key.
func TestAWSLeaseRevokedAfterKill(t *testing.T) {
	f := startAWS(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// An upload that streams (UNSIGNED-PAYLOAD) from a pipe the test holds
	// open: the session has its keys and is not over.
	cmd := f.agent(ctx, t, fmt.Sprintf(`curl -sS -X PUT -T - -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' https://%s:%d/held/object`, s3Host, f.port))
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	fmt.Fprint(stdin, "first part")
	// Once S3 has seen the key the session signs with, its lease is
	// journaled (before the first use; Vault had issued it a moment
	// before, and that moment is covered only by the lease's TTL).
	waitFor(t, "the session's key at S3", func() bool { return len(f.s3.Seen()) == 1 && len(f.vault.Leases()) == 1 })
	lease := f.vault.Leases()[0]
	f.d.Kill()
	if got := f.vault.Leases(); len(got) != 1 || got[0] != lease {
		t.Fatalf("leases after SIGKILL: %v", got)
	}
	f.d.Restart()
	if got := f.vault.Leases(); len(got) != 0 {
		t.Fatalf("lease %v survived the restart\n%s", got, f.d.Logs())
	}
}

// TestAWSChunkedUploadThroughInterlock: an aws-chunked upload
// (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) signed with dummy keys, head and
// chunks, goes through interlockd re-signed with the session's keys: the
// S3 server checked the seed and every chunk's signature against the key
// Vault minted, and stored the decoded object. So does one of unsigned
// chunks with a checksum trailer (STREAMING-UNSIGNED-PAYLOAD-TRAILER),
// its head re-signed. A body whose framing is broken is refused with 400
// and audited, and nothing of it is stored.
func TestAWSChunkedUploadThroughInterlock(t *testing.T) {
	f := startAWS(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	endpoint := fmt.Sprintf("https://%s:%d", s3Host, f.port)
	var chunks [][]byte
	var object []byte
	for i := range 4 {
		chunks = append(chunks, bytes.Repeat([]byte{'a' + byte(i)}, 64<<10))
		object = append(object, chunks[i]...)
	}
	chunks = append(chunks, []byte("the last, short chunk\n"))
	object = append(object, chunks[4]...)
	signed := func(req *http.Request) ([]byte, error) {
		return s3server.SignChunked(req, "AKIAIOSFODNN7EXAMPLE", "dummy", "eu-west-1", time.Now(), chunks...)
	}
	// curl sends the head and body an SDK would, as the agent built them.
	upload := func(name string, sign func(*http.Request) ([]byte, error), edit func([]byte)) string {
		req, _ := http.NewRequest("PUT", endpoint+"/chunked/"+name, nil)
		body, err := sign(req)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(body)
		}
		file := filepath.Join(f.dir, name)
		os.WriteFile(file, body, 0o644)
		cmd := fmt.Sprintf("curl -sS -o /dev/null -w '%%{http_code}' -T %s -H 'Expect:'", file)
		for _, h := range []string{"Authorization", "X-Amz-Date", "X-Amz-Content-Sha256", "Content-Encoding", "X-Amz-Decoded-Content-Length", "X-Amz-Trailer"} {
			if v := req.Header.Get(h); v != "" {
				cmd += fmt.Sprintf(" -H '%s: %s'", h, v)
			}
		}
		return cmd + " " + endpoint + "/chunked/" + name
	}
	script := fmt.Sprintf(`set -e
curl -sS -f -X PUT %[1]s/chunked
echo "put: $(%[2]s)"
echo "broken: $(%[3]s)"
echo "trailer: $(%[4]s)"
curl -sS -f %[1]s/chunked/object.bin | sha256sum
curl -sS -o /dev/null -w 'broken object: %%{http_code}\n' %[1]s/chunked/broken.bin
curl -sS -f %[1]s/chunked/trailer.txt`, endpoint, upload("object.bin", signed, nil),
		// The first chunk's size, 10000 in hex, made 10001: the body keeps
		// its length and the chunk its signature, but the framing breaks.
		upload("broken.bin", signed, func(b []byte) { b[4] = '1' }),
		upload("trailer.txt", func(req *http.Request) ([]byte, error) {
			return s3server.SignUnsignedTrailer(req, "AKIAIOSFODNN7EXAMPLE", "dummy", "eu-west-1", time.Now(), []byte("sent with a CRC32 trailer\n"))
		}, nil))
	out, err := f.agent(ctx, t, script).CombinedOutput()
	if err != nil {
		t.Fatalf("upload: %v\n%s\n%s", err, out, f.d.Logs())
	}
	sum := sha256.Sum256(object)
	for _, want := range []string{"put: 200", "broken: 400", "trailer: 200", hex.EncodeToString(sum[:]), "broken object: 404", "sent with a CRC32 trailer"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("no %q in the agent's output:\n%s", want, out)
		}
	}
	if logs := f.d.Logs(); !strings.Contains(logs, "protocol_violation") || !strings.Contains(logs, "malformed aws-chunked body: a chunk's data is not followed by CRLF") {
		t.Errorf("the broken upload was not audited:\n%s", logs)
	}
	seen := f.s3.Seen()
	if len(seen) == 0 || seen["AKIAIOSFODNN7EXAMPLE"] != 0 {
		t.Errorf("keys the S3 server saw: %v", seen)
	}
}
