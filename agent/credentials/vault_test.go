package credentials

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"github.com/interlock-dev/interlock/agent/testenv"
	"golang.org/x/crypto/ssh"
)

// startVault starts the Vault-compatible test server in front of pg, with a
// database role readonly (member of agent_readonly), an AppRole, an SSH
// role and a KV secret. edit adjusts the config before it starts.
func startVault(t *testing.T, pg *testenv.Postgres, edit func(*vaultcompat.Config)) *vaultcompat.Server {
	t.Helper()
	cfg := vaultcompat.Config{
		RootToken: "root-token",
		AppRoles:  map[string]vaultcompat.AppRole{"interlockd": {RoleID: "role-1", SecretID: "secret-1"}},
		Database: &vaultcompat.Database{AdminDSN: pg.AdminDSN(), Roles: map[string]vaultcompat.DatabaseRole{
			"readonly": {Grants: []string{"agent_readonly"}, DefaultTTL: time.Minute, MaxTTL: time.Hour},
		}},
		SSH: &vaultcompat.SSH{Roles: map[string]vaultcompat.SSHRole{
			"agents": {AllowedUsers: []string{"deploy", "backup"}, DefaultUser: "deploy", DefaultTTL: 10 * time.Minute},
		}},
		KV: map[string]map[string]any{"app": {"username": "app", "password": "kv-pass", "region": "eu"}},
	}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := vaultcompat.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func vaultManager(t *testing.T, vc VaultConfig) *Manager {
	t.Helper()
	m, err := NewManager(Config{Vault: &vc}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func tokenAuth(srv *vaultcompat.Server) VaultConfig {
	return VaultConfig{Address: srv.URL(), Auth: VaultAuth{Method: "token", Token: srv.RootToken()}}
}

var readonly = Ref{Source: "vault", Kind: "database", Role: "readonly"}

func testVaultDatabaseLease(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, nil)
	m := vaultManager(t, tokenAuth(srv))
	ctx := t.Context()
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := m.Issue(ctx, Request{Ref: readonly, Target: "orders-db", Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	cred := l.Credential()
	if !roleExists(t, pg, cred.Username) {
		t.Fatalf("role %s does not exist while the lease is open", cred.Username)
	}
	if len(srv.Leases()) != 1 {
		t.Fatalf("server has leases %v, want one", srv.Leases())
	}
	conn, n, err := login(ctx, pg, cred)
	if err != nil || n != 2 {
		t.Fatalf("log in with the Vault credential: %d orders, %v", n, err)
	}
	start := time.Now()
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("revocation took %v", took)
	}
	if roleExists(t, pg, cred.Username) {
		t.Fatalf("role %s still exists after Close", cred.Username)
	}
	if conn.Ping(ctx) == nil {
		t.Error("a session of the revoked credential still works")
	}
	if got := srv.Leases(); len(got) != 0 {
		t.Errorf("leases left on the server: %v", got)
	}
}

func testVaultRenewalOutlivesTTL(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, func(c *vaultcompat.Config) {
		// Vault leases count in whole seconds; 3s leaves a renewal
		// 1.5s to complete on a loaded machine.
		c.Database.Roles["readonly"] = vaultcompat.DatabaseRole{Grants: []string{"agent_readonly"}, DefaultTTL: 3 * time.Second, MaxTTL: time.Hour}
	})
	m := vaultManager(t, tokenAuth(srv))
	ctx := t.Context()
	l, err := m.Issue(ctx, Request{Ref: readonly, Target: "orders-db", Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx)
	// A lease waiting for its renewal holds no goroutine (and so no
	// stack): 20 more leases, renewed meanwhile, leave the count as it was.
	before := runtime.NumGoroutine()
	for i := range 20 {
		l, err := m.Issue(ctx, Request{Ref: readonly, Target: "orders-db", Session: fmt.Sprintf("more%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close(ctx)
	}
	time.Sleep(7500 * time.Millisecond)
	// The fewest over a renewal period (half the TTL): the leases renew
	// together, and a renewal under way holds its goroutine and its HTTP
	// connection's two.
	n := runtime.NumGoroutine()
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		n = min(n, runtime.NumGoroutine())
	}
	if n-before >= 10 {
		t.Errorf("%d goroutines with 20 more leases waiting for renewal, %d before", n, before)
	}
	// Without renewal the server's reaper would have dropped the role
	// after 3s.
	conn, _, err := login(ctx, pg, l.Credential())
	if err != nil {
		t.Fatalf("log in after 3x TTL: %v", err)
	}
	conn.Close(ctx)
	if len(srv.Leases()) != 21 {
		t.Errorf("leases gone from the server: %v", srv.Leases())
	}
}

func testVaultUnreachable(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, nil)
	m := vaultManager(t, tokenAuth(srv))
	ctx := t.Context()
	l, err := m.Issue(ctx, Request{Ref: readonly, Target: "orders-db", Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	srv.Stop()
	_, err = m.Issue(ctx, Request{Ref: readonly, Target: "orders-db", Session: "s2"})
	if !errors.Is(err, ErrNotIssued) || !strings.Contains(err.Error(), "credential could not be issued") {
		t.Fatalf("Issue with Vault down: %v", err)
	}
	t.Logf("error with Vault down: %v", err)
	conn, _, err := login(ctx, pg, l.Credential())
	if err != nil {
		t.Fatalf("an issued credential stopped working while Vault is down: %v", err)
	}
	conn.Close(ctx)
	// Revocation fails while Vault is down; the lease stays journaled.
	if err := l.Close(ctx); err == nil {
		t.Error("Close succeeded with Vault down")
	}
	if err := srv.Start(addr); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m2, err := NewManager(Config{Vault: &VaultConfig{Address: srv.URL(), Auth: VaultAuth{Method: "token", Token: srv.RootToken()}}}, filepath.Dir(m.journal.lock.Name()))
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if m2.Outstanding() != 1 {
		t.Fatalf("outstanding after a failed revoke: %d, want 1", m2.Outstanding())
	}
	if err := m2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if roleExists(t, pg, l.Credential().Username) {
		t.Error("role survived Recover")
	}
}

// TestVaultRenewalRetriesWhileDown stops the server across a renewal: the
// failed renewal is retried, not fatal, and the lease lives on once the
// server is back.
func testVaultRenewalRetriesWhileDown(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, func(c *vaultcompat.Config) {
		c.Database.Roles["readonly"] = vaultcompat.DatabaseRole{Grants: []string{"agent_readonly"}, DefaultTTL: 4 * time.Second, MaxTTL: time.Hour}
	})
	m := vaultManager(t, tokenAuth(srv))
	ctx := t.Context()
	l, err := m.Issue(ctx, Request{Ref: readonly, Target: "orders-db"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx)
	addr := srv.Addr()
	srv.Stop()
	time.Sleep(2500 * time.Millisecond) // the renewal due at 2s fails
	if err := srv.Start(addr); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second) // past the original expiry at 4s
	conn, _, err := login(ctx, pg, l.Credential())
	if err != nil {
		t.Fatalf("lease did not survive an outage shorter than its TTL: %v", err)
	}
	conn.Close(ctx)
}

func testVaultRecoverAfterCrash(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, nil)
	cfg := Config{Vault: &VaultConfig{Address: srv.URL(), Auth: VaultAuth{Method: "approle", RoleID: "role-1", SecretID: "secret-1"}}}
	state := t.TempDir()
	user := issueAndCrash(t, cfg, state, readonly)
	if !roleExists(t, pg, user) || len(srv.Leases()) != 1 {
		t.Fatalf("no live lease before the crash")
	}
	m, err := NewManager(cfg, state)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Recover(t.Context()); err != nil {
		t.Fatal(err)
	}
	if roleExists(t, pg, user) || len(srv.Leases()) != 0 {
		t.Fatalf("orphaned lease survived Recover: %v", srv.Leases())
	}
}

func testVaultAppRole(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, func(c *vaultcompat.Config) {
		c.AppRoles["interlockd"] = vaultcompat.AppRole{RoleID: "role-1", SecretID: "secret-1", TokenTTL: 2 * time.Second}
		c.TokenMaxTTL = 3 * time.Second
	})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "secret-id"), []byte("secret-1\n"), 0o600)
	m := vaultManager(t, VaultConfig{Address: srv.URL(), Auth: VaultAuth{Method: "approle", RoleID: "role-1", SecretIDFile: filepath.Join(dir, "secret-id")}})
	ctx := t.Context()
	l, err := m.Issue(ctx, Request{Ref: readonly, Target: "orders-db"})
	if err != nil {
		t.Fatal(err)
	}
	l.Close(ctx)
	// The login token lives 2s, renewable up to 3s; the Manager renews it
	// and then logs in again.
	time.Sleep(7 * time.Second)
	l, err = m.Issue(ctx, Request{Ref: readonly, Target: "orders-db"})
	if err != nil {
		t.Fatalf("Issue after the token's first TTL: %v", err)
	}
	l.Close(ctx)

	bad := vaultManager(t, VaultConfig{Address: srv.URL(), Auth: VaultAuth{Method: "approle", RoleID: "role-1", SecretID: "wrong"}})
	if _, err := bad.Issue(ctx, Request{Ref: readonly, Target: "orders-db"}); !errors.Is(err, ErrNotIssued) {
		t.Errorf("Issue with a wrong secret id: %v", err)
	}
}

func testVaultCertLogin(t *testing.T, pg *testenv.Postgres) {
	dir := t.TempDir()
	files := writeTestPKI(t, dir)
	srv := startVault(t, pg, func(c *vaultcompat.Config) {
		c.TLSCert, c.TLSKey, c.CertAuthCA = files["server.crt"], files["server.key"], files["ca.crt"]
	})
	if !strings.HasPrefix(srv.URL(), "https://") {
		t.Fatalf("server URL %s", srv.URL())
	}
	m := vaultManager(t, VaultConfig{Address: srv.URL(), CACert: files["ca.crt"],
		Auth: VaultAuth{Method: "cert", ClientCert: files["client.crt"], ClientKey: files["client.key"]}})
	l, err := m.Issue(t.Context(), Request{Ref: readonly, Target: "orders-db"})
	if err != nil {
		t.Fatal(err)
	}
	l.Close(t.Context())

	// Without a client certificate the login is refused.
	nocert := vaultManager(t, VaultConfig{Address: srv.URL(), CACert: files["ca.crt"],
		Auth: VaultAuth{Method: "cert", ClientCert: files["other.crt"], ClientKey: files["other.key"]}})
	if _, err := nocert.Issue(t.Context(), Request{Ref: readonly, Target: "orders-db"}); !errors.Is(err, ErrNotIssued) {
		t.Errorf("Issue with an untrusted client certificate: %v", err)
	}
}

func testVaultSSHCertificate(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, nil)
	m := vaultManager(t, tokenAuth(srv))
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	l, err := m.Issue(t.Context(), Request{
		Ref:    Ref{Source: "vault", Kind: "ssh", Role: "agents", Principals: []string{"deploy"}, TTL: 5 * time.Minute},
		Target: "build-host", PublicKey: ssh.MarshalAuthorizedKey(sshPub),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(t.Context())
	cred := l.Credential()
	key, _, _, _, err := ssh.ParseAuthorizedKey(cred.Certificate)
	if err != nil {
		t.Fatal(err)
	}
	cert := key.(*ssh.Certificate)
	ca := srv.CAPublicKey()
	checker := ssh.CertChecker{IsUserAuthority: func(auth ssh.PublicKey) bool {
		return string(auth.Marshal()) == string(ca.Marshal())
	}}
	if err := checker.CheckCert("deploy", cert); err != nil {
		t.Errorf("certificate does not verify for deploy: %v", err)
	}
	if err := checker.CheckCert("backup", cert); err == nil {
		t.Error("certificate valid for a principal it was not issued for")
	}
	if string(cert.Key.Marshal()) != string(sshPub.Marshal()) {
		t.Error("certificate certifies another key")
	}
	if until := time.Until(cred.Expires); until < 4*time.Minute || until > 5*time.Minute+time.Second {
		t.Errorf("certificate valid for %v, want 5m", until)
	}
	// A principal the role does not allow is refused.
	_, err = m.Issue(t.Context(), Request{Ref: Ref{Source: "vault", Kind: "ssh", Role: "agents", Principals: []string{"root"}},
		Target: "build-host", PublicKey: ssh.MarshalAuthorizedKey(sshPub)})
	if !errors.Is(err, ErrNotIssued) {
		t.Errorf("root principal: %v", err)
	}
}

func testVaultKV(t *testing.T, pg *testenv.Postgres) {
	srv := startVault(t, pg, nil)
	m := vaultManager(t, tokenAuth(srv))
	l, err := m.Issue(t.Context(), Request{Ref: Ref{Source: "vault", Kind: "kv", Path: "secret/data/app"}, Target: "legacy"})
	if err != nil {
		t.Fatal(err)
	}
	c := l.Credential()
	if c.Username != "app" || c.Password != "kv-pass" || c.Data["region"] != "eu" {
		t.Errorf("KV credential %+v", c)
	}
	l.Close(t.Context())
	// A field names the secret an HTTP target's template calls .secret.
	l, err = m.Issue(t.Context(), Request{Ref: Ref{Source: "vault", Kind: "kv", Path: "secret/data/app", Field: "region"}, Target: "api"})
	if err != nil {
		t.Fatal(err)
	}
	if c := l.Credential(); c.Password != "eu" || c.Username != "app" {
		t.Errorf("KV credential with field: %+v", c)
	}
	l.Close(t.Context())
	if _, err := m.Issue(t.Context(), Request{Ref: Ref{Source: "vault", Kind: "kv", Path: "secret/data/app", Field: "token"}}); !errors.Is(err, ErrNotIssued) || !strings.Contains(err.Error(), `no field "token"`) {
		t.Errorf("missing KV field: %v", err)
	}
	if _, err := m.Issue(t.Context(), Request{Ref: Ref{Source: "vault", Kind: "kv", Path: "secret/data/missing"}}); !errors.Is(err, ErrNotIssued) {
		t.Errorf("missing KV secret: %v", err)
	}
}

// writeTestPKI writes a CA, a server certificate for 127.0.0.1, a client
// certificate it signed and one from another CA; it returns the paths.
func writeTestPKI(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	write := func(name, typ string, der []byte) {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		files[name] = path
	}
	newCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		return cert, key, der
	}
	leaf := func(name, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage, ips ...net.IP) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		write(name+".crt", "CERTIFICATE", der)
		write(name+".key", "EC PRIVATE KEY", kder)
	}
	ca, caKey, caDER := newCA("interlock test CA")
	write("ca.crt", "CERTIFICATE", caDER)
	leaf("server", "127.0.0.1", ca, caKey, x509.ExtKeyUsageServerAuth, net.IPv4(127, 0, 0, 1))
	leaf("client", "interlockd", ca, caKey, x509.ExtKeyUsageClientAuth)
	other, otherKey, _ := newCA("another CA")
	leaf("other", "intruder", other, otherKey, x509.ExtKeyUsageClientAuth)
	return files
}
