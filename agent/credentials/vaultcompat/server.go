// Package vaultcompat is a TEST server that speaks the small subset of
// HashiCorp Vault's HTTP API that interlockd uses, with real effects: it
// creates and drops real PostgreSQL roles and signs real OpenSSH
// certificates. It is not Vault and not for production: it has no storage
// (all state is in memory), no policies (every valid token may do
// everything) and fixed mount paths. It exists because no Vault server can
// be installed where the tests run; the Vagrant VM runs the same tests
// against a real Vault.
//
// Endpoints (mounts fixed at their default paths):
//
//	GET  /v1/sys/health
//	PUT  /v1/auth/approle/login           {role_id, secret_id}
//	PUT  /v1/auth/cert/login              TLS client certificate (when serving TLS)
//	PUT  /v1/auth/token/renew-self        {increment}
//	GET  /v1/auth/token/lookup-self
//	PUT  /v1/auth/token/revoke-self
//	GET  /v1/database/creds/<role>        CREATE ROLE ... VALID UNTIL, member of the role's grants
//	PUT  /v1/sys/leases/renew             {lease_id, increment}: ALTER ROLE ... VALID UNTIL
//	PUT  /v1/sys/leases/revoke            {lease_id}: terminate backends, DROP ROLE
//	GET  /v1/secret/data/<path>[?version=N]  KV v2 read (versions kept)
//	PUT  /v1/secret/data/<path>           KV v2 write {data, options: {cas}}
//	DELETE /v1/secret/data/<path>         KV v2 soft delete of the latest version
//	GET  /v1/secret/metadata/<path>       KV v2 metadata: the versions
//	PUT  /v1/ssh/sign/<role>              {public_key, valid_principals, ttl}
//	GET  /v1/aws/creds/<role>             an access key (lease: renewable; revoked: deleted)
//	GET  /v1/aws/sts/<role>               an access key with a session token (lease: not renewable)
//	GET  /v1/ssh/public_key               the CA public key
//
// Leases and tokens expire as in Vault: an expired database lease is revoked
// (its role dropped) by a background reaper.
package vaultcompat

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/pgrole"
	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/ssh"
)

// Config configures the test server; cmd/vault-compat-server reads it from
// YAML.
type Config struct {
	// RootToken is accepted forever. Empty: a random one (see RootToken).
	RootToken string `yaml:"root_token"`
	// TokenTTL and TokenMaxTTL bound tokens issued by logins; defaults 1h
	// and 24h.
	TokenTTL    time.Duration `yaml:"token_ttl"`
	TokenMaxTTL time.Duration `yaml:"token_max_ttl"`
	// AppRoles are accepted by auth/approle/login, keyed by role name.
	AppRoles map[string]AppRole `yaml:"approles"`
	// CertAuthCA is a PEM file of CAs whose client certificates
	// auth/cert/login accepts; needs TLS.
	CertAuthCA string `yaml:"cert_auth_ca"`
	// TLSCert and TLSKey (PEM files) make the server speak HTTPS.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// Database configures the database secrets engine.
	Database *Database `yaml:"database"`
	// SSH configures the SSH secrets engine (CA signing).
	SSH *SSH `yaml:"ssh"`
	// KV seeds the KV v2 engine mounted at secret/: path -> data.
	KV map[string]map[string]any `yaml:"kv"`
	// AWS configures the AWS secrets engine.
	AWS *AWS `yaml:"aws"`
}

// AppRole is one AppRole's credentials.
type AppRole struct {
	RoleID   string `yaml:"role_id"`
	SecretID string `yaml:"secret_id"`
	// TokenTTL overrides Config.TokenTTL for its tokens.
	TokenTTL time.Duration `yaml:"token_ttl"`
}

// Database is the database secrets engine: one PostgreSQL connection.
type Database struct {
	// AdminDSN is a libpq URL of a role that may create roles.
	AdminDSN string `yaml:"admin_dsn"`
	// Roles are what database/creds/<role> issues.
	Roles map[string]DatabaseRole `yaml:"roles"`
}

// DatabaseRole is what one database role issues.
type DatabaseRole struct {
	// Grants are the roles each issued user is made a member of.
	Grants []string `yaml:"grants"`
	// DefaultTTL (default 1h) and MaxTTL (default 24h) bound leases.
	DefaultTTL time.Duration `yaml:"default_ttl"`
	MaxTTL     time.Duration `yaml:"max_ttl"`
}

// SSH is the SSH secrets engine in CA mode.
type SSH struct {
	// CAKey is an OpenSSH private key file; empty: a fresh ed25519 key.
	CAKey string `yaml:"ca_key"`
	// Roles are what ssh/sign/<role> signs for.
	Roles map[string]SSHRole `yaml:"roles"`
}

// SSHRole is one SSH signing role (user certificates only).
type SSHRole struct {
	// AllowedUsers are the principals a certificate may name; "*" allows
	// any.
	AllowedUsers []string `yaml:"allowed_users"`
	// DefaultUser is the principal when the request names none.
	DefaultUser string `yaml:"default_user"`
	// DefaultTTL (default 30m) and MaxTTL (default 24h) bound certificates.
	DefaultTTL time.Duration `yaml:"default_ttl"`
	MaxTTL     time.Duration `yaml:"max_ttl"`
}

// Server is the running test server. Its methods are safe for concurrent
// use.
type Server struct {
	cfg   Config
	admin *pgrole.Admin // nil without Database
	ca    ssh.Signer    // nil without SSH
	tls   *tls.Config   // nil: plain HTTP
	mux   *http.ServeMux

	mu     sync.Mutex
	tokens map[string]*token
	leases map[string]*lease
	kv     map[string]*kvSecret
	ln     net.Listener
	hs     *http.Server
	addr   string

	stopReaper context.CancelFunc
	reaperDone chan struct{}
}

type token struct {
	display   string
	policies  []string
	ttl       time.Duration // 0: never expires
	expires   time.Time
	maxExpiry time.Time
}

// lease is a secret that expires unless renewed: revoke makes it stop
// working (drops a PostgreSQL role, deletes an AWS key); extend, when set,
// moves the expiry the secret itself carries (a role's VALID UNTIL).
type lease struct {
	revoke    func(ctx context.Context) error
	extend    func(ctx context.Context, until time.Time) error
	renewable bool
	ttl       time.Duration
	expires   time.Time
	maxExpiry time.Time
}

// kvSecret is one KV v2 path: every version written, the latest last.
type kvSecret struct {
	versions []*kvEntry
	created  time.Time
}

type kvEntry struct {
	data      map[string]any
	version   int
	created   time.Time
	deleted   time.Time // zero unless soft-deleted
	destroyed bool
}

// New builds a server from cfg; Start makes it listen. It does not connect
// to PostgreSQL yet.
func New(cfg Config) (*Server, error) {
	s := &Server{
		cfg:    cfg,
		tokens: map[string]*token{},
		leases: map[string]*lease{},
		kv:     map[string]*kvSecret{},
	}
	if s.cfg.RootToken == "" {
		s.cfg.RootToken = "root-" + randomHex(12)
	}
	if s.cfg.TokenTTL == 0 {
		s.cfg.TokenTTL = time.Hour
	}
	if s.cfg.TokenMaxTTL == 0 {
		s.cfg.TokenMaxTTL = 24 * time.Hour
	}
	s.tokens[s.cfg.RootToken] = &token{display: "root", policies: []string{"root"}}
	if cfg.Database != nil {
		cc, err := pgx.ParseConfig(cfg.Database.AdminDSN)
		if err != nil {
			return nil, errors.New("parse database admin_dsn: invalid connection string")
		}
		s.admin = pgrole.New(cc, 4)
	}
	if cfg.SSH != nil {
		signer, err := loadCA(cfg.SSH.CAKey)
		if err != nil {
			return nil, err
		}
		s.ca = signer
	}
	for path, data := range cfg.KV {
		now := time.Now()
		s.kv[path] = &kvSecret{versions: []*kvEntry{{data: data, version: 1, created: now}}, created: now}
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("load tls key pair: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if cfg.CertAuthCA != "" {
			pem, err := os.ReadFile(cfg.CertAuthCA)
			if err != nil {
				return nil, fmt.Errorf("read cert auth ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, errors.New("read cert auth ca: no certificates")
			}
			s.tls.ClientCAs = pool
			s.tls.ClientAuth = tls.VerifyClientCertIfGiven
		}
	} else if cfg.CertAuthCA != "" {
		return nil, errors.New("cert auth needs tls_cert and tls_key")
	}
	s.routes()
	ctx, cancel := context.WithCancel(context.Background())
	s.stopReaper, s.reaperDone = cancel, make(chan struct{})
	go s.reap(ctx)
	return s, nil
}

func loadCA(path string) (ssh.Signer, error) {
	if path == "" {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate ssh ca: %w", err)
		}
		return ssh.NewSignerFromKey(key)
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ssh ca key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return nil, fmt.Errorf("parse ssh ca key: %w", err)
	}
	return signer, nil
}

// RootToken returns the token that never expires.
func (s *Server) RootToken() string { return s.cfg.RootToken }

// CAPublicKey returns the SSH CA's public key, or nil without SSH.
func (s *Server) CAPublicKey() ssh.PublicKey {
	if s.ca == nil {
		return nil
	}
	return s.ca.PublicKey()
}

// Start listens on addr (host:port; port 0 picks one) and serves until Stop.
// After a Stop, Start resumes with the same state, so tests can make the
// server unreachable for a while.
func (s *Server) Start(addr string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("start vault-compat server: already listening")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	if s.tls != nil {
		hs.TLSConfig = s.tls
		ln = tls.NewListener(ln, s.tls)
	}
	s.ln, s.hs, s.addr = ln, hs, ln.Addr().String()
	go hs.Serve(ln)
	return nil
}

// Addr returns the address the server listens (or last listened) on.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// URL returns the server's base URL, as VAULT_ADDR wants it.
func (s *Server) URL() string {
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
	}
	return scheme + "://" + s.Addr()
}

// Stop closes the listener and every open connection: clients see
// connection refused, as when Vault is down. Leases keep expiring.
func (s *Server) Stop() error {
	s.mu.Lock()
	hs := s.hs
	s.hs, s.ln = nil, nil
	s.mu.Unlock()
	if hs == nil {
		return nil
	}
	return hs.Close()
}

// Close stops the server, revokes every live lease (drops its role) and
// closes the database connections.
func (s *Server) Close() error {
	err := s.Stop()
	s.stopReaper()
	<-s.reaperDone
	s.mu.Lock()
	leases := s.leases
	s.leases = map[string]*lease{}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, l := range leases {
		if e := l.revoke(ctx); e != nil {
			err = errors.Join(err, e)
		}
	}
	if s.admin != nil {
		s.admin.Close()
	}
	return err
}

// reap revokes expired leases and forgets expired tokens, as Vault's
// expiration manager does.
func (s *Server) reap(ctx context.Context) {
	defer close(s.reaperDone)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		var expired []*lease
		s.mu.Lock()
		for id, l := range s.leases {
			if now.After(l.expires) {
				expired = append(expired, l)
				delete(s.leases, id)
			}
		}
		for id, tok := range s.tokens {
			if tok.ttl > 0 && now.After(tok.expires) {
				delete(s.tokens, id)
			}
		}
		s.mu.Unlock()
		for _, l := range expired {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			l.revoke(dctx)
			cancel()
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
