package credentials

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// embedded is the built-in PostgreSQL issuer: per session it creates a login
// role with a random password, VALID UNTIL now plus the TTL, member of a
// template role; renewal moves VALID UNTIL; revocation terminates the role's
// backends, hands its objects over and drops it.
//
// The admin role needs CREATEROLE (PostgreSQL 16+: with ADMIN OPTION on the
// template roles) and pg_signal_backend, or simply superuser.
type embedded struct {
	connCfg    *pgx.ConnConfig
	prefix     string
	ttl        time.Duration
	template   string
	reassignTo string
	idle       chan *pgx.Conn // open admin connections not in use
	slots      chan struct{}  // one token per connection that may be open
}

func newEmbedded(c EmbeddedConfig) (*embedded, error) {
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
		connCfg: cc, prefix: c.RolePrefix, ttl: c.TTL,
		template: c.Template, reassignTo: c.ReassignTo,
	}
	if e.prefix == "" {
		e.prefix = "interlock_"
	}
	if e.ttl == 0 {
		e.ttl = 15 * time.Minute
	}
	n := c.MaxConns
	if n <= 0 {
		n = 2
	}
	e.idle = make(chan *pgx.Conn, n)
	e.slots = make(chan struct{}, n)
	return e, nil
}

// withConn runs fn on an admin connection, dialing when none is idle. A
// connection that was idle may have died with a server restart; fn is then
// run once more on a fresh one.
func (e *embedded) withConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	select {
	case e.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-e.slots }()
	var conn *pgx.Conn
	select {
	case conn = <-e.idle:
	default:
	}
	if conn != nil {
		err := fn(conn)
		if !conn.IsClosed() {
			e.idle <- conn
			return err
		}
		conn.Close(ctx)
	}
	conn, err := pgx.ConnectConfig(ctx, e.connCfg)
	if err != nil {
		return fmt.Errorf("connect admin: %w", err)
	}
	err = fn(conn)
	if conn.IsClosed() {
		conn.Close(ctx)
	} else {
		e.idle <- conn
	}
	return err
}

func (e *embedded) issue(ctx context.Context, req Request, commit func(string) error) (grant, error) {
	template := req.Ref.Template
	if template == "" {
		template = e.template
	}
	if template == "" {
		return grant{}, errors.New("no template role: set template in the target's credential block or the embedded source")
	}
	ttl := req.Ref.TTL
	if ttl <= 0 {
		ttl = e.ttl
	}
	name := roleName(e.prefix, req.Identity)
	password := randomPassword()
	verifier, err := scramVerifier(password)
	if err != nil {
		return grant{}, err
	}
	// Journal the name before the role exists: a crash from here on leaves
	// a record Recover can act on.
	if err := commit(name); err != nil {
		return grant{}, err
	}
	expires := time.Now().Add(ttl)
	create := fmt.Sprintf("CREATE ROLE %s LOGIN INHERIT PASSWORD %s VALID UNTIL %s IN ROLE %s",
		quoteIdent(name), quoteLiteral(verifier), quoteLiteral(pgTime(expires)), quoteIdent(template))
	err = e.withConn(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, create, pgx.QueryExecModeSimpleProtocol)
		return err
	})
	if err != nil {
		return grant{}, fmt.Errorf("create role %s: %w", name, err)
	}
	return grant{
		cred:     Credential{Username: name, Password: password, Expires: expires},
		handle:   name,
		renewTTL: ttl,
	}, nil
}

func (e *embedded) renew(ctx context.Context, name string, ttl time.Duration) (time.Time, error) {
	expires := time.Now().Add(ttl)
	stmt := fmt.Sprintf("ALTER ROLE %s VALID UNTIL %s", quoteIdent(name), quoteLiteral(pgTime(expires)))
	err := e.withConn(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, stmt, pgx.QueryExecModeSimpleProtocol)
		return err
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("renew role %s: %w", name, err)
	}
	return expires, nil
}

// revoke locks the role out, ends its sessions, hands the objects it owns in
// any database to reassignTo (dropping its privileges) and drops it.
func (e *embedded) revoke(ctx context.Context, name string) error {
	var dbs []string
	err := e.withConn(ctx, func(c *pgx.Conn) error {
		var exists bool
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&exists); err != nil {
			return fmt.Errorf("look up role: %w", err)
		}
		if !exists {
			return nil
		}
		if _, err := c.Exec(ctx, "ALTER ROLE "+quoteIdent(name)+" NOLOGIN"); err != nil {
			return fmt.Errorf("lock role: %w", err)
		}
		// Wait up to a second per backend for it to exit, so the role is
		// gone, not just dropped, when revoke returns.
		if _, err := c.Exec(ctx, "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity WHERE usename = $1", name); err != nil {
			return fmt.Errorf("terminate backends: %w", err)
		}
		rows, err := c.Query(ctx, `SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
			WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = $1)
			AND d.datname <> current_database() AND d.datallowconn`, name)
		if err != nil {
			return fmt.Errorf("find owned objects: %w", err)
		}
		dbs, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("find owned objects: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("revoke role %s: %w", name, err)
	}
	for _, db := range dbs {
		if err := e.dropOwnedIn(ctx, db, name); err != nil {
			return fmt.Errorf("revoke role %s: %w", name, err)
		}
	}
	err = e.withConn(ctx, func(c *pgx.Conn) error {
		tx, err := c.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, e.dropOwned(name)); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "DROP ROLE IF EXISTS "+quoteIdent(name)); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
	if err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	return nil
}

// dropOwned reassigns the role's objects in the current database and drops
// its remaining privileges there.
func (e *embedded) dropOwned(name string) string {
	to := "CURRENT_USER"
	if e.reassignTo != "" {
		to = quoteIdent(e.reassignTo)
	}
	return fmt.Sprintf("REASSIGN OWNED BY %[1]s TO %[2]s; DROP OWNED BY %[1]s", quoteIdent(name), to)
}

// dropOwnedIn runs dropOwned in another database: REASSIGN and DROP OWNED
// only see the database they run in.
func (e *embedded) dropOwnedIn(ctx context.Context, db, name string) error {
	cc := e.connCfg.Copy()
	cc.Database = db
	c, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("connect admin to database %s: %w", db, err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, e.dropOwned(name)); err != nil {
		return fmt.Errorf("drop owned in database %s: %w", db, err)
	}
	return nil
}

func (e *embedded) close() error {
	for {
		select {
		case c := <-e.idle:
			c.Close(context.Background())
		default:
			return nil
		}
	}
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
	suffix := strings.ToLower(rand.Text()[:12])
	name := prefix
	if b.Len() > 0 {
		name += b.String() + "_"
	}
	return name + suffix
}

func pgTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000000") + "+00" }

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// quoteLiteral quotes a string constant the way PostgreSQL's quote_literal
// does, correct whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return ` E'` + strings.ReplaceAll(s, `\`, `\\`) + `'`
	}
	return "'" + s + "'"
}
