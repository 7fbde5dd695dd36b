// Package sqlclass classifies SQL statements by what they really do, using a
// real grammar (pg_query_go, the PostgreSQL 17 parser) rather than patterns.
//
// A [Query] is one message from a client (a simple-protocol query string or an
// extended-protocol Parse); it holds one [Statement] per SQL statement. Each
// statement gets a [Class], the tables and functions it touches and flags
// (destructive, lock, unknowable). Classification fails closed: a node type the
// classifier does not know is [Admin], a function it does not know makes the
// statement at least [Write] (see [Statement.BaseClass]), and text that does
// not parse yields an error that callers must turn into a deny.
//
// The package is pure Go plus the parser's cgo: it never logs and has no
// kernel or network dependencies.
package sqlclass

import (
	"fmt"
	"strings"
)

// Class is what a statement does, ordered from least to most sensitive so the
// class of a compound statement is the maximum over its parts.
type Class uint8

// Statement classes, least to most sensitive.
const (
	// Read only reads data: SELECT without side effects, SHOW, EXPLAIN
	// without ANALYZE, FETCH, COPY ... TO STDOUT.
	Read Class = iota
	// Session changes only this session's settings: SET (most parameters),
	// RESET, DISCARD, LISTEN, UNLISTEN, DEALLOCATE.
	Session
	// Transaction controls transactions: BEGIN, COMMIT, ROLLBACK, SAVEPOINT,
	// SET TRANSACTION, SET CONSTRAINTS, PREPARE TRANSACTION.
	Transaction
	// Write changes or locks data: INSERT, UPDATE, DELETE, MERGE, TRUNCATE,
	// COPY FROM STDIN, SELECT ... FOR UPDATE, LOCK, NOTIFY, CALL, EXECUTE,
	// nextval(), and any call of a function whose effects are unknown.
	Write
	// DDL changes the schema: CREATE, ALTER, DROP, COMMENT, SELECT INTO,
	// CREATE TABLE AS, REFRESH MATERIALIZED VIEW.
	DDL
	// DCL changes privileges or the acting role: GRANT, REVOKE, roles,
	// SET ROLE, SET SESSION AUTHORIZATION.
	DCL
	// Admin reaches outside the database's data or is unknowable: DO blocks,
	// COPY to or from a server file or a program, ALTER SYSTEM, VACUUM,
	// server file and process functions (pg_read_file, pg_terminate_backend,
	// dblink, lo_import...), and every statement type the classifier does
	// not know.
	Admin
)

var classNames = [...]string{"read", "session", "transaction", "write", "ddl", "dcl", "admin"}

// String returns the lower-case name used in policy files.
func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", c)
}

// ParseClass maps a policy-file name ("read", "write", ...) to a Class.
func ParseClass(s string) (Class, bool) {
	for i, n := range classNames {
		if strings.EqualFold(s, n) {
			return Class(i), true
		}
	}
	return 0, false
}

// ClassNames lists every class name in order, for error messages and docs.
func ClassNames() []string { return append([]string(nil), classNames[:]...) }

// Statement is the classification of one SQL statement. It is immutable once
// returned and shared between callers through the cache: never modify it.
type Statement struct {
	// Class is what the statement does, counting every call of a function
	// the classifier does not know as Write.
	Class Class
	// BaseClass is the class if the functions in UnknownFunctions were all
	// known to be read-only; a policy that declares them so may use it.
	BaseClass Class
	// Command is the command tag a reader expects: SELECT, INSERT, DELETE,
	// DROP, COPY, DO, SET ...
	Command string
	// Node is the parser's node type, e.g. "DeleteStmt".
	Node string
	// Tables lists the relations named anywhere in the statement, lower-case
	// unless quoted, "schema.name" when qualified, each once. CTE names
	// appear too: a rule on tables errs on the side of matching.
	Tables []string
	// Functions lists every function called, lower-case, "schema.name" when
	// qualified, each once.
	Functions []string
	// UnknownFunctions is the subset of Functions whose effects the
	// classifier does not know (user-defined or uncommon built-ins).
	UnknownFunctions []string
	// Destructive marks statements that remove data or objects wholesale:
	// DROP, TRUNCATE, DELETE or UPDATE without WHERE, DROP OWNED.
	Destructive bool
	// Lock marks statements that take row or table locks: SELECT ... FOR
	// UPDATE/SHARE, LOCK, advisory locks.
	Lock bool
	// Unknowable marks statements whose effect cannot be known from the
	// text: DO blocks, CALL, EXECUTE of a prepared statement, functions
	// that run SQL given as a string.
	Unknowable bool
	// Multi is set when the statement shares its message with others.
	Multi bool
	// Prepare is the name given by PREPARE name AS ... (the class is the
	// prepared statement's); Execute is the name run by EXECUTE name.
	Prepare, Execute string
	// Reasons say why the class is above what the command alone suggests,
	// e.g. "calls pg_read_file" or "data-modifying WITH". For explain output.
	Reasons []string
}

// Query is the classification of one client message.
type Query struct {
	// Statements in message order; empty for an empty query.
	Statements []Statement
	// Err is the parse error, if the text did not parse; Statements is then
	// empty and the query must be denied.
	Err error
	// ShapeSafe is set by the dialect when the classification depends on no
	// literal constant, so every text with the same ShapeKey may share it.
	ShapeSafe bool
}

// Class returns the highest class among the statements (Read when empty).
func (q *Query) Class() Class {
	var c Class
	for i := range q.Statements {
		c = max(c, q.Statements[i].Class)
	}
	return c
}

// Dialect parses and classifies the text of one message for one SQL dialect.
// PostgreSQL is [Postgres]; MySQL will implement the same interface.
// Implementations must be safe for concurrent use and must never panic.
type Dialect interface {
	// Name is the protocol name policy files use ("postgres", "mysql").
	Name() string
	// Classify parses text. It returns an error only for text that does not
	// parse; everything that parses gets a class.
	Classify(text string) (*Query, error)
	// ShapeKey returns a cache key under which queries that differ only in
	// literal constants share one classification, and false when the text
	// cannot be keyed that way safely.
	ShapeKey(dst []byte, text string) ([]byte, bool)
}
