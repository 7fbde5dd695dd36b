// Package pgrole creates, extends and drops short-lived PostgreSQL login
// roles from an admin connection. The embedded issuer and the
// Vault-compatible test server share it.
//
// The admin role needs CREATEROLE, or is a superuser. A CREATEROLE admin
// that is not a superuser may not end another role's backends nor hand over
// or drop its objects, so Drop first grants the admin membership in the
// role it is about to drop (with INHERIT): that makes the admin hold the
// role's privileges, which is what pg_terminate_backend, REASSIGN OWNED and
// DROP OWNED check. The membership goes with the role. What each version
// allows:
//
//   - PostgreSQL 15 and older: CREATEROLE may grant membership in any
//     role that is not a superuser, to anyone, itself included; the admin
//     role must have INHERIT (the default) for a membership to confer the
//     role's privileges.
//   - PostgreSQL 16 and later: CREATEROLE may only create roles, grant
//     memberships and drop roles where it holds ADMIN OPTION. Creating a
//     role gives its creator ADMIN OPTION on it, so minted roles are
//     covered; the template roles a minted role joins need ADMIN OPTION
//     granted to the admin (GRANT template TO admin WITH ADMIN OPTION). The
//     membership Drop grants says WITH INHERIT TRUE, whatever the admin
//     role's own INHERIT attribute.
//
// CheckAdmin tells at start whether all of that holds.
package pgrole

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Admin holds up to a fixed number of admin connections, dialed on demand.
// It is safe for concurrent use.
type Admin struct {
	cfg   *pgx.ConnConfig
	idle  chan *pgx.Conn // open connections not in use
	slots chan struct{}  // one token per connection that may be open
}

// New returns an Admin that connects with cfg and keeps at most maxConns
// connections (at least 1). It does not connect yet.
func New(cfg *pgx.ConnConfig, maxConns int) *Admin {
	maxConns = max(maxConns, 1)
	return &Admin{cfg: cfg, idle: make(chan *pgx.Conn, maxConns), slots: make(chan struct{}, maxConns)}
}

// withConn runs fn on an admin connection, dialing when none is idle. A
// connection that was idle may have died with a server restart; fn is then
// run once more on a fresh one.
func (a *Admin) withConn(ctx context.Context, fn func(*pgx.Conn) error) error {
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-a.slots }()
	var conn *pgx.Conn
	select {
	case conn = <-a.idle:
	default:
	}
	if conn != nil {
		err := fn(conn)
		if !conn.IsClosed() {
			a.idle <- conn
			return err
		}
	}
	conn, err := pgx.ConnectConfig(ctx, a.cfg)
	if err != nil {
		return fmt.Errorf("connect admin: %w", err)
	}
	err = fn(conn)
	if !conn.IsClosed() {
		a.idle <- conn
	}
	return err
}

func (a *Admin) exec(ctx context.Context, sql string) error {
	return a.withConn(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
		return err
	})
}

// Create creates login role name with password, valid until validUntil, a
// member (with INHERIT) of memberOf. Only a SCRAM-SHA-256 verifier of the
// password is sent, so it appears in no server log. The password must be one
// RandomPassword returned: the verifier takes no stretching (scramIterations).
func (a *Admin) Create(ctx context.Context, name, password string, validUntil time.Time, memberOf ...string) error {
	verifier, err := scramVerifier(password)
	if err != nil {
		return err
	}
	stmt := fmt.Sprintf("CREATE ROLE %s LOGIN INHERIT PASSWORD %s VALID UNTIL %s",
		QuoteIdent(name), QuoteLiteral(verifier), QuoteLiteral(pgTime(validUntil)))
	if len(memberOf) > 0 {
		q := make([]string, len(memberOf))
		for i, r := range memberOf {
			q[i] = QuoteIdent(r)
		}
		stmt += " IN ROLE " + strings.Join(q, ", ")
	}
	if err := a.exec(ctx, stmt); err != nil {
		return fmt.Errorf("create role %s: %w", name, err)
	}
	return nil
}

// ErrPrivileges is wrapped by CheckAdmin's error when the admin role cannot
// do what issuing or revoking needs; other errors (the server unreachable)
// do not wrap it.
var ErrPrivileges = errors.New("admin role cannot issue and revoke credentials")

// CheckAdmin reports whether the admin role can create roles that join each
// of templates and drop them again, handing their objects to reassignTo
// (empty: the admin). The error wraps ErrPrivileges and names every problem,
// with the statement that grants a missing privilege.
func (a *Admin) CheckAdmin(ctx context.Context, templates []string, reassignTo string) error {
	var admin string
	var problems []string
	err := a.withConn(ctx, func(c *pgx.Conn) error {
		var super, createrole, inherit bool
		err := c.QueryRow(ctx, "SELECT rolname, rolsuper, rolcreaterole, rolinherit FROM pg_roles WHERE rolname = current_user").
			Scan(&admin, &super, &createrole, &inherit)
		if err != nil {
			return fmt.Errorf("look up admin role: %w", err)
		}
		major := serverMajor(c)
		if !super && !createrole {
			problems = append(problems, fmt.Sprintf("admin role %[1]s lacks CREATEROLE (ALTER ROLE %[1]s CREATEROLE)", QuoteIdent(admin)))
		}
		// From 16 on, Drop's membership says INHERIT itself.
		if !super && major < 16 && !inherit {
			problems = append(problems, fmt.Sprintf("admin role %[1]s lacks INHERIT, needed to act as the roles it drops (ALTER ROLE %[1]s INHERIT)", QuoteIdent(admin)))
		}
		for _, t := range templates {
			var found, tsuper, admins bool
			err := c.QueryRow(ctx, `SELECT true, rolsuper, pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION')
				FROM pg_roles WHERE rolname = $1`, t).Scan(&found, &tsuper, &admins)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				problems = append(problems, fmt.Sprintf("template role %s does not exist", QuoteIdent(t)))
			case err != nil:
				return fmt.Errorf("look up template role %s: %w", t, err)
			case tsuper && !super:
				problems = append(problems, fmt.Sprintf("template role %s is a superuser role, which only a superuser may grant", QuoteIdent(t)))
			case major >= 16 && !admins:
				problems = append(problems, fmt.Sprintf("admin role %[2]s lacks ADMIN OPTION on template role %[1]s (GRANT %[1]s TO %[2]s WITH ADMIN OPTION)", QuoteIdent(t), QuoteIdent(admin)))
			}
		}
		if reassignTo != "" {
			var has bool
			err := c.QueryRow(ctx, "SELECT pg_has_role(current_user, oid, 'USAGE') FROM pg_roles WHERE rolname = $1", reassignTo).Scan(&has)
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				problems = append(problems, fmt.Sprintf("reassign_to role %s does not exist", QuoteIdent(reassignTo)))
			case err != nil:
				return fmt.Errorf("look up reassign_to role %s: %w", reassignTo, err)
			case !has:
				problems = append(problems, fmt.Sprintf("admin role %[2]s lacks the privileges of reassign_to role %[1]s (GRANT %[1]s TO %[2]s)", QuoteIdent(reassignTo), QuoteIdent(admin)))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check admin role: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrPrivileges, strings.Join(problems, "; "))
	}
	return nil
}

// Extend moves the role's VALID UNTIL. Sessions already logged in are not
// affected by VALID UNTIL either way; it bounds new logins.
func (a *Admin) Extend(ctx context.Context, name string, validUntil time.Time) error {
	stmt := fmt.Sprintf("ALTER ROLE %s VALID UNTIL %s", QuoteIdent(name), QuoteLiteral(pgTime(validUntil)))
	if err := a.exec(ctx, stmt); err != nil {
		return fmt.Errorf("extend role %s: %w", name, err)
	}
	return nil
}

// Drop locks the role out, terminates its backends (waiting up to a second
// each), hands the objects it owns in any database to reassignTo (empty:
// the admin role) dropping its privileges, and drops it. Dropping a role
// that does not exist succeeds.
func (a *Admin) Drop(ctx context.Context, name, reassignTo string) error {
	var dbs []string
	var exists bool
	err := a.withConn(ctx, func(c *pgx.Conn) error {
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", name).Scan(&exists); err != nil {
			return fmt.Errorf("look up role: %w", err)
		}
		if !exists {
			return nil
		}
		// Committed on its own before the rest: the privilege checks of
		// what follows see only committed memberships of this session.
		if _, err := c.Exec(ctx, grantSelf(c, name)); err != nil {
			return fmt.Errorf("grant admin membership: %w", err)
		}
		if _, err := c.Exec(ctx, "ALTER ROLE "+QuoteIdent(name)+" NOLOGIN"); err != nil {
			return fmt.Errorf("lock role: %w", err)
		}
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
	if err != nil || !exists {
		if err != nil {
			return fmt.Errorf("drop role %s: %w", name, err)
		}
		return nil
	}
	dropOwned := fmt.Sprintf("REASSIGN OWNED BY %[1]s TO %[2]s; DROP OWNED BY %[1]s", QuoteIdent(name), reassignTarget(reassignTo))
	// REASSIGN and DROP OWNED only see the database they run in.
	for _, db := range dbs {
		if err := a.inDatabase(ctx, db, dropOwned); err != nil {
			return fmt.Errorf("drop role %s: %w", name, err)
		}
	}
	// One simple query: its statements run as one transaction, so the
	// role is dropped with its objects' new owner or not at all, in one
	// round trip instead of four (BEGIN, the two, COMMIT).
	if err := a.exec(ctx, dropOwned+"; DROP ROLE IF EXISTS "+QuoteIdent(name)); err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	return nil
}

// grantSelf returns the statement that makes the admin a member of role,
// inheriting its privileges, in the dialect of c's server version.
func grantSelf(c *pgx.Conn, role string) string {
	stmt := "GRANT " + QuoteIdent(role) + " TO CURRENT_USER"
	if serverMajor(c) >= 16 {
		stmt += " WITH INHERIT TRUE"
	}
	return stmt
}

// serverMajor is the major version the server reported at login
// (server_version, e.g. "15.8 (Debian 15.8-0+deb12u1)"), 0 if unknown.
func serverMajor(c *pgx.Conn) int {
	var major int
	fmt.Sscanf(c.PgConn().ParameterStatus("server_version"), "%d", &major)
	return major
}

func reassignTarget(role string) string {
	if role == "" {
		return "CURRENT_USER"
	}
	return QuoteIdent(role)
}

// inDatabase runs sql on a one-off admin connection to database db.
func (a *Admin) inDatabase(ctx context.Context, db, sql string) error {
	cc := a.cfg.Copy()
	cc.Database = db
	c, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("connect admin to database %s: %w", db, err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		return fmt.Errorf("in database %s: %w", db, err)
	}
	return nil
}

// Close closes the open connections; call it once no other call runs.
func (a *Admin) Close() {
	for {
		select {
		case c := <-a.idle:
			c.Close(context.Background())
		default:
			return
		}
	}
}

func pgTime(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000000") + "+00" }

// QuoteIdent quotes a PostgreSQL identifier.
func QuoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// QuoteLiteral quotes a string constant the way PostgreSQL's quote_literal
// does, correct whatever standard_conforming_strings says.
func QuoteLiteral(s string) string {
	s = strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(s, `\`, `\\`) + `'`
	}
	return "'" + s + "'"
}
