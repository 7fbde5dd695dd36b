package credentials

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Config is the daemon config's `credentials:` block.
//
//	credentials:
//	  default: local              # source for targets whose credential block names none
//	  pool:                       # pre-issued credentials kept ready, per target
//	    orders-db: 2
//	  reuse:                      # logged-in server connections kept between sessions, per target
//	    orders-db: {servers: 4, idle: 1m}
//	  static:
//	    legacy: {username: app, password_file: /etc/interlock/legacy.pw}
//	    forge-token: {password_file: /etc/interlock/forge.token}      # an HTTP API token
//	    old-hosts: {private_key_file: /etc/interlock/old-hosts.key}   # SSH
//	  embedded:
//	    local:
//	      admin_dsn_file: /etc/interlock/pg-admin.dsn
//	      template: agent_readonly
//	      ttl: 15m
//	  vault:
//	    address: https://vault.internal:8200
//	    ca_cert: /etc/interlock/vault-ca.pem
//	    auth: {method: approle, role_id: interlockd, secret_id_file: /etc/interlock/secret-id}
//
// Source names are the keys of static and embedded, and "vault" for the
// Vault block; they must be distinct.
type Config struct {
	// Default names the source used when a Ref names none. When empty and
	// exactly one source is configured, that one is the default.
	Default string `yaml:"default"`
	// Pool is the number of pre-issued credentials kept ready per target
	// name. Each pooled credential is handed to one session only; the pool
	// refills in the background and is revoked at Close.
	Pool map[string]int `yaml:"pool"`
	// Reuse keeps, per target name, the logged-in server connections of
	// ended sessions for the next sessions of the same identity (see
	// ReuseConfig). Off for a target it does not name.
	Reuse map[string]ReuseConfig `yaml:"reuse"`
	// Static sources hand out one fixed credential (tests, legacy targets).
	Static map[string]StaticConfig `yaml:"static"`
	// Embedded sources create a PostgreSQL role per session from an admin
	// connection; the default when there is no Vault.
	Embedded map[string]EmbeddedConfig `yaml:"embedded"`
	// Vault, when set, is the source named "vault".
	Vault *VaultConfig `yaml:"vault"`
}

// ReuseConfig keeps the server connections of a target's ended sessions,
// as PgBouncer's session mode does, so that a new session starts without a
// login upstream (for PostgreSQL: a backend's start and SCRAM, tens of
// milliseconds). A kept connection is reset first (DISCARD ALL), serves
// only the sessions of the identity whose session logged it in, with the
// same database and startup settings, and only under the policy it was
// opened under. Its credential lives as long as it does, not as long as
// one session: it is revoked when the connection has been idle for Idle,
// when more than Servers are idle, or when interlockd stops.
type ReuseConfig struct {
	// Servers caps the idle connections kept per identity; 1..64.
	Servers int `yaml:"servers"`
	// Idle is how long an idle connection is kept; default 1m, at most 1h.
	Idle time.Duration `yaml:"idle"`
}

// defaultReuseIdle is ReuseConfig.Idle's default: long enough for agents
// that connect per task, short enough that a credential an agent no longer
// uses does not outlive it by much.
const defaultReuseIdle = time.Minute

// StaticConfig is a fixed username and password (a token alone for an HTTP
// API, written into requests as .secret), or an SSH private key.
type StaticConfig struct {
	Username string `yaml:"username"`
	// Password, or PasswordFile (preferred: keeps the secret out of the
	// config file); the file's trailing newline is ignored.
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	// PrivateKeyFile is an OpenSSH private key (no passphrase) that SSH
	// targets naming this source log in with, for hosts that trust no
	// certificate authority. The login user is the SSH target's, so
	// Username is not needed.
	PrivateKeyFile string `yaml:"private_key_file"`
}

// EmbeddedConfig configures the embedded PostgreSQL issuer.
type EmbeddedConfig struct {
	// AdminDSN (or AdminDSNFile) is a libpq URL or key=value string for a
	// role with CREATEROLE (or a superuser) on the target server; on
	// PostgreSQL 16 and later it also needs ADMIN OPTION on the templates.
	// Manager.CheckAccess tells what it lacks.
	AdminDSN     string `yaml:"admin_dsn"`
	AdminDSNFile string `yaml:"admin_dsn_file"`
	// RolePrefix starts every issued role's name; default "interlock_".
	// Recover only drops roles it journaled, never by prefix.
	RolePrefix string `yaml:"role_prefix"`
	// TTL is the default VALID UNTIL distance; default 15m.
	TTL time.Duration `yaml:"ttl"`
	// Template is the role granted when a Ref names none; a Ref that names
	// none with no Template here fails Manager.CheckRef.
	Template string `yaml:"template"`
	// ReassignTo receives objects a session's role created before it is
	// dropped; default the admin role itself.
	ReassignTo string `yaml:"reassign_to"`
	// MaxConns caps the admin connections kept open; default 2.
	MaxConns int `yaml:"max_conns"`
}

// VaultConfig configures the Vault source.
type VaultConfig struct {
	Address string `yaml:"address"`
	// CACert is a PEM file to verify Vault's certificate.
	CACert string `yaml:"ca_cert"`
	// TLSServerName overrides the name checked in Vault's certificate.
	TLSServerName string    `yaml:"tls_server_name"`
	Auth          VaultAuth `yaml:"auth"`
	// DatabaseMount, SSHMount, AWSMount are the secrets engines' mount
	// paths; defaults "database", "ssh" and "aws".
	DatabaseMount string `yaml:"database_mount"`
	SSHMount      string `yaml:"ssh_mount"`
	AWSMount      string `yaml:"aws_mount"`
	// Timeout bounds each Vault request; default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// VaultAuth says how interlockd logs in to Vault. Its token is renewed while
// the Manager runs; with approle and cert it logs in again when renewal is
// no longer possible.
type VaultAuth struct {
	// Method is token, approle or cert.
	Method string `yaml:"method"`
	// Token or TokenFile for method token.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
	// RoleID and SecretID (or SecretIDFile) for method approle.
	RoleID       string `yaml:"role_id"`
	SecretID     string `yaml:"secret_id"`
	SecretIDFile string `yaml:"secret_id_file"`
	// ClientCert and ClientKey (PEM files) for method cert; Name selects
	// the cert role (optional).
	ClientCert string `yaml:"client_cert"`
	ClientKey  string `yaml:"client_key"`
	Name       string `yaml:"name"`
	// Mount is the auth method's mount path; default the method's name.
	Mount string `yaml:"mount"`
}

const vaultSourceName = "vault"

// validate checks names and required fields without touching the network.
func (c *Config) validate() error {
	seen := map[string]string{}
	add := func(name, kind string) error {
		if name == "" {
			return fmt.Errorf("%s source with an empty name", kind)
		}
		if prev, ok := seen[name]; ok {
			return fmt.Errorf("source name %q used by %s and %s", name, prev, kind)
		}
		seen[name] = kind
		return nil
	}
	for name, s := range c.Static {
		if err := add(name, "static"); err != nil {
			return err
		}
		if s.PrivateKeyFile != "" {
			if s.Username != "" || s.Password != "" || s.PasswordFile != "" {
				return fmt.Errorf("static source %q: private_key_file stands alone (an SSH target names its login user)", name)
			}
			continue
		}
		// A token for an HTTP API has no user name; a database login has.
		if s.Username == "" && s.Password == "" && s.PasswordFile == "" {
			return fmt.Errorf("static source %q: username or password (password_file) is required", name)
		}
		if s.Password != "" && s.PasswordFile != "" {
			return fmt.Errorf("static source %q: password and password_file are exclusive", name)
		}
	}
	for name, e := range c.Embedded {
		if err := add(name, "embedded"); err != nil {
			return err
		}
		if (e.AdminDSN == "") == (e.AdminDSNFile == "") {
			return fmt.Errorf("embedded source %q: exactly one of admin_dsn and admin_dsn_file is required", name)
		}
		if len(e.RolePrefix) > 24 {
			return fmt.Errorf("embedded source %q: role_prefix longer than 24 bytes", name)
		}
		if e.TTL < 0 {
			return fmt.Errorf("embedded source %q: negative ttl", name)
		}
	}
	if c.Vault != nil {
		if err := add(vaultSourceName, "vault"); err != nil {
			return err
		}
		if c.Vault.Address == "" {
			return fmt.Errorf("vault: address is required")
		}
		switch c.Vault.Auth.Method {
		case "token":
			if (c.Vault.Auth.Token == "") == (c.Vault.Auth.TokenFile == "") {
				return fmt.Errorf("vault auth token: exactly one of token and token_file is required")
			}
		case "approle":
			if c.Vault.Auth.RoleID == "" || (c.Vault.Auth.SecretID == "") == (c.Vault.Auth.SecretIDFile == "") {
				return fmt.Errorf("vault auth approle: role_id and exactly one of secret_id and secret_id_file are required")
			}
		case "cert":
			if c.Vault.Auth.ClientCert == "" || c.Vault.Auth.ClientKey == "" {
				return fmt.Errorf("vault auth cert: client_cert and client_key are required")
			}
		default:
			return fmt.Errorf("vault auth method %q: want token, approle or cert", c.Vault.Auth.Method)
		}
	}
	if c.Default != "" {
		if _, ok := seen[c.Default]; !ok {
			return fmt.Errorf("default source %q is not configured", c.Default)
		}
	}
	for target, n := range c.Pool {
		if n < 0 || n > 64 {
			return fmt.Errorf("pool for target %q: size %d out of range 0..64", target, n)
		}
	}
	for target, r := range c.Reuse {
		if r.Servers < 1 || r.Servers > 64 {
			return fmt.Errorf("reuse for target %q: servers %d out of range 1..64", target, r.Servers)
		}
		if r.Idle < 0 || r.Idle > time.Hour {
			return fmt.Errorf("reuse for target %q: idle %v out of range 0..1h", target, r.Idle)
		}
	}
	return nil
}

// secret returns inline, or the trimmed contents of file.
func secret(inline, file string) (string, error) {
	if file == "" {
		return inline, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}
