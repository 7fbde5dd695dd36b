// Package ca is Interlock's certificate authority: the key and certificate
// interlockd signs its TLS server certificates with when it terminates an
// agent's TLS (PostgreSQL's SSLRequest, intercepted HTTPS).
//
// The authority is created at first start in its own directory (mode 0700)
// with the private key in a file only the daemon's user may read (0600); a
// key file anyone else could read or replace is refused rather than used.
// Leaf certificates are minted on demand for the name an agent dialed, valid
// 24 hours at most, and kept in a bounded cache. Rotate replaces the
// authority; from then on only the new one signs.
package ca

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/singleflight"
)

const (
	// KeyFile is the file in the authority's directory holding its private
	// key and certificate (PEM). It never leaves that directory.
	KeyFile = "ca-key.pem"
	// LeafLifetime is the longest a leaf certificate is valid: a leaf that
	// leaks is useless a day later, and clients that cache nothing never
	// notice the renewal.
	LeafLifetime = 24 * time.Hour
	// caLifetime is how long a new authority is valid. Rotation is the way
	// to retire one early.
	caLifetime = 5 * 365 * 24 * time.Hour
	// renewBefore is how long before its end a cached leaf is replaced, so
	// no handshake ever gets a certificate about to expire.
	renewBefore = time.Hour
	// clockSkew backdates certificates so a client whose clock is slightly
	// behind still accepts a fresh one.
	clockSkew = time.Minute
	// DefaultCacheSize bounds the leaves kept when Config.CacheSize is 0.
	DefaultCacheSize = 1024
)

// Config says where an authority lives.
type Config struct {
	// Dir holds KeyFile; it is created with mode 0700.
	Dir string
	// PublicCert, when set, is a file the authority keeps holding its
	// certificate alone (mode 0644), for clients to trust: `interlock exec`
	// points PGSSLROOTCERT and NODE_EXTRA_CA_CERTS at it.
	PublicCert string
	// PublicBundle, when set, is a file (mode 0644) in the same directory
	// holding the system roots followed by the certificate, rewritten with
	// it: `interlock exec` points SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
	// CURL_CA_BUNDLE and GIT_SSL_CAINFO at it.
	PublicBundle string
	// CacheSize bounds the leaf certificates kept (DefaultCacheSize if 0).
	CacheSize int
	// Subject names the authority in new certificates (e.g. the host name),
	// so rotations and hosts can be told apart.
	Subject string
}

// Authority signs leaf certificates. It is safe for concurrent use.
type Authority struct {
	cfg     Config
	current atomic.Pointer[generation]
	// rotate serialises Rotate against itself; minting never waits for it.
	rotate sync.Mutex
}

// generation is one authority key with the leaves it signed: replacing the
// generation drops its cache, so no leaf of an old authority is handed out.
type generation struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	leaves  *leafCache
	minting singleflight.Group
	tickets ticketKeys
}

// ticketKeys are the TLS session ticket keys every server configuration of
// a generation shares, so that an agent resumes a session another of its
// connections began: crypto/tls makes keys of its own for each
// configuration, and ServerConfig makes one per connection. A full
// handshake costs interlockd a signature and the agent a certificate check.
// A new key every ticketRotation, the previous one still accepted, so no
// ticket outlives a leaf's lifetime; a new generation starts with new keys.
type ticketKeys struct {
	mu      sync.Mutex
	keys    [][32]byte // the newest first
	rotated time.Time
}

// ticketRotation is how long a ticket key is the one tickets are issued
// with; tickets stay valid one more period.
const ticketRotation = LeafLifetime / 2

func (t *ticketKeys) get(now time.Time) [][32]byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.keys) == 0 || now.Sub(t.rotated) >= ticketRotation {
		var k [32]byte
		rand.Read(k[:])
		t.keys = append([][32]byte{k}, t.keys...)[:min(len(t.keys)+1, 2)]
		t.rotated = now
	}
	return t.keys
}

// Open loads the authority in cfg.Dir, creating it on first use. An
// authority that has expired, or would before a leaf it signs, is replaced.
func Open(cfg Config) (*Authority, error) {
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ca dir: %w", err)
	}
	// MkdirAll keeps the mode of a directory that already exists.
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict ca dir: %w", err)
	}
	a := &Authority{cfg: cfg}
	g, err := load(filepath.Join(cfg.Dir, KeyFile), cfg.CacheSize)
	switch {
	case errors.Is(err, os.ErrNotExist) || err == nil && time.Now().Add(LeafLifetime).After(g.cert.NotAfter):
		if err := a.Rotate(); err != nil {
			return nil, err
		}
		return a, nil
	case err != nil:
		return nil, err
	}
	a.current.Store(g)
	if err := a.publish(g); err != nil {
		return nil, err
	}
	return a, nil
}

// load reads a key file, refusing one that others could read or that
// someone other than this process's user owns: whoever can read the key can
// impersonate every server the agents trust it for.
func load(path string, cacheSize int) (*generation, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open ca key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat ca key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ca key %s has mode %04o; it must be 0600 (chmod 600 it, or run interlock ca rotate)", path, st.Mode().Perm())
	}
	if uid := fileOwner(st); uid != uint32(os.Geteuid()) {
		return nil, fmt.Errorf("ca key %s is owned by uid %d, not by the daemon's uid %d", path, uid, os.Geteuid())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ca key: %w", err)
	}
	g := &generation{leaves: newLeafCache(cacheSize)}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			if g.cert, err = x509.ParseCertificate(b.Bytes); err != nil {
				return nil, fmt.Errorf("parse ca certificate in %s: %w", path, err)
			}
			g.certPEM = pem.EncodeToMemory(b)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse ca key in %s: %w", path, err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("ca key in %s is %T, want ECDSA", path, k)
			}
			g.key = ek
		}
	}
	if g.cert == nil || g.key == nil {
		return nil, fmt.Errorf("ca key %s lacks its certificate or key", path)
	}
	if !g.key.PublicKey.Equal(g.cert.PublicKey) {
		return nil, fmt.Errorf("ca key %s: the key does not match the certificate", path)
	}
	return g, nil
}

// Rotate replaces the authority with a new key and certificate. Leaves of
// the old one are no longer handed out; connections already made keep
// theirs.
func (a *Authority) Rotate() error {
	a.rotate.Lock()
	defer a.rotate.Unlock()
	g, err := newGeneration(a.cfg)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(g.key)
	if err != nil {
		return fmt.Errorf("encode ca key: %w", err)
	}
	data := append(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), g.certPEM...)
	if err := writeFile(filepath.Join(a.cfg.Dir, KeyFile), data, 0o600); err != nil {
		return fmt.Errorf("write ca key: %w", err)
	}
	a.current.Store(g)
	return a.publish(g)
}

func newGeneration(cfg Config) (*generation, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ca key: %w", err)
	}
	now := time.Now()
	subject := "Interlock CA"
	if cfg.Subject != "" {
		subject += " " + cfg.Subject
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject: pkix.Name{Organization: []string{"Interlock"},
			CommonName: subject + " " + now.UTC().Format("2006-01-02T15:04:05Z")},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// It signs leaves only, never another authority.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	return &generation{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		leaves: newLeafCache(cfg.CacheSize)}, nil
}

// publish writes the certificate alone, and the bundle, where clients read
// them.
func (a *Authority) publish(g *generation) error {
	if a.cfg.PublicCert == "" {
		return nil
	}
	dir := filepath.Dir(a.cfg.PublicCert)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create public ca dir: %w", err)
	}
	// Agents verify servers against this file: whoever could replace it
	// could make them trust any server.
	if st, err := os.Stat(dir); err != nil {
		return fmt.Errorf("stat public ca dir: %w", err)
	} else if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("publish ca certificate: %s is writable by others (mode %04o), who could replace the certificate agents trust", dir, st.Mode().Perm())
	}
	if err := writeFile(a.cfg.PublicCert, g.certPEM, 0o644); err != nil {
		return fmt.Errorf("publish ca certificate: %w", err)
	}
	if a.cfg.PublicBundle == "" {
		return nil
	}
	b, err := bundle(g.certPEM)
	if err != nil {
		return err
	}
	if err := writeFile(a.cfg.PublicBundle, b, 0o644); err != nil {
		return fmt.Errorf("publish ca bundle: %w", err)
	}
	return nil
}

// writeFile replaces path atomically: a reader (or a crash) sees the old
// file or the new one, never a half-written key.
func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// CertificatePEM returns the authority's certificate, PEM-encoded.
func (a *Authority) CertificatePEM() []byte { return a.current.Load().certPEM }

// Certificate returns the authority's certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.current.Load().cert }

// PublicCertPath returns the file holding the certificate for clients, or
// "" when the authority publishes none.
func (a *Authority) PublicCertPath() string { return a.cfg.PublicCert }

// PublicBundlePath returns the file holding the system roots and the
// certificate, or "" when the authority publishes none.
func (a *Authority) PublicBundlePath() string { return a.cfg.PublicBundle }

// Fingerprint returns the SHA-256 of a certificate's DER, in hex.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// Leaf returns a server certificate for name, a DNS name or an IP address,
// signed by the current authority: from the cache while it has more than an
// hour left, else newly minted.
func (a *Authority) Leaf(name string) (*tls.Certificate, error) {
	name, ip, err := canonical(name)
	if err != nil {
		return nil, err
	}
	g := a.current.Load()
	now := time.Now()
	if c := g.leaves.get(name); c != nil && now.Add(renewBefore).Before(c.Leaf.NotAfter) {
		return c, nil
	}
	// Many connections to one new name at once mint it once.
	v, err, _ := g.minting.Do(name, func() (any, error) {
		if c := g.leaves.get(name); c != nil && now.Add(renewBefore).Before(c.Leaf.NotAfter) {
			return c, nil
		}
		c, err := g.mint(name, ip, now)
		if err != nil {
			return nil, err
		}
		g.leaves.put(name, c)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

// ServerConfig returns a TLS configuration that presents a leaf for the
// server name the client sends (SNI), or for fallback, the address it
// connected to, when it sends none (clients send no SNI for IP addresses).
func (a *Authority) ServerConfig(fallback netip.Addr, nextProtos ...string) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: nextProtos,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hello.ServerName != "" {
				return a.Leaf(hello.ServerName)
			}
			if !fallback.IsValid() {
				return nil, errors.New("mint leaf: no server name and no address")
			}
			return a.Leaf(fallback.Unmap().String())
		},
	}
	cfg.SetSessionTicketKeys(a.current.Load().tickets.get(time.Now()))
	return cfg
}

func (g *generation) mint(name string, ip netip.Addr, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate leaf key: %w", err)
	}
	notBefore := now.Add(-clockSkew)
	notAfter := notBefore.Add(LeafLifetime)
	if notAfter.After(g.cert.NotAfter) {
		notAfter = g.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"Interlock"}, CommonName: name},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip.IsValid() {
		tmpl.IPAddresses = []net.IP{ip.AsSlice()}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, g.cert, &key.PublicKey, g.key)
	if err != nil {
		return nil, fmt.Errorf("sign leaf for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse leaf for %s: %w", name, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// canonical checks that name can stand in a certificate and returns its
// cache key: an IP address in its canonical form, or a lower-case DNS name.
// What a client sends as SNI is not trusted to be either.
func canonical(name string) (string, netip.Addr, error) {
	if ip, err := netip.ParseAddr(name); err == nil {
		ip = ip.Unmap()
		return ip.String(), ip, nil
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if len(name) == 0 || len(name) > 253 {
		return "", netip.Addr{}, fmt.Errorf("mint leaf: invalid server name %q", name)
	}
	for _, label := range strings.Split(name, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", netip.Addr{}, fmt.Errorf("mint leaf: invalid server name %q", name)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", netip.Addr{}, fmt.Errorf("mint leaf: invalid server name %q", name)
			}
		}
	}
	return name, netip.Addr{}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// leafCache keeps the most recently used leaves, at most max of them: an
// agent dialing ever new names must not grow the daemon without bound.
type leafCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front: most recently used; values are *leafEntry
	m     map[string]*list.Element
}

type leafEntry struct {
	name string
	cert *tls.Certificate
}

func newLeafCache(max int) *leafCache {
	if max <= 0 {
		max = DefaultCacheSize
	}
	return &leafCache{max: max, order: list.New(), m: map[string]*list.Element{}}
}

func (c *leafCache) get(name string) *tls.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[name]
	if !ok {
		return nil
	}
	c.order.MoveToFront(e)
	return e.Value.(*leafEntry).cert
}

func (c *leafCache) put(name string, cert *tls.Certificate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[name]; ok {
		e.Value.(*leafEntry).cert = cert
		c.order.MoveToFront(e)
		return
	}
	c.m[name] = c.order.PushFront(&leafEntry{name: name, cert: cert})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.m, last.Value.(*leafEntry).name)
	}
}

// fileOwner returns the uid owning a file.
func fileOwner(st os.FileInfo) uint32 {
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		return sys.Uid
	}
	return ^uint32(0)
}

// Dir returns where interlockd, with state directory stateDir, keeps its
// authority: the daemon opens it there and `interlock ca export` reads it
// there when the daemon is down.
func Dir(stateDir string) string { return filepath.Join(stateDir, "ca") }

// ReadCertificate returns the certificate of the authority kept in dir,
// PEM-encoded, without loading its key: what `interlock ca export` prints
// when no daemon is running. Reading it takes the daemon user's rights.
func ReadCertificate(dir string) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("read ca: %w", err)
	}
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, fmt.Errorf("read ca: no certificate in %s", filepath.Join(dir, KeyFile))
		}
		if b.Type == "CERTIFICATE" {
			return pem.EncodeToMemory(b), nil
		}
	}
}
