package postgres

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/jackc/pgx/v5"
)

// testCA is a throwaway CA with one certificate for 127.0.0.1/localhost.
type testCA struct {
	pool    *x509.CertPool
	cert    tls.Certificate
	certPEM []byte
	keyPEM  []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "interlock test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	c := &testCA{pool: x509.NewCertPool()}
	c.pool.AddCert(ca)
	c.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	c.keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	c.cert, err = tls.X509KeyPair(c.certPEM, c.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeServerFiles writes the certificate and key where a PostgreSQL
// running as the postgres user can read them.
func (c *testCA) writeServerFiles(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	// t.TempDir's parent is private to root; the server must reach this.
	dir, err := os.MkdirTemp("", "interlock-pgtls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := os.WriteFile(certFile, c.certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, c.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, p := range []string{dir, certFile, keyFile} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	return certFile, keyFile
}

// prependHBA puts lines first in pg_hba.conf and reloads.
func prependHBA(t *testing.T, pg *testenv.Postgres, lines ...string) {
	t.Helper()
	path := filepath.Join(pg.Dir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"+string(old)), 0o600); err != nil {
		t.Fatal(err)
	}
	pg.Psql(t, "SELECT pg_reload_conf()")
	time.Sleep(200 * time.Millisecond)
}

func dialUpstream(t *testing.T, pg *testenv.Postgres, cfg UpstreamConfig) (*Upstream, error) {
	t.Helper()
	conn, err := net.Dial("tcp", pg.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return ConnectUpstream(ctx, conn, cfg)
}

func TestConnectUpstreamAuth(t *testing.T) {
	ca := newTestCA(t)
	certFile, keyFile := ca.writeServerFiles(t)
	pg := testenv.StartPostgres(t, "ssl = on", "ssl_cert_file = '"+certFile+"'", "ssl_key_file = '"+keyFile+"'")
	pg.Psql(t, "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5-pass'")
	pg.Psql(t, "CREATE ROLE clearuser LOGIN PASSWORD 'clear-pass'")
	pg.Psql(t, "CREATE ROLE tlsuser LOGIN PASSWORD 'tls-pass'")
	prependHBA(t, pg,
		"hostnossl all md5user 127.0.0.1/32 md5",
		"hostnossl all clearuser 127.0.0.1/32 password",
		"hostnossl all tlsuser 127.0.0.1/32 reject",
		"hostssl all tlsuser 127.0.0.1/32 scram-sha-256",
	)
	for _, tc := range []struct {
		name string
		cfg  UpstreamConfig
	}{
		{"scram", UpstreamConfig{User: pg.Superuser, Password: pg.Password}},
		{"md5", UpstreamConfig{User: "md5user", Password: "md5-pass"}},
		{"cleartext", UpstreamConfig{User: "clearuser", Password: "clear-pass"}},
		{"tls verify-full", UpstreamConfig{User: "tlsuser", Password: "tls-pass",
			TLS: &tls.Config{RootCAs: ca.pool, ServerName: "localhost"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Database = "postgres"
			tc.cfg.Parameters = map[string]string{"application_name": "interlock-test"}
			up, err := dialUpstream(t, pg, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			params := map[string]string{}
			for _, p := range up.Parameters {
				params[p.Name()] = p.Value()
			}
			if params["application_name"] != "interlock-test" || params["server_version"] == "" || up.Key.ProcessID == 0 {
				t.Fatalf("parameters %v key %+v", params, up.Key)
			}
			_, isTLS := up.Conn.(*tls.Conn)
			if isTLS != (tc.cfg.TLS != nil) {
				t.Fatalf("TLS %v, want %v", isTLS, tc.cfg.TLS != nil)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		_, err := dialUpstream(t, pg, UpstreamConfig{User: pg.Superuser, Password: "wrong", Database: "postgres"})
		var se *ServerError
		if !errors.As(err, &se) || se.Response.Code != "28P01" {
			t.Fatalf("want the server's 28P01, got %v", err)
		}
	})
	t.Run("tls wrong name", func(t *testing.T) {
		_, err := dialUpstream(t, pg, UpstreamConfig{User: "tlsuser", Password: "tls-pass", Database: "postgres",
			TLS: &tls.Config{RootCAs: ca.pool, ServerName: "db.example.com"}})
		if err == nil || !strings.Contains(err.Error(), "tls") {
			t.Fatalf("want a certificate error, got %v", err)
		}
	})

	// The agent side can terminate TLS too.
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll} })
	p.clientTLS.Store(&tls.Config{Certificates: []tls.Certificate{ca.cert}})
	ctx := context.Background()
	cfg, err := pgx.ParseConfig("postgres://agent@" + p.Addr() + "/postgres?sslmode=require")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig = &tls.Config{RootCAs: ca.pool, ServerName: "localhost"}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("query over agent TLS: %v", err)
	}
	if !c.PgConn().Conn().(*tls.Conn).ConnectionState().HandshakeComplete {
		t.Fatal("agent connection is not TLS")
	}
}

func TestAcceptClientRejects(t *testing.T) {
	for name, input := range map[string][]byte{
		"length too small": {0, 0, 0, 3, 0, 3, 0, 0},
		"length too large": {0, 1, 0, 0, 0, 3, 0, 0},
		"protocol 2":       {0, 0, 0, 8, 0, 2, 0, 0},
		"no user":          {0, 0, 0, 9, 0, 3, 0, 0, 0},
		"unterminated":     {0, 0, 0, 13, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0},
	} {
		t.Run(name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			go func() { b.Write(input); b.Close() }()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := AcceptClient(ctx, a, ClientConfig{})
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("want a ProtocolError, got %v", err)
			}
		})
	}
}
