package credentials

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
	"golang.org/x/crypto/ssh"
)

// vaultSource issues credentials from Vault: database/creds/<role> leases
// (renewed, revoked through sys/leases), ssh/sign/<role> certificates and
// KV v2 reads. It logs in on first use and keeps its token alive in the
// background while the Manager runs.
type vaultSource struct {
	cfg    VaultConfig
	client *vault.Client
	ctx    context.Context // the Manager's: ends the token loop

	mu       sync.Mutex
	loggedIn bool
	tokenTTL time.Duration // 0: the token does not expire
	loopDone chan struct{} // nil until the token loop starts
}

func newVault(ctx context.Context, cfg VaultConfig) (*vaultSource, error) {
	if cfg.DatabaseMount == "" {
		cfg.DatabaseMount = "database"
	}
	if cfg.SSHMount == "" {
		cfg.SSHMount = "ssh"
	}
	if cfg.AWSMount == "" {
		cfg.AWSMount = "aws"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Auth.Mount == "" {
		cfg.Auth.Mount = cfg.Auth.Method
	}
	conf := vault.DefaultConfig()
	conf.Address = cfg.Address
	conf.Timeout = cfg.Timeout
	// A connect must fail fast with a clear error when Vault is down;
	// renewal retries on its own schedule.
	conf.MaxRetries = 1
	conf.MinRetryWait = 100 * time.Millisecond
	conf.MaxRetryWait = 400 * time.Millisecond
	if err := conf.ConfigureTLS(&vault.TLSConfig{
		CACert: cfg.CACert, TLSServerName: cfg.TLSServerName,
		ClientCert: cfg.Auth.ClientCert, ClientKey: cfg.Auth.ClientKey,
	}); err != nil {
		return nil, fmt.Errorf("configure vault tls: %w", err)
	}
	client, err := vault.NewClient(conf)
	if err != nil {
		return nil, fmt.Errorf("create vault client: %w", err)
	}
	// NewClient picks up VAULT_TOKEN from the environment; only the
	// configured auth counts.
	client.ClearToken()
	return &vaultSource{cfg: cfg, client: client, ctx: ctx}, nil
}

// login authenticates once; later calls return at once while the token is
// kept alive by tokenLoop.
func (v *vaultSource) login(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.loggedIn {
		return nil
	}
	if err := v.authenticate(ctx); err != nil {
		return err
	}
	v.loggedIn = true
	if v.loopDone == nil {
		v.loopDone = make(chan struct{})
		go v.tokenLoop()
	}
	return nil
}

// authenticate logs in with the configured method and records the token's
// TTL. Callers hold v.mu.
func (v *vaultSource) authenticate(ctx context.Context) error {
	a := v.cfg.Auth
	var body map[string]any
	switch a.Method {
	case "token":
		tok, err := secret(a.Token, a.TokenFile)
		if err != nil {
			return err
		}
		v.client.SetToken(tok)
		s, err := v.client.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			v.client.ClearToken()
			return fmt.Errorf("look up vault token: %w", err)
		}
		ttl, err := s.TokenTTL()
		if err != nil {
			return fmt.Errorf("look up vault token: %w", err)
		}
		v.tokenTTL = ttl
		return nil
	case "approle":
		sid, err := secret(a.SecretID, a.SecretIDFile)
		if err != nil {
			return err
		}
		body = map[string]any{"role_id": a.RoleID, "secret_id": sid}
	case "cert":
		body = map[string]any{}
		if a.Name != "" {
			body["name"] = a.Name
		}
	}
	s, err := v.client.Logical().WriteWithContext(ctx, "auth/"+a.Mount+"/login", body)
	if err != nil {
		return fmt.Errorf("log in to vault with %s: %w", a.Method, err)
	}
	if s == nil || s.Auth == nil || s.Auth.ClientToken == "" {
		return fmt.Errorf("log in to vault with %s: no token in the response", a.Method)
	}
	v.client.SetToken(s.Auth.ClientToken)
	v.tokenTTL = time.Duration(s.Auth.LeaseDuration) * time.Second
	return nil
}

// tokenLoop renews the token at half its TTL. When renewal fails or no
// longer extends the token (its max TTL is near), approle and cert log in
// again; a static token can only be renewed, and issuance reports the
// failure once it has expired.
func (v *vaultSource) tokenLoop() {
	defer close(v.loopDone)
	v.mu.Lock()
	ttl := v.tokenTTL
	v.mu.Unlock()
	if ttl <= 0 {
		return // a token without expiry (root, or periodic without TTL)
	}
	wait := ttl / 2
	for {
		select {
		case <-v.ctx.Done():
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(v.ctx, v.cfg.Timeout)
		err := v.renewToken(ctx)
		cancel()
		v.mu.Lock()
		ttl = v.tokenTTL
		v.mu.Unlock()
		if err != nil {
			// Try again soon: the token may still have half its life.
			wait = max(min(ttl/5, 30*time.Second), time.Second)
			continue
		}
		wait = max(ttl/2, time.Second)
	}
}

// renewToken asks for another tokenTTL, or logs in again when renewal
// fails or falls short.
func (v *vaultSource) renewToken(ctx context.Context) error {
	v.mu.Lock()
	inc := v.tokenTTL
	v.mu.Unlock()
	s, err := v.client.Auth().Token().RenewSelfWithContext(ctx, int(inc/time.Second))
	v.mu.Lock()
	defer v.mu.Unlock()
	if err == nil && s != nil && s.Auth != nil {
		got := time.Duration(s.Auth.LeaseDuration) * time.Second
		if got >= inc/2 || v.cfg.Auth.Method == "token" {
			if got > 0 {
				v.tokenTTL = got
			}
			return nil
		}
	}
	if v.cfg.Auth.Method == "token" {
		return fmt.Errorf("renew vault token: %w", err)
	}
	return v.authenticate(ctx)
}

func (v *vaultSource) issue(ctx context.Context, req Request, commit func(string) error) (grant, error) {
	if err := v.login(ctx); err != nil {
		return grant{}, err
	}
	g, err := v.issueKind(ctx, req, commit)
	var re *vault.ResponseError
	if err != nil && errors.As(err, &re) && re.StatusCode == http.StatusForbidden && v.cfg.Auth.Method != "token" {
		// The token died under us (revoked, or expired while Vault was
		// unreachable): log in again once.
		v.mu.Lock()
		lerr := v.authenticate(ctx)
		v.mu.Unlock()
		if lerr != nil {
			return grant{}, errors.Join(err, lerr)
		}
		return v.issueKind(ctx, req, commit)
	}
	return g, err
}

func (v *vaultSource) checkRef(ref Ref) error {
	switch ref.Kind {
	case "", "database", "ssh":
		if ref.Role == "" {
			return fmt.Errorf("vault %s credential: role is required", cmp.Or(ref.Kind, "database"))
		}
	case "kv":
		if ref.Path == "" {
			return errors.New("vault kv credential: path is required")
		}
	case "aws":
		if _, err := v.awsPath(ref); err != nil {
			return err
		}
	case "generic":
		if ref.Path == "" {
			return errors.New("vault generic credential: path is required")
		}
	default:
		return fmt.Errorf("vault credential kind %q: want database, ssh, kv, aws or generic", ref.Kind)
	}
	return nil
}

// awsPath is where an aws credential is read: the path the Ref names
// (aws/creds/<role> or aws/sts/<role> under the AWS mount), or
// aws/creds/<role>.
func (v *vaultSource) awsPath(ref Ref) (string, error) {
	if ref.Path == "" {
		if ref.Role == "" {
			return "", errors.New("vault aws credential: role (aws/creds/ROLE) or path (aws/sts/ROLE) is required")
		}
		return v.cfg.AWSMount + "/creds/" + ref.Role, nil
	}
	rest, ok := strings.CutPrefix(ref.Path, v.cfg.AWSMount+"/")
	if kind, role, _ := strings.Cut(rest, "/"); !ok || (kind != "creds" && kind != "sts") || role == "" || strings.Contains(role, "/") {
		return "", fmt.Errorf("vault aws credential: path %q: want %[2]s/creds/ROLE or %[2]s/sts/ROLE", ref.Path, v.cfg.AWSMount)
	}
	return ref.Path, nil
}

// checkAccess checks nothing: what a Vault role may do is Vault's policy,
// which only an issue request tests, and that would mint a credential.
func (v *vaultSource) checkAccess(context.Context, []Ref) error { return nil }

func (v *vaultSource) issueKind(ctx context.Context, req Request, commit func(string) error) (grant, error) {
	switch req.Ref.Kind {
	case "", "database":
		return v.issueDatabase(ctx, req, commit)
	case "ssh":
		return v.issueSSH(ctx, req)
	case "kv":
		return v.issueKV(ctx, req)
	case "aws":
		return v.issueAWS(ctx, req, commit)
	case "generic":
		return v.issueGeneric(ctx, req, commit)
	}
	return grant{}, fmt.Errorf("vault credential kind %q: want database, ssh, kv, aws or generic", req.Ref.Kind)
}

func (v *vaultSource) issueDatabase(ctx context.Context, req Request, commit func(string) error) (grant, error) {
	if req.Ref.Role == "" {
		return grant{}, errors.New("vault database credential: role is required")
	}
	path := v.cfg.DatabaseMount + "/creds/" + req.Ref.Role
	s, err := v.client.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return grant{}, fmt.Errorf("read %s: %w", path, err)
	}
	if s == nil || s.Data == nil {
		return grant{}, fmt.Errorf("read %s: no credential returned", path)
	}
	user, _ := s.Data["username"].(string)
	pass, _ := s.Data["password"].(string)
	if s.LeaseID != "" {
		if err := commit(s.LeaseID); err != nil {
			// The lease was never journaled: revoke it now or it lives
			// to its TTL.
			v.client.Sys().RevokeWithContext(context.WithoutCancel(ctx), s.LeaseID)
			return grant{}, err
		}
	}
	if user == "" || pass == "" {
		return grant{}, fmt.Errorf("read %s: response lacks username or password", path)
	}
	g := grant{
		cred:   Credential{Username: user, Password: pass},
		handle: s.LeaseID,
	}
	if s.LeaseDuration > 0 {
		lease := time.Duration(s.LeaseDuration) * time.Second
		g.cred.Expires = time.Now().Add(lease)
		if s.Renewable {
			g.renewTTL = lease
			if req.Ref.TTL > 0 {
				g.renewTTL = req.Ref.TTL
			}
		}
	}
	return g, nil
}

// issueAWS reads an AWS key pair: Username is the access key id,
// Password the secret key, Data["security_token"] the session token of
// temporary keys. The lease is journaled before the keys are used.
func (v *vaultSource) issueAWS(ctx context.Context, req Request, commit func(string) error) (grant, error) {
	path, err := v.awsPath(req.Ref)
	if err != nil {
		return grant{}, err
	}
	s, err := v.client.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return grant{}, fmt.Errorf("read %s: %w", path, err)
	}
	if s == nil || s.Data == nil {
		return grant{}, fmt.Errorf("read %s: no credential returned", path)
	}
	if s.LeaseID != "" {
		if err := commit(s.LeaseID); err != nil {
			v.client.Sys().RevokeWithContext(context.WithoutCancel(ctx), s.LeaseID)
			return grant{}, err
		}
	}
	access, _ := s.Data["access_key"].(string)
	secretKey, _ := s.Data["secret_key"].(string)
	if access == "" || secretKey == "" {
		return grant{}, fmt.Errorf("read %s: response lacks access_key or secret_key", path)
	}
	g := grant{cred: Credential{Username: access, Password: secretKey, Data: map[string]string{}}, handle: s.LeaseID}
	if tok, _ := s.Data["security_token"].(string); tok != "" {
		g.cred.Data["security_token"] = tok
	}
	if s.LeaseDuration > 0 {
		lease := time.Duration(s.LeaseDuration) * time.Second
		g.cred.Expires = time.Now().Add(lease)
		if s.Renewable {
			g.renewTTL = cmp.Or(req.Ref.TTL, lease)
		}
	}
	return g, nil
}

// issueGeneric reads any Vault path (a plugin's token endpoint, say):
// every field of the response is in Data (strings as they are, other
// values as JSON), Password is the field the Ref names, and a lease the
// response carries is journaled, renewed and revoked like any other.
func (v *vaultSource) issueGeneric(ctx context.Context, req Request, commit func(string) error) (grant, error) {
	path := req.Ref.Path
	s, err := v.client.Logical().ReadWithContext(ctx, path)
	if err != nil {
		return grant{}, fmt.Errorf("read %s: %w", path, err)
	}
	if s == nil || s.Data == nil {
		return grant{}, fmt.Errorf("read %s: nothing there", path)
	}
	if s.LeaseID != "" {
		if err := commit(s.LeaseID); err != nil {
			v.client.Sys().RevokeWithContext(context.WithoutCancel(ctx), s.LeaseID)
			return grant{}, err
		}
	}
	cred := Credential{Data: make(map[string]string, len(s.Data))}
	for k, val := range s.Data {
		switch val := val.(type) {
		case string:
			cred.Data[k] = val
		case nil:
		default:
			b, _ := json.Marshal(val)
			cred.Data[k] = string(b)
		}
	}
	cred.Username = cred.Data["username"]
	if f := req.Ref.Field; f != "" {
		val, ok := cred.Data[f]
		if !ok {
			return grant{}, fmt.Errorf("read %s: the response has no field %q", path, f)
		}
		cred.Password = val
	}
	g := grant{cred: cred, handle: s.LeaseID}
	if s.LeaseDuration > 0 && s.LeaseID != "" {
		lease := time.Duration(s.LeaseDuration) * time.Second
		g.cred.Expires = time.Now().Add(lease)
		if s.Renewable {
			g.renewTTL = cmp.Or(req.Ref.TTL, lease)
		}
	}
	return g, nil
}

func (v *vaultSource) issueSSH(ctx context.Context, req Request) (grant, error) {
	if req.Ref.Role == "" || len(req.PublicKey) == 0 {
		return grant{}, errors.New("vault ssh certificate: role and public key are required")
	}
	body := map[string]any{
		"public_key": string(req.PublicKey),
		"cert_type":  "user",
	}
	if len(req.Ref.Principals) > 0 {
		body["valid_principals"] = strings.Join(req.Ref.Principals, ",")
	}
	if req.Ref.TTL > 0 {
		body["ttl"] = req.Ref.TTL.String()
	}
	path := v.cfg.SSHMount + "/sign/" + req.Ref.Role
	s, err := v.client.Logical().WriteWithContext(ctx, path, body)
	if err != nil {
		return grant{}, fmt.Errorf("write %s: %w", path, err)
	}
	if s == nil || s.Data == nil {
		return grant{}, fmt.Errorf("write %s: no certificate returned", path)
	}
	signed, _ := s.Data["signed_key"].(string)
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(signed))
	if err != nil {
		return grant{}, fmt.Errorf("parse signed key from %s: %w", path, err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return grant{}, fmt.Errorf("parse signed key from %s: not a certificate", path)
	}
	// A signed certificate cannot be revoked in Vault's CA mode; its
	// short validity is the bound.
	return grant{cred: Credential{
		Certificate: []byte(signed),
		Expires:     time.Unix(int64(cert.ValidBefore), 0),
	}}, nil
}

func (v *vaultSource) issueKV(ctx context.Context, req Request) (grant, error) {
	if req.Ref.Path == "" {
		return grant{}, errors.New("vault kv secret: path is required")
	}
	s, err := v.client.Logical().ReadWithContext(ctx, req.Ref.Path)
	if err != nil {
		return grant{}, fmt.Errorf("read %s: %w", req.Ref.Path, err)
	}
	if s == nil || s.Data == nil {
		return grant{}, fmt.Errorf("read %s: no secret there", req.Ref.Path)
	}
	fields, ok := s.Data["data"].(map[string]any)
	if !ok {
		return grant{}, fmt.Errorf("read %s: not a KV v2 secret (want a path like secret/data/app)", req.Ref.Path)
	}
	cred := Credential{Data: make(map[string]string, len(fields))}
	for k, val := range fields {
		cred.Data[k] = fmt.Sprint(val)
	}
	cred.Username, cred.Password = cred.Data["username"], cred.Data["password"]
	if f := req.Ref.Field; f != "" {
		v, ok := cred.Data[f]
		if !ok {
			return grant{}, fmt.Errorf("read %s: the secret has no field %q", req.Ref.Path, f)
		}
		cred.Password = v
	}
	return grant{cred: cred}, nil
}

func (v *vaultSource) renew(ctx context.Context, leaseID string, ttl time.Duration) (time.Time, error) {
	s, err := v.client.Sys().RenewWithContext(ctx, leaseID, int(ttl/time.Second))
	if err != nil {
		return time.Time{}, fmt.Errorf("renew vault lease: %w", err)
	}
	if s == nil {
		return time.Time{}, errors.New("renew vault lease: empty response")
	}
	return time.Now().Add(time.Duration(s.LeaseDuration) * time.Second), nil
}

func (v *vaultSource) revoke(ctx context.Context, leaseID string) error {
	if err := v.login(ctx); err != nil {
		return err
	}
	if err := v.client.Sys().RevokeWithContext(ctx, leaseID); err != nil {
		return fmt.Errorf("revoke vault lease: %w", err)
	}
	return nil
}

// close waits for the token loop, which the Manager's context ends.
func (v *vaultSource) close() error {
	v.mu.Lock()
	done := v.loopDone
	v.mu.Unlock()
	if done != nil {
		<-done
	}
	return nil
}
