package credentials

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/pgrole"
	"github.com/jackc/pgx/v5"
)

// embedded is the built-in PostgreSQL issuer: per session it creates a login
// role with a random password, VALID UNTIL now plus the TTL, member of a
// template role; renewal moves VALID UNTIL; revocation terminates the role's
// backends, hands its objects over and drops it.
type embedded struct {
	name       string // the source's name in the config
	admin      *pgrole.Admin
	prefix     string
	ttl        time.Duration
	template   string
	reassignTo string
}

func newEmbedded(name string, c EmbeddedConfig) (*embedded, error) {
	dsn, err := secret(c.AdminDSN, c.AdminDSNFile)
	if err != nil {
		return nil, err
	}
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors can quote the DSN, password included.
		return nil, errors.New("parse admin_dsn: invalid connection string")
	}
	e := &embedded{
		name:   name,
		admin:  pgrole.New(cc, max(c.MaxConns, 2)),
		prefix: c.RolePrefix, ttl: c.TTL, template: c.Template, reassignTo: c.ReassignTo,
	}
	if e.prefix == "" {
		e.prefix = "interlock_"
	}
	if e.ttl == 0 {
		e.ttl = 15 * time.Minute
	}
	return e, nil
}

// templateOf is the role a session of ref joins.
func (e *embedded) templateOf(ref Ref) string {
	if ref.Template != "" {
		return ref.Template
	}
	return e.template
}

func (e *embedded) checkRef(ref Ref) error {
	if e.templateOf(ref) == "" {
		return fmt.Errorf("no template role: set template in the target's credential block or credentials.embedded.%s.template", e.name)
	}
	return nil
}

// checkAccess checks the admin role against the templates refs join: a
// CREATEROLE admin that could create roles but not drop them again would
// leave every session's role behind.
func (e *embedded) checkAccess(ctx context.Context, refs []Ref) error {
	var templates []string
	for _, r := range refs {
		if t := e.templateOf(r); t != "" && !slices.Contains(templates, t) {
			templates = append(templates, t)
		}
	}
	return e.admin.CheckAdmin(ctx, templates, e.reassignTo)
}

func (e *embedded) issue(ctx context.Context, req Request, commit func(string) error) (grant, error) {
	if err := e.checkRef(req.Ref); err != nil {
		return grant{}, err
	}
	template := e.templateOf(req.Ref)
	ttl := req.Ref.TTL
	if ttl <= 0 {
		ttl = e.ttl
	}
	name := roleName(e.prefix, req.Identity)
	password := pgrole.RandomPassword()
	// Journal the name before the role exists: a crash from here on leaves
	// a record Recover can act on.
	if err := commit(name); err != nil {
		return grant{}, err
	}
	expires := time.Now().Add(ttl)
	if err := e.admin.Create(ctx, name, password, expires, template); err != nil {
		return grant{}, err
	}
	return grant{
		cred:     Credential{Username: name, Password: password, Expires: expires},
		handle:   name,
		renewTTL: ttl,
	}, nil
}

func (e *embedded) renew(ctx context.Context, name string, ttl time.Duration) (time.Time, error) {
	expires := time.Now().Add(ttl)
	if err := e.admin.Extend(ctx, name, expires); err != nil {
		return time.Time{}, err
	}
	return expires, nil
}

func (e *embedded) revoke(ctx context.Context, name string) error {
	return e.admin.Drop(ctx, name, e.reassignTo)
}

func (e *embedded) close() error {
	e.admin.Close()
	return nil
}

// roleName is prefix, the identity reduced to [a-z0-9_] and a random
// suffix: at most 24+24+1+12 bytes, within PostgreSQL's 63-byte limit.
func roleName(prefix, identity string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(identity) {
		if b.Len() >= 24 {
			break
		}
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		case r == '-' || r == '.' || r == '/' || r == ':':
			b.WriteByte('_')
		}
	}
	name := prefix
	if b.Len() > 0 {
		name += b.String() + "_"
	}
	return name + strings.ToLower(rand.Text()[:12])
}
