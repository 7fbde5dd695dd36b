package daemon_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// dockerClientsPolicy selects the containers by image and label, as
// dockerPolicy does, and gives them a PostgreSQL target (on the host's
// veth address, relayed to the cluster on loopback, with Vault database
// credentials), a plain HTTP target and an intercepted HTTPS one.
const dockerClientsPolicy = `version: 1
identities:
  - name: ci-containers
    container: {runtime: docker, image: "ghcr.io/acme/*", labels: {ci.job: "*"}}
targets:
  - name: appdb
    protocol: postgres
    addresses: [%[1]s]
    port: %[2]d
    upstream: 127.0.0.1:%[2]d
    credential: {source: vault, kind: database, role: ci}
  - name: intranet
    protocol: http
    hosts: [intranet.test]
    port: %[3]d
    upstream: 127.0.0.1:%[3]d
  - name: api
    protocol: http
    hosts: [api.test]
    port: %[4]d
    upstream: 127.0.0.1:%[4]d
    tls: intercept
    upstream_ca: %[5]s
masks:
  - name: pii
    columns: {email: redact}
rules:
  - {name: no-destructive, identity: ci-containers, target: appdb, sql: {destructive: true}, action: deny, message: destructive statements are denied}
  - {name: read-masked, identity: ci-containers, target: appdb, sql: {class: [read, session, transaction]}, action: mask, mask: pii}
  - {name: no-admin, identity: ci-containers, target: [intranet, api], http: {paths: [/admin/]}, action: deny}
  - {name: http-read, identity: ci-containers, target: [intranet, api], http: {methods: [GET]}, action: allow}
`

// addDynamic copies a dynamically linked binary into the image root as
// /bin/<its name>, with every library ldd lists and the loader, each at
// its host path (the loader's search path inside the image is the host's).
func addDynamic(t testing.TB, root, bin string) {
	t.Helper()
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		t.Fatalf("ldd %s: %v", bin, err)
	}
	files := map[string]string{filepath.Join("bin", filepath.Base(bin)): bin}
	for _, line := range strings.Split(string(out), "\n") {
		// "libpq.so.5 => /lib/x86_64-linux-gnu/libpq.so.5 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			files[f[2]] = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			files[f[0]] = f[0]
		}
	}
	for dst, src := range files {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDockerContainerClients: a container of a Docker daemon whose
// containers' cgroups lie under a tagged cgroup, started from an image
// built locally with Debian's psql and curl and matched by image and
// label, gets the PostgreSQL and HTTP outcomes through interlockd from its
// own network namespace: psql, given no password, runs under a role the
// Vault-compatible server minted for the session (revoked at its end),
// sees the email column masked and a DROP denied with SQLSTATE 42501;
// curl gets an allowed GET through and Interlock's 403 for a denied path,
// over plain HTTP and over intercepted HTTPS, trusting Interlock's CA
// bundle from the image's system store. The audit trail names the
// container. A container of another image, and one without the label,
// reach neither.
func TestDockerContainerClients(t *testing.T) {
	testenv.Privileged(t)
	for _, bin := range []string{"curl", "nginx", "ldd"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Unavailable(t, "no %s (make deps): %v", bin, err)
		}
	}
	newAgentNetns(t, true) // the host end holds the targets' address
	dir := t.TempDir()

	pg := testenv.StartPostgres(t)
	pg.Psql(t, `CREATE ROLE agent_rw NOLOGIN;
		CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
		INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Bob', 'bob@example.com');
		GRANT SELECT, INSERT, UPDATE, DELETE ON customers TO agent_rw;`)
	vault, err := vaultcompat.New(vaultcompat.Config{Database: &vaultcompat.Database{
		AdminDSN: pg.AdminDSN(),
		Roles:    map[string]vaultcompat.DatabaseRole{"ci": {Grants: []string{"agent_rw"}, DefaultTTL: time.Minute}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := vault.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vault.Close() })

	// nginx on loopback: intranet.test plain, api.test over TLS with a
	// certificate of the upstreams' CA.
	web := &httpFixture{dir: dir, tlsPort: testenv.FreePort(t), plainPort: testenv.FreePort(t)}
	web.upstreamCA = filepath.Join(dir, "upstream-ca.crt")
	public, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "public-ca"), PublicCert: web.upstreamCA})
	if err != nil {
		t.Fatal(err)
	}
	crt, key := web.leafFiles(t, public, "api.test")
	var servers strings.Builder
	for _, srv := range []struct {
		name, listen, tls string
	}{
		{"intranet.test", strconv.Itoa(web.plainPort), ""},
		{"api.test", strconv.Itoa(web.tlsPort) + " ssl", fmt.Sprintf("ssl_certificate %s;\n    ssl_certificate_key %s;", crt, key)},
	} {
		fmt.Fprintf(&servers, `  server {
    listen 127.0.0.1:%s;
    server_name %s;
    %s
    access_log %s;
    location / { return 200 "upstream $request_method $request_uri host=$host\n"; }
  }
`, srv.listen, srv.name, srv.tls, filepath.Join(dir, srv.name+".log"))
	}
	startNginx(t, dir, servers.String(), web.plainPort)

	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(dockerClientsPolicy, nsHostAddr, pg.Port, web.plainPort, web.tlsPort, web.upstreamCA)), 0o644); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "ildsock-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sockLink := filepath.Join(sockDir, "docker.sock")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(vault.RootToken()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "interlockd.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("docker_socket: %s\ncredentials:\n  vault:\n    address: %s\n    timeout: 3s\n    auth: {method: token, token_file: %s}\n",
		sockLink, vault.URL(), tokenFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	// The daemon starts first: its cgroup subtree holds the containers'.
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	parent := d.Cgroup("docker")
	if _, stderr, err := d.CLI("tag", parent, "--identity", "ci-containers"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	dk := startDockerd(t, parent, d.Mount)
	if err := os.Symlink(dk.Socket, sockLink); err != nil {
		t.Fatal(err)
	}

	// The image: busybox, psql and curl with their libraries, and
	// Interlock's CA bundle (the system roots and its CA) where Debian's
	// curl looks for the system store.
	root := busyboxRoot(t)
	addDynamic(t, root, filepath.Join(testenv.PGBin(t), "psql"))
	curlBin, _ := exec.LookPath("curl")
	addDynamic(t, root, curlBin)
	bundle, err := os.ReadFile(filepath.Join(filepath.Dir(d.Socket), control.CABundleFile))
	if err != nil {
		t.Fatalf("interlockd's CA bundle: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/ssl/certs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"), bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	dk.importRoot(root, "ghcr.io/acme/clients:1", "docker.io/other/clients:1")

	start := func(image string, labels ...string) container {
		t.Helper()
		since := len(d.Logs())
		c := dk.run(image, labels...)
		giveVeth(t, c)
		waitServed(t, d, since, c.inode)
		return c
	}
	// A client's errors are part of its output.
	withStderr := []string{"sh", "-c", `exec "$0" "$@" 2>&1`}
	// psql connects to the target's address on the host's veth, as user
	// agent and with no password (-w: never ask for one).
	psql := func(c container, sql ...string) (string, error) {
		args := append([]string{"exec", "-e", "PGCONNECT_TIMEOUT=10", c.id}, withStderr...)
		args = append(args, "psql", "-X", "-At", "-w", "-v", "VERBOSITY=verbose",
			"-h", nsHostAddr, "-p", strconv.Itoa(pg.Port), "-U", "agent", "-d", "postgres")
		for _, s := range sql {
			args = append(args, "-c", s)
		}
		return dk.docker(args...)
	}
	// curl reaches both names at the host's veth address: a namespace's
	// UDP DNS is not served, so the names are given with --resolve.
	plainURL := fmt.Sprintf("http://intranet.test:%d", web.plainPort)
	tlsURL := fmt.Sprintf("https://api.test:%d", web.tlsPort)
	curl := func(c container, urls ...string) (string, error) {
		args := append(append([]string{"exec", c.id}, withStderr...), "curl", "-q", "-sS", "--max-time", "20", "-w", "status=%{http_code}\n",
			"--resolve", fmt.Sprintf("intranet.test:%d:%s", web.plainPort, nsHostAddr),
			"--resolve", fmt.Sprintf("api.test:%d:%s", web.tlsPort, nsHostAddr))
		return dk.docker(append(args, urls...)...)
	}

	c := start("ghcr.io/acme/clients:1", "ci.job=build-7")
	out, err := psql(c, "SELECT current_user", "SELECT id, name, email FROM customers ORDER BY id", "DROP TABLE customers", "SELECT 'still here'")
	t.Logf("psql in the container:\n%s", out)
	lines := strings.Split(out, "\n")
	role := lines[0]
	if !strings.HasPrefix(role, "v-") {
		t.Fatalf("psql ran as %q, want a role minted by Vault: %v\n%s", role, err, d.Logs())
	}
	if strings.Contains(out, "ada@example.com") || !strings.Contains(out, "1|Ada|") || !strings.Contains(out, "2|Bob|") {
		t.Errorf("the email column was not masked, or rows are missing:\n%s", out)
	}
	if !strings.Contains(out, `ERROR:  42501: interlock: permission denied by rule "no-destructive": destructive statements are denied`) {
		t.Errorf("DROP TABLE: no ErrorResponse 42501 naming the rule:\n%s", out)
	}
	if !strings.HasSuffix(out, "still here") {
		t.Errorf("the session did not go on after the denial:\n%s", out)
	}
	if got := pg.Psql(t, "SELECT count(*) FROM customers"); got != "2" {
		t.Errorf("customers has %s rows after a denied DROP", got)
	}
	issued := waitEvent(t, d, "credential_issued", func(e map[string]any) bool { return e["target"] == "appdb" })
	if issued["username"] != role || issued["source"] != "vault" {
		t.Errorf("credential_issued %v: want vault's %s", issued, role)
	}
	waitEvent(t, d, "credential_revoked", func(e map[string]any) bool { return e["username"] == role })
	if n := pg.Psql(t, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", role)); n != "0" || len(vault.Leases()) != 0 {
		t.Errorf("after the session: role %s counted %s, Vault leases %v", role, n, vault.Leases())
	}

	hits := func() int { return web.hits("intranet.test") + web.hits("api.test") }
	before := hits()
	out, err = curl(c, plainURL+"/public/x", plainURL+"/admin/x", tlsURL+"/repos/acme", tlsURL+"/admin/users")
	t.Logf("curl in the container:\n%s", out)
	if err != nil {
		t.Errorf("curl: %v", err)
	}
	for _, want := range []string{"upstream GET /public/x host=intranet.test\nstatus=200", "upstream GET /repos/acme host=api.test\nstatus=200"} {
		if !strings.Contains(out, want) {
			t.Errorf("curl: the allowed request lacks %q", want)
		}
	}
	if strings.Count(out, `"rule":"no-admin"`) != 2 || strings.Count(out, "status=403") != 2 {
		t.Errorf("curl: the denied paths did not both get Interlock's 403")
	}
	if got := hits() - before; got != 2 {
		t.Errorf("nginx served %d requests, want the 2 allowed", got)
	}

	// The trail names the container of each connection (an HTTP
	// connection's target is chosen later, by name: found by destination).
	for _, port := range []int{pg.Port, web.plainPort, web.tlsPort} {
		dst := fmt.Sprintf("%s:%d", nsHostAddr, port)
		e := waitEvent(t, d, "connection_open", func(e map[string]any) bool { return e["dst"] == dst })
		ctr, _ := e["container"].(map[string]any)
		labels, _ := ctr["labels"].(map[string]any)
		if e["identity"] != "ci-containers" || ctr["runtime"] != "docker" || ctr["id"] != c.id ||
			ctr["image"] != "ghcr.io/acme/clients:1" || labels["ci.job"] != "build-7" {
			t.Errorf("connection_open to %s: %v, want container %.12s of ghcr.io/acme/clients:1 labelled ci.job=build-7", dst, e, c.id)
		}
	}
	dk.must("rm", "-f", c.id)

	for _, other := range []struct {
		image  string
		labels []string
	}{{"docker.io/other/clients:1", []string{"ci.job=build-7"}}, {"ghcr.io/acme/clients:1", nil}} {
		c := start(other.image, other.labels...)
		issuedBefore, hitsBefore := len(auditEvents(d, "credential_issued")), hits()
		out, err := psql(c, "SELECT 'through ' || current_user")
		t.Logf("%s %v: psql: %v\n%s", other.image, other.labels, err, out)
		if err == nil || !strings.Contains(out, `FATAL:  interlock: connection denied by policy rule "default-deny"`) {
			t.Errorf("%s %v: psql was not refused by Interlock", other.image, other.labels)
		}
		out, _ = curl(c, plainURL+"/public/x", tlsURL+"/repos/acme")
		t.Logf("%s %v: curl:\n%s", other.image, other.labels, out)
		// Plain HTTP gets Interlock's 403; TLS to a name the caller may
		// not reach is refused before any leaf is minted for it.
		if strings.Contains(out, "status=200") || !strings.Contains(out, `denied by rule default-deny`) || !strings.Contains(out, "curl: (35)") {
			t.Errorf("%s %v: curl was not refused by Interlock", other.image, other.labels)
		}
		if n := len(auditEvents(d, "credential_issued")); n != issuedBefore || hits() != hitsBefore {
			t.Errorf("%s %v: %d credentials issued, nginx served %d", other.image, other.labels, n-issuedBefore, hits()-hitsBefore)
		}
		dk.must("rm", "-f", c.id)
	}
}
