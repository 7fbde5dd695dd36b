package vaultcompat

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/ssh"
)

func start(t *testing.T, cfg Config) (*Server, *vault.Client) {
	t.Helper()
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	conf := vault.DefaultConfig()
	conf.Address = srv.URL()
	conf.MaxRetries = 0
	client, err := vault.NewClient(conf)
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(srv.RootToken())
	return srv, client
}

func status(err error) int {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

func roleCount(t *testing.T, pg *testenv.Postgres, user string) string {
	return pg.Psql(t, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", user))
}

func TestDatabaseLeaseExpires(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE reader NOLOGIN")
	srv, client := start(t, Config{Database: &Database{AdminDSN: pg.AdminDSN(), Roles: map[string]DatabaseRole{
		"ro": {Grants: []string{"reader"}, DefaultTTL: 3 * time.Second, MaxTTL: 5 * time.Second},
	}}})
	ctx := t.Context()
	s, err := client.Logical().ReadWithContext(ctx, "database/creds/ro")
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now()
	user, pass := s.Data["username"].(string), s.Data["password"].(string)
	if s.LeaseID == "" || !s.Renewable || s.LeaseDuration != 3 {
		t.Errorf("lease %q renewable %v duration %d", s.LeaseID, s.Renewable, s.LeaseDuration)
	}
	// Renewal is capped by max_ttl.
	r, err := client.Sys().RenewWithContext(ctx, s.LeaseID, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if r.LeaseDuration < 3 || r.LeaseDuration > 5 {
		t.Errorf("renewed for %ds, want capped at max_ttl 5s", r.LeaseDuration)
	}
	c, err := pgx.Connect(ctx, pg.DSN(user, pass, "postgres"))
	if err != nil {
		t.Fatalf("log in with issued credential: %v", err)
	}
	c.Close(ctx)
	if got := pg.Psql(t, "SELECT pg_has_role('"+user+"', 'reader', 'MEMBER')"); got != "t" {
		t.Errorf("issued role not a member of reader")
	}
	// Past max_ttl the reaper revokes it: the role is dropped.
	for roleCount(t, pg, user) != "0" {
		if time.Since(issued) > 10*time.Second {
			t.Fatalf("role %s outlived its lease", user)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if time.Since(issued) < 4*time.Second {
		t.Errorf("role dropped %v after issue, before the renewed lease ended", time.Since(issued))
	}
	if len(srv.Leases()) != 0 {
		t.Errorf("expired lease still listed")
	}
	if _, err := client.Sys().RenewWithContext(ctx, s.LeaseID, 10); status(err) != http.StatusBadRequest {
		t.Errorf("renewing an expired lease: %v", err)
	}
}

func TestDatabaseRevoke(t *testing.T) {
	pg := testenv.StartPostgres(t)
	pg.Psql(t, "CREATE ROLE reader NOLOGIN")
	srv, client := start(t, Config{Database: &Database{AdminDSN: pg.AdminDSN(), Roles: map[string]DatabaseRole{
		"ro": {Grants: []string{"reader"}},
	}}})
	ctx := t.Context()
	s, err := client.Logical().ReadWithContext(ctx, "database/creds/ro")
	if err != nil {
		t.Fatal(err)
	}
	user := s.Data["username"].(string)
	if err := client.Sys().RevokeWithContext(ctx, s.LeaseID); err != nil {
		t.Fatal(err)
	}
	if roleCount(t, pg, user) != "0" || len(srv.Leases()) != 0 {
		t.Error("revoked lease's role still exists")
	}
	if err := client.Sys().RevokeWithContext(ctx, s.LeaseID); err != nil {
		t.Errorf("revoking twice: %v", err)
	}
	if _, err := client.Logical().ReadWithContext(ctx, "database/creds/nope"); status(err) != http.StatusBadRequest {
		t.Errorf("unknown role: %v", err)
	}
}

func TestTokens(t *testing.T) {
	_, client := start(t, Config{AppRoles: map[string]AppRole{
		"a": {RoleID: "r", SecretID: "s", TokenTTL: 2 * time.Second},
	}})
	ctx := t.Context()
	anon, _ := client.Clone()
	anon.ClearToken()
	if _, err := anon.Logical().ReadWithContext(ctx, "secret/data/x"); status(err) != http.StatusForbidden {
		t.Errorf("read without token: %v", err)
	}
	if _, err := anon.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": "r", "secret_id": "bad"}); status(err) != http.StatusBadRequest {
		t.Errorf("login with a bad secret id: %v", err)
	}
	s, err := anon.Logical().WriteWithContext(ctx, "auth/approle/login", map[string]any{"role_id": "r", "secret_id": "s"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Auth.LeaseDuration != 2 || !s.Auth.Renewable {
		t.Errorf("login auth %+v", s.Auth)
	}
	anon.SetToken(s.Auth.ClientToken)
	time.Sleep(time.Second)
	r, err := anon.Auth().Token().RenewSelfWithContext(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if r.Auth.LeaseDuration != 2 {
		t.Errorf("renewed for %d", r.Auth.LeaseDuration)
	}
	look, err := anon.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ttl, _ := look.TokenTTL(); ttl <= time.Second {
		t.Errorf("ttl after renewal %v", ttl)
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := anon.Auth().Token().LookupSelfWithContext(ctx); status(err) != http.StatusForbidden {
		t.Errorf("expired token still accepted: %v", err)
	}
}

func TestKV(t *testing.T) {
	_, client := start(t, Config{KV: map[string]map[string]any{"seed": {"k": "v"}}})
	ctx := t.Context()
	kv := client.KVv2("secret")
	got, err := kv.Get(ctx, "seed")
	if err != nil || got.Data["k"] != "v" {
		t.Fatalf("seeded secret: %v %v", got, err)
	}
	if _, err := kv.Put(ctx, "app/db", map[string]any{"password": "p1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "app/db", map[string]any{"password": "p2"}); err != nil {
		t.Fatal(err)
	}
	got, err = kv.Get(ctx, "app/db")
	if err != nil || got.Data["password"] != "p2" || got.VersionMetadata.Version != 2 {
		t.Fatalf("written secret: %+v %v", got, err)
	}
	if _, err := kv.Get(ctx, "missing"); !errors.Is(err, vault.ErrSecretNotFound) {
		t.Errorf("missing secret: %v", err)
	}
	// Versions are kept: the first stays readable, and a write must name
	// the current version when it asks for check-and-set.
	if got, err := kv.GetVersion(ctx, "app/db", 1); err != nil || got.Data["password"] != "p1" {
		t.Errorf("version 1: %+v %v", got, err)
	}
	if _, err := kv.Put(ctx, "app/db", map[string]any{"password": "p3"}, vault.WithCheckAndSet(1)); err == nil {
		t.Error("stale check-and-set accepted")
	}
	if err := kv.Delete(ctx, "app/db"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "app/db"); err == nil {
		t.Error("deleted version still read")
	}
	if got, err := kv.GetVersion(ctx, "app/db", 1); err != nil || got.Data["password"] != "p1" {
		t.Errorf("version 1 after delete: %+v %v", got, err)
	}
	meta, err := kv.GetMetadata(ctx, "app/db")
	if err != nil || meta.CurrentVersion != 2 || len(meta.Versions) != 2 || meta.Versions["2"].DeletionTime.IsZero() {
		t.Errorf("metadata: %+v %v", meta, err)
	}
}

func TestSSHSignWithCAFile(t *testing.T) {
	_, caKey, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(caKey, "test ca")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca")
	os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
	srv, client := start(t, Config{SSH: &SSH{CAKey: path, Roles: map[string]SSHRole{
		"any": {AllowedUsers: []string{"*"}, DefaultUser: "ops", MaxTTL: time.Hour},
	}}})
	caPub, _ := ssh.NewPublicKey(caKey.Public())
	if string(srv.CAPublicKey().Marshal()) != string(caPub.Marshal()) {
		t.Fatal("server does not use the CA key file")
	}
	resp, err := http.Get(srv.URL() + "/v1/ssh/public_key")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	if served, _, _, _, err := ssh.ParseAuthorizedKey(buf[:n]); err != nil || string(served.Marshal()) != string(caPub.Marshal()) {
		t.Errorf("served CA key %q: %v", buf[:n], err)
	}
	userPub, _, _ := ed25519.GenerateKey(rand.Reader)
	up, _ := ssh.NewPublicKey(userPub)
	s, err := client.SSH().SignKeyWithContext(context.Background(), "any", map[string]any{
		"public_key": string(ssh.MarshalAuthorizedKey(up)), "ttl": "48h",
	})
	if err != nil {
		t.Fatal(err)
	}
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s.Data["signed_key"].(string)))
	if err != nil {
		t.Fatal(err)
	}
	cert := k.(*ssh.Certificate)
	if len(cert.ValidPrincipals) != 1 || cert.ValidPrincipals[0] != "ops" {
		t.Errorf("principals %v, want the default user", cert.ValidPrincipals)
	}
	if life := time.Until(time.Unix(int64(cert.ValidBefore), 0)); life > time.Hour {
		t.Errorf("certificate valid %v, beyond max_ttl", life)
	}
	checker := ssh.CertChecker{IsUserAuthority: func(a ssh.PublicKey) bool { return string(a.Marshal()) == string(caPub.Marshal()) }}
	if err := checker.CheckCert("ops", cert); err != nil {
		t.Error(err)
	}
}

func TestStopStart(t *testing.T) {
	srv, client := start(t, Config{})
	ctx := t.Context()
	if _, err := client.Auth().Token().LookupSelfWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	addr := srv.Addr()
	srv.Stop()
	if _, err := client.Auth().Token().LookupSelfWithContext(ctx); err == nil || status(err) != 0 {
		t.Fatalf("stopped server answered: %v", err)
	}
	if err := srv.Start(addr); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Auth().Token().LookupSelfWithContext(ctx); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}
