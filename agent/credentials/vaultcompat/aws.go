package vaultcompat

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"strings"
	"time"
)

// AWS is the AWS secrets engine. It has no AWS account behind it: it mints
// key pairs itself and tells Keys, the account store of an S3-compatible
// test server, which pairs exist, so that the keys it issues work there
// and stop working when their lease is revoked or expires, as an IAM
// user's key deleted by Vault does.
type AWS struct {
	// Roles are what aws/creds/<role> and aws/sts/<role> issue.
	Roles map[string]AWSRole `yaml:"roles"`
	// Keys learns every key pair issued and forgets it at revocation;
	// nil: the keys work nowhere (the cmd server's case).
	Keys AWSKeys `yaml:"-"`
}

// AWSRole is one role of the AWS engine.
type AWSRole struct {
	// DefaultTTL (default 1h) and MaxTTL (default 24h) bound leases.
	DefaultTTL time.Duration `yaml:"default_ttl"`
	MaxTTL     time.Duration `yaml:"max_ttl"`
}

// AWSKeys is an account store that accepts the keys the engine issues.
// Its methods are called concurrently.
type AWSKeys interface {
	// AddKey makes a key pair (with its session token, "" for none) work.
	AddKey(accessKeyID, secretAccessKey, sessionToken string)
	// RemoveKey makes it stop working.
	RemoveKey(accessKeyID string)
}

// awsCreds issues a key pair: aws/creds/<role> an IAM user's key (its
// lease renewable, like Vault's iam_user type), aws/sts/<role> temporary
// keys with a session token (not renewable, like assumed_role). Revoking
// either lease removes the key.
func (s *Server) awsCreds(r *http.Request, _ *token) (*response, error) {
	if s.cfg.AWS == nil {
		return nil, errorf(http.StatusNotFound, "no handler for route %q", strings.TrimPrefix(r.URL.Path, "/v1/"))
	}
	roleName := r.PathValue("role")
	role, ok := s.cfg.AWS.Roles[roleName]
	if !ok {
		return nil, errorf(http.StatusBadRequest, "role %q not found", roleName)
	}
	ttl, maxTTL := role.DefaultTTL, role.MaxTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	if maxTTL <= 0 {
		maxTTL = 24 * time.Hour
	}
	sts := strings.HasPrefix(r.URL.Path, "/v1/aws/sts/")
	// The shapes of AWS's own: AKIA (long-term) or ASIA (temporary) and
	// 16 upper-case characters, a 40-character secret.
	prefix, token := "AKIA", ""
	if sts {
		prefix, token = "ASIA", randomBase64(96)
	}
	access := prefix + strings.ToUpper(randomHex(8))
	secret := randomBase64(30)
	if k := s.cfg.AWS.Keys; k != nil {
		k.AddKey(access, secret, token)
	}
	kind := "creds"
	if sts {
		kind = "sts"
	}
	id := "aws/" + kind + "/" + roleName + "/" + randomHex(12)
	now := time.Now()
	s.mu.Lock()
	s.leases[id] = &lease{
		revoke: func(context.Context) error {
			if k := s.cfg.AWS.Keys; k != nil {
				k.RemoveKey(access)
			}
			return nil
		},
		renewable: !sts, ttl: ttl, expires: now.Add(ttl), maxExpiry: now.Add(maxTTL)}
	s.mu.Unlock()
	var tok any
	if token != "" {
		tok = token
	}
	return &response{LeaseID: id, Renewable: !sts, LeaseDuration: seconds(ttl),
		Data: map[string]any{"access_key": access, "secret_key": secret, "security_token": tok}}, nil
}

// randomBase64 is n random bytes in the alphabet of AWS secrets.
func randomBase64(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}
