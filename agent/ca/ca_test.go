package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func open(t *testing.T, cfg Config) *Authority {
	t.Helper()
	a, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func pool(t *testing.T, certPEM []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(certPEM) {
		t.Fatal("no certificate in the authority's PEM")
	}
	return p
}

func TestOpenCreatesPrivateAuthority(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "state", "ca")
	pub := filepath.Join(base, "run", "ca.crt")
	a := open(t, Config{Dir: dir, PublicCert: pub, Subject: "host1"})

	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, KeyFile): 0o600, pub: 0o644} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s has mode %04o, want %04o", path, st.Mode().Perm(), want)
		}
	}
	c := a.Certificate()
	if !c.IsCA || !c.MaxPathLenZero || c.MaxPathLen != 0 {
		t.Errorf("CA certificate: IsCA %v MaxPathLen %d", c.IsCA, c.MaxPathLen)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if !strings.Contains(c.Subject.CommonName, "host1") {
		t.Errorf("CA subject %q does not name the host", c.Subject.CommonName)
	}
	published, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(published, a.CertificatePEM()) || bytes.Contains(published, []byte("PRIVATE KEY")) {
		t.Fatalf("public file is not the certificate alone:\n%s", published)
	}

	// A second start loads the same authority rather than minting another.
	b := open(t, Config{Dir: dir, PublicCert: pub})
	if Fingerprint(b.Certificate()) != Fingerprint(c) {
		t.Fatal("reopening created a new authority")
	}
}

func TestOpenRefusesExposedKey(t *testing.T) {
	dir := t.TempDir()
	open(t, Config{Dir: dir})
	key := filepath.Join(dir, KeyFile)
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("a group-readable key was accepted: %v", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chmod(key, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(key, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Fatalf("a key owned by another user was accepted: %v", err)
		}
	}
}

func TestPublishRefusesSharedDir(t *testing.T) {
	shared := t.TempDir()
	if err := os.Chmod(shared, 0o1777); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Dir: t.TempDir(), PublicCert: filepath.Join(shared, "ca.crt")})
	if err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Fatalf("published the CA where anyone may replace it: %v", err)
	}
}

func TestOpenRefusesMismatchedKey(t *testing.T) {
	dir := t.TempDir()
	open(t, Config{Dir: dir})
	path := filepath.Join(dir, KeyFile)
	data, _ := os.ReadFile(path)
	other := open(t, Config{Dir: t.TempDir()})
	// This key file with the other authority's certificate.
	keyBlock, _ := pem.Decode(data)
	mixed := append(pem.EncodeToMemory(keyBlock), other.CertificatePEM()...)
	if err := os.WriteFile(path, mixed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("a key that does not match its certificate was accepted: %v", err)
	}
}

func TestLeafVerifies(t *testing.T) {
	a := open(t, Config{Dir: t.TempDir()})
	roots := pool(t, a.CertificatePEM())
	for _, name := range []string{"db.internal", "LOCALHOST", "127.0.0.1", "::1", "::ffff:10.1.2.3"} {
		t.Run(name, func(t *testing.T) {
			c, err := a.Leaf(name)
			if err != nil {
				t.Fatal(err)
			}
			leaf := c.Leaf
			if span := leaf.NotAfter.Sub(leaf.NotBefore); span > LeafLifetime {
				t.Errorf("leaf valid for %s, more than %s", span, LeafLifetime)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Fatalf("leaf for %s does not verify: %v", name, err)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "other.example"}); err == nil {
				t.Fatal("leaf verifies for a name it was not minted for")
			}
		})
	}
	// A client of another authority does not trust it.
	other := open(t, Config{Dir: t.TempDir()})
	c, _ := a.Leaf("db.internal")
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool(t, other.CertificatePEM()), DNSName: "db.internal"}); err == nil {
		t.Fatal("leaf verifies under another authority")
	}
}

func TestLeafRefusesBadNames(t *testing.T) {
	a := open(t, Config{Dir: t.TempDir()})
	for _, name := range []string{"", "*.example.com", "a..b", "-a.example", "a b", "exa\x00mple", "é.example", strings.Repeat("a", 64) + ".example"} {
		if _, err := a.Leaf(name); err == nil {
			t.Errorf("minted a leaf for %q", name)
		}
	}
}

func TestLeafCacheIsBoundedAndShared(t *testing.T) {
	a := open(t, Config{Dir: t.TempDir(), CacheSize: 4})
	first, _ := a.Leaf("a.example")
	again, _ := a.Leaf("A.example.")
	if first != again {
		t.Fatal("the same name minted twice")
	}
	// Concurrent handshakes for one new name get one certificate.
	var wg sync.WaitGroup
	got := make([]*tls.Certificate, 16)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _ = a.Leaf("burst.example")
		}()
	}
	wg.Wait()
	for _, c := range got {
		if c == nil || c != got[0] {
			t.Fatal("concurrent requests for one name minted more than one leaf")
		}
	}
	for i := range 10 {
		if _, err := a.Leaf(fmt.Sprintf("n%d.example", i)); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.current.Load().leaves.order.Len(); n != 4 {
		t.Fatalf("cache holds %d leaves, bound is 4", n)
	}
	if c, _ := a.Leaf("a.example"); c == first {
		t.Fatal("an evicted leaf came back from the cache")
	}
}

func TestRotate(t *testing.T) {
	dir := t.TempDir()
	pub := filepath.Join(t.TempDir(), "ca.crt")
	a := open(t, Config{Dir: dir, PublicCert: pub})
	oldPEM := a.CertificatePEM()
	before, _ := a.Leaf("db.internal")
	if err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(oldPEM, a.CertificatePEM()) {
		t.Fatal("rotation kept the certificate")
	}
	after, _ := a.Leaf("db.internal")
	if after == before {
		t.Fatal("a leaf of the old authority is still handed out")
	}
	newRoots := pool(t, a.CertificatePEM())
	if _, err := after.Leaf.Verify(x509.VerifyOptions{Roots: newRoots, DNSName: "db.internal"}); err != nil {
		t.Fatalf("new leaf under the new authority: %v", err)
	}
	if _, err := before.Leaf.Verify(x509.VerifyOptions{Roots: newRoots, DNSName: "db.internal"}); err == nil {
		t.Fatal("an old leaf verifies under the new authority")
	}
	if published, _ := os.ReadFile(pub); !bytes.Equal(published, a.CertificatePEM()) {
		t.Fatal("rotation did not update the public certificate")
	}
	// The rotation survives a restart.
	b := open(t, Config{Dir: dir})
	if !bytes.Equal(b.CertificatePEM(), a.CertificatePEM()) {
		t.Fatal("a restart brought the old authority back")
	}
}

func TestOpenReplacesExpiredAuthority(t *testing.T) {
	dir := t.TempDir()
	a := open(t, Config{Dir: dir})
	g := a.current.Load()
	// Re-sign the same key with a certificate that ends within a leaf's life.
	tmpl := *g.cert
	tmpl.NotAfter = time.Now().Add(time.Hour)
	der, err := x509.CreateCertificate(nil, &tmpl, &tmpl, &g.key.PublicKey, g.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(g.key)
	data := append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	if err := os.WriteFile(filepath.Join(dir, KeyFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	b := open(t, Config{Dir: dir})
	if b.Certificate().NotAfter.Before(time.Now().Add(LeafLifetime)) {
		t.Fatal("an authority about to expire was kept")
	}
}

// TestServerConfig runs real handshakes: SNI picks the leaf's name, no SNI
// falls back to the address the client dialed.
func TestServerConfig(t *testing.T) {
	a := open(t, Config{Dir: t.TempDir()})
	roots := pool(t, a.CertificatePEM())
	cfg := a.ServerConfig(netip.MustParseAddr("127.0.0.1"), "postgresql")
	for _, tc := range []struct{ dial, sni string }{{"db.internal", "db.internal"}, {"127.0.0.1", ""}} {
		t.Run(tc.dial, func(t *testing.T) {
			c, s := net.Pipe()
			defer c.Close()
			defer s.Close()
			errc := make(chan error, 1)
			go func() { errc <- tls.Server(s, cfg).Handshake() }()
			// crypto/tls sends no SNI for an IP address, as libpq does not.
			tc := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: tc.dial, NextProtos: []string{"postgresql"}})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("client handshake: %v", err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			if p := tc.ConnectionState().NegotiatedProtocol; p != "postgresql" {
				t.Fatalf("ALPN %q", p)
			}
		})
	}
}

// TestServerConfigResumes: an agent resumes, on a new connection (a new
// configuration), the session an earlier connection began; not once the
// authority is rotated.
func TestServerConfigResumes(t *testing.T) {
	a := open(t, Config{Dir: t.TempDir()})
	cache := tls.NewLRUClientSessionCache(4)
	handshake := func() bool {
		t.Helper()
		c, s := net.Pipe()
		defer c.Close()
		defer s.Close()
		srv := tls.Server(s, a.ServerConfig(netip.Addr{}))
		errc := make(chan error, 1)
		go func() {
			err := srv.Handshake()
			if err == nil {
				io.Copy(io.Discard, srv) // until the client closes
			}
			errc <- err
		}()
		tc := tls.Client(c, &tls.Config{RootCAs: pool(t, a.CertificatePEM()), ServerName: "api.test", ClientSessionCache: cache})
		if err := tc.Handshake(); err != nil {
			t.Fatalf("client handshake: %v", err)
		}
		// The TLS 1.3 ticket comes after the handshake: a read takes it in.
		tc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		tc.Read(make([]byte, 1))
		resumed := tc.ConnectionState().DidResume
		tc.Close()
		c.Close()
		if err := <-errc; err != nil {
			t.Fatalf("server handshake: %v", err)
		}
		return resumed
	}
	if handshake() {
		t.Fatal("the first connection resumed")
	}
	if !handshake() {
		t.Fatal("the second connection made a full handshake")
	}
	if err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	cache = tls.NewLRUClientSessionCache(4)
	handshake()
	if err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	if handshake() {
		t.Error("a session of an authority rotated away was resumed")
	}
}

// BenchmarkLeaf measures what a handshake pays for its certificate: a
// cached leaf, and minting one for a name not seen before.
func BenchmarkLeaf(b *testing.B) {
	a, err := Open(Config{Dir: b.TempDir(), CacheSize: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := a.Leaf("db.internal"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("mint", func(b *testing.B) {
		i := 0
		for b.Loop() {
			i++
			if _, err := a.Leaf(fmt.Sprintf("n%d.example", i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkHandshake is one full TLS handshake against ServerConfig over
// an in-memory pipe, client verification included.
func BenchmarkHandshake(b *testing.B) {
	a, err := Open(Config{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(a.CertificatePEM())
	cfg := a.ServerConfig(netip.MustParseAddr("127.0.0.1"))
	for b.Loop() {
		c, s := net.Pipe()
		errc := make(chan error, 1)
		go func() { errc <- tls.Server(s, cfg).Handshake() }()
		if err := tls.Client(c, &tls.Config{RootCAs: roots, ServerName: "db.internal"}).Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		c.Close()
		s.Close()
	}
}

// TestBundle checks that the bundle holds the system roots and the
// authority, and follows a rotation.
func TestBundle(t *testing.T) {
	roots := filepath.Join(t.TempDir(), "roots.pem")
	other := open(t, Config{Dir: t.TempDir()})
	if err := os.WriteFile(roots, other.CertificatePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSL_CERT_FILE", roots)
	run := filepath.Join(t.TempDir(), "run")
	bundlePath := filepath.Join(run, "ca-bundle.crt")
	a := open(t, Config{Dir: t.TempDir(), PublicCert: filepath.Join(run, "ca.crt"), PublicBundle: bundlePath})
	check := func() {
		t.Helper()
		b, err := os.ReadFile(bundlePath)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, other.CertificatePEM()) || !bytes.HasSuffix(b, a.CertificatePEM()) {
			t.Fatalf("bundle is not the system roots followed by the authority:\n%s", b)
		}
		if st, _ := os.Stat(bundlePath); st.Mode().Perm() != 0o644 {
			t.Errorf("bundle has mode %04o, want 0644", st.Mode().Perm())
		}
		// Both verify: the public roots are kept, Interlock's is added.
		p := x509.NewCertPool()
		if !p.AppendCertsFromPEM(b) {
			t.Fatal("bundle holds no certificate")
		}
		for _, c := range []*x509.Certificate{other.Certificate(), a.Certificate()} {
			if _, err := c.Verify(x509.VerifyOptions{Roots: p}); err != nil {
				t.Errorf("%s does not verify against the bundle: %v", c.Subject.CommonName, err)
			}
		}
	}
	check()
	if err := a.Rotate(); err != nil {
		t.Fatal(err)
	}
	check()
	if a.PublicBundlePath() != bundlePath {
		t.Errorf("PublicBundlePath() = %q", a.PublicBundlePath())
	}
}
