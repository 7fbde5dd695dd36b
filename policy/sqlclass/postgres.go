package sqlclass

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"
	"github.com/pganalyze/pg_query_go/v6/parser"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Postgres is the PostgreSQL [Dialect], built on pg_query_go (the parser of
// PostgreSQL 17). It is stateless and safe for concurrent use.
//
// The server may run an older major version; text that only parses
// differently there (a handful of lexer changes such as 0x1F literals) is a
// known limit of any parser that is not the server's own.
type Postgres struct{}

// Name returns "postgres".
func (Postgres) Name() string { return "postgres" }

// Classify parses text with the PostgreSQL grammar and classifies each
// statement. It never panics: a failure inside the classifier itself is
// returned as an error, which callers deny like a parse error.
func (Postgres) Classify(text string) (q *Query, err error) {
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("classify sql: internal error: %v", r)
		}
	}()
	return classifyText(text, 0)
}

// classifyText classifies text found at depth: 0 for a message, 1 for SQL
// text given to a function in it, and so on.
func classifyText(text string, depth int) (*Query, error) {
	if st, ok := pgFastSelect(text); ok {
		return &Query{ShapeSafe: true, Statements: []Statement{st}}, nil
	}
	tree, err := pg.Parse(text)
	if err != nil {
		return nil, parseError(text, err)
	}
	return fullQuery(tree, depth)
}

// ParseError is text the server would refuse before running any of it,
// described as the server would describe it, so a client that is denied the
// statement sees the error it would have seen without the proxy.
type ParseError struct {
	// Code is the SQLSTATE: 42601 (syntax_error), or 22021
	// (character_not_in_repertoire) for bytes that are not UTF-8.
	Code string
	// Message is the server's message, e.g. `syntax error at or near "FRM"`.
	Message string
	// Position is the 1-based character offset of the error in the text,
	// as in an ErrorResponse's P field; 0 when there is none.
	Position int
}

func (e *ParseError) Error() string {
	if e.Position > 0 {
		return fmt.Sprintf("parse sql: %s at character %d", e.Message, e.Position)
	}
	return "parse sql: " + e.Message
}

// parseError turns pg_query's error into a ParseError. pg_query reports
// the grammar's own message and cursor position; text with bytes that are
// not UTF-8 fails in its protobuf encoding instead, where a UTF8 server
// refuses the message with 22021 before parsing.
func parseError(text string, err error) error {
	if !utf8.ValidString(text) {
		return &ParseError{Code: "22021", Message: invalidUTF8Message(text)}
	}
	var pe *parser.Error
	if errors.As(err, &pe) {
		return &ParseError{Code: "42601", Message: pe.Message, Position: pe.Cursorpos}
	}
	return fmt.Errorf("parse sql: %w", err)
}

// invalidUTF8Message words the server's message for the first invalid
// sequence: the lead byte and the continuation bytes its length implies.
func invalidUTF8Message(text string) string {
	i := 0
	for i < len(text) {
		r, n := utf8.DecodeRuneInString(text[i:])
		if r == utf8.RuneError && n <= 1 {
			break
		}
		i += n
	}
	n := 1 // as pg_utf_mblen
	switch b := text[i]; {
	case b&0xe0 == 0xc0:
		n = 2
	case b&0xf0 == 0xe0:
		n = 3
	case b&0xf8 == 0xf0:
		n = 4
	}
	var sb strings.Builder
	sb.WriteString(`invalid byte sequence for encoding "UTF8":`)
	for k := i; k < min(i+n, len(text)); k++ {
		fmt.Fprintf(&sb, " 0x%02x", text[k])
	}
	return sb.String()
}

// fullQuery classifies every statement of a full parse tree.
func fullQuery(tree *pg.ParseResult, depth int) (*Query, error) {
	q := &Query{ShapeSafe: true, Statements: make([]Statement, 0, len(tree.Stmts))}
	for _, raw := range tree.Stmts {
		c := &pgClassifier{depth: depth}
		c.statement(raw.GetStmt())
		if c.err != nil {
			return nil, c.err
		}
		st := c.finish()
		switch st.Node {
		case "SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt":
		default:
			// Only plain DML is classified the same whatever its literals
			// hold; utility statements (COPY 'file', SET ...) are cached
			// by exact text.
			q.ShapeSafe = false
		}
		if c.literal {
			// SQL text in a literal: its own tables and effects.
			q.ShapeSafe = false
		}
		q.Statements = append(q.Statements, st)
	}
	if len(q.Statements) > 1 {
		for i := range q.Statements {
			q.Statements[i].Multi = true
		}
	}
	return q, nil
}

// ShapeKey implements [Dialect] with the PostgreSQL lexical rules.
func (Postgres) ShapeKey(dst []byte, text string) ([]byte, bool) {
	return pgShapeKey(dst, text)
}

// pgClassifier accumulates the classification of one statement.
type pgClassifier struct {
	st   Statement
	base Class // class ignoring unknown functions
	full Class // class counting unknown functions as Write
	set  bool  // Command and Node already set by the outermost statement
	// depth is how deep in SQL text given to functions this statement is.
	depth int
	// literal is set when the classification depends on a literal: a
	// function's SQL text argument.
	literal bool
	// err refuses the statement: SQL text that cannot be classified.
	err error
}

func (c *pgClassifier) finish() Statement {
	c.st.BaseClass = c.base
	c.st.Class = max(c.base, c.full)
	return c.st
}

func (c *pgClassifier) raise(cl Class, reason string) {
	if cl > c.base && reason != "" {
		c.st.Reasons = appendOnce(c.st.Reasons, reason)
	}
	c.base = max(c.base, cl)
}

func (c *pgClassifier) command(node, tag string) {
	if !c.set {
		c.st.Node, c.st.Command, c.set = node, tag, true
	}
}

// statement classifies a top-level (or directly wrapped) statement node.
func (c *pgClassifier) statement(n *pg.Node) {
	if n == nil || n.Node == nil {
		c.command("Unknown", "UNKNOWN")
		c.raise(Admin, "empty statement node")
		return
	}
	name := nodeName(n)
	switch x := n.Node.(type) {
	case *pg.Node_SelectStmt:
		c.command(name, "SELECT")
		c.raise(Read, "")
		c.walk(x.SelectStmt.ProtoReflect(), true)
		return
	case *pg.Node_InsertStmt:
		c.command(name, "INSERT")
		c.raise(Write, "")
		c.walk(x.InsertStmt.ProtoReflect(), true)
		return
	case *pg.Node_UpdateStmt:
		c.command(name, "UPDATE")
		c.raise(Write, "")
		if x.UpdateStmt.WhereClause == nil {
			c.st.Destructive = true
		}
		c.walk(x.UpdateStmt.ProtoReflect(), true)
		return
	case *pg.Node_DeleteStmt:
		c.command(name, "DELETE")
		c.raise(Write, "")
		if x.DeleteStmt.WhereClause == nil {
			c.st.Destructive = true
		}
		c.walk(x.DeleteStmt.ProtoReflect(), true)
		return
	case *pg.Node_MergeStmt:
		c.command(name, "MERGE")
		c.raise(Write, "")
		c.walk(x.MergeStmt.ProtoReflect(), true)
		return
	case *pg.Node_ExplainStmt:
		c.command(name, "EXPLAIN")
		if hasDefElem(x.ExplainStmt.Options, "analyze") {
			// EXPLAIN ANALYZE runs the statement: it is what it runs.
			c.raise(Read, "")
			c.st.Reasons = appendOnce(c.st.Reasons, "EXPLAIN ANALYZE executes its statement")
			c.statement(x.ExplainStmt.Query)
			return
		}
		// Plain EXPLAIN only plans: keep what it names, not what it would do.
		inner := &pgClassifier{set: true, depth: c.depth}
		inner.statement(x.ExplainStmt.Query)
		c.literal = c.literal || inner.literal
		if inner.err != nil {
			c.fail(inner.err)
		}
		c.raise(Read, "")
		c.st.Tables = appendOnce(c.st.Tables, inner.st.Tables...)
		c.st.Functions = appendOnce(c.st.Functions, inner.st.Functions...)
		return
	case *pg.Node_CopyStmt:
		c.command(name, "COPY")
		s := x.CopyStmt
		switch {
		case s.IsProgram:
			c.raise(Admin, "COPY runs a program on the server")
			c.st.Unknowable = true
		case s.Filename != "":
			c.raise(Admin, "COPY reads or writes a server file")
		case s.IsFrom:
			c.raise(Write, "")
		default:
			c.raise(Read, "")
		}
		if s.Query != nil {
			c.statement(s.Query)
		}
		c.walk(s.ProtoReflect(), true)
		return
	case *pg.Node_DoStmt:
		c.command(name, "DO")
		c.raise(Admin, "DO runs an anonymous code block")
		c.st.Unknowable = true
		return
	case *pg.Node_CallStmt:
		c.command(name, "CALL")
		c.raise(Write, "CALL runs a procedure")
		c.st.Unknowable = true
	case *pg.Node_PrepareStmt:
		c.command(name, "PREPARE")
		c.st.Prepare = x.PrepareStmt.Name
		c.statement(x.PrepareStmt.Query)
		return
	case *pg.Node_ExecuteStmt:
		c.command(name, "EXECUTE")
		c.st.Execute = x.ExecuteStmt.Name
		c.raise(Write, "EXECUTE runs a prepared statement not seen here")
		c.st.Unknowable = true
	case *pg.Node_DeclareCursorStmt:
		c.command(name, "DECLARE CURSOR")
		c.statement(x.DeclareCursorStmt.Query)
		return
	case *pg.Node_CreateTableAsStmt:
		c.command(name, "CREATE TABLE AS")
		c.raise(DDL, "")
		c.statement(x.CreateTableAsStmt.Query)
		c.walk(x.CreateTableAsStmt.ProtoReflect(), true)
		return
	case *pg.Node_VariableSetStmt:
		c.command(name, setTag(x.VariableSetStmt.Kind))
		c.raise(setClass(x.VariableSetStmt), "")
		if cl := setClass(x.VariableSetStmt); cl > Session {
			c.st.Reasons = appendOnce(c.st.Reasons, "sets "+strings.ToLower(x.VariableSetStmt.Name))
		}
	case *pg.Node_TransactionStmt:
		c.command(name, transactionTag(x.TransactionStmt.Kind))
		c.raise(Transaction, "")
	case *pg.Node_TruncateStmt:
		c.command(name, "TRUNCATE")
		c.raise(Write, "")
		c.st.Destructive = true
	case *pg.Node_DropStmt:
		c.command(name, "DROP")
		c.raise(DDL, "")
		c.st.Destructive = true
		c.dropped(x.DropStmt)
	case *pg.Node_LockStmt:
		c.command(name, "LOCK")
		c.raise(Write, "")
		c.st.Lock = true
	case *pg.Node_GrantStmt:
		tag := "GRANT"
		if !x.GrantStmt.IsGrant {
			tag = "REVOKE"
		}
		c.command(name, tag)
		c.raise(DCL, "")
	case *pg.Node_VacuumStmt:
		tag := "VACUUM"
		if !x.VacuumStmt.IsVacuumcmd {
			tag = "ANALYZE"
		}
		c.command(name, tag)
		c.raise(Admin, "maintenance command")
	default:
		cl, tag, ok := utilityClass(name)
		c.command(name, tag)
		if !ok {
			c.raise(Admin, "unknown statement type "+name)
			c.st.Unknowable = true
		} else {
			c.raise(cl, "")
		}
		switch name {
		case "DropOwnedStmt", "DropRoleStmt", "DropdbStmt", "DropTableSpaceStmt",
			"DropSubscriptionStmt", "DropUserMappingStmt":
			c.st.Destructive = true
		}
	}
	c.walk(innerMessage(n), true)
}

// dropped records the relations a DROP names so table rules see them.
func (c *pgClassifier) dropped(s *pg.DropStmt) {
	switch s.RemoveType {
	case pg.ObjectType_OBJECT_TABLE, pg.ObjectType_OBJECT_VIEW, pg.ObjectType_OBJECT_MATVIEW,
		pg.ObjectType_OBJECT_FOREIGN_TABLE, pg.ObjectType_OBJECT_SEQUENCE, pg.ObjectType_OBJECT_INDEX:
	default:
		return
	}
	for _, o := range s.Objects {
		if l := o.GetList(); l != nil {
			c.st.Tables = appendOnce(c.st.Tables, joinNames(l.Items))
		}
	}
}

// walk visits every node below m, collecting tables and functions and
// raising the class for anything inside that is not a plain read.
func (c *pgClassifier) walk(m protoreflect.Message, top bool) {
	if m == nil || !m.IsValid() {
		return
	}
	switch x := m.Interface().(type) {
	case *pg.RangeVar:
		name := x.Relname
		if x.Schemaname != "" {
			name = x.Schemaname + "." + name
		}
		c.st.Tables = appendOnce(c.st.Tables, name)
	case *pg.FuncCall:
		name := joinNames(x.Funcname)
		c.function(name)
		c.textArguments(name, x.Args)
	case *pg.InsertStmt, *pg.UpdateStmt, *pg.DeleteStmt, *pg.MergeStmt:
		if !top {
			c.raise(Write, "data-modifying statement inside WITH")
			switch s := x.(type) {
			case *pg.UpdateStmt:
				c.st.Destructive = c.st.Destructive || s.WhereClause == nil
			case *pg.DeleteStmt:
				c.st.Destructive = c.st.Destructive || s.WhereClause == nil
			}
		}
	case *pg.SelectStmt:
		if len(x.LockingClause) > 0 {
			c.raise(Write, "SELECT ... FOR UPDATE/SHARE locks rows")
			c.st.Lock = true
		}
		if x.IntoClause != nil {
			c.raise(DDL, "SELECT INTO creates a table")
		}
	}
	// Walk fields in declaration order, not with m.Range: protobuf-go
	// randomizes Range's order per binary, and the tables a statement names
	// must come out the same in every build.
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil || fd.IsMap() || !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		if fd.IsList() {
			l := v.List()
			for j := 0; j < l.Len(); j++ {
				c.walk(l.Get(j).Message(), false)
			}
			continue
		}
		c.walk(v.Message(), false)
	}
}

// function records a call and what it is known to do.
func (c *pgClassifier) function(name string) {
	c.st.Functions = appendOnce(c.st.Functions, name)
	bare := strings.TrimPrefix(name, "pg_catalog.")
	if e, ok := knownEffects[bare]; ok {
		c.raise(e.class, "calls "+name)
		c.st.Lock = c.st.Lock || e.lock
		c.st.Unknowable = c.st.Unknowable || e.unknowable
		return
	}
	if _, ok := readOnlyFuncs[bare]; ok {
		return
	}
	c.st.UnknownFunctions = appendOnce(c.st.UnknownFunctions, name)
	if c.full < Write {
		c.full = Write
		c.st.Reasons = appendOnce(c.st.Reasons, "calls "+name+" whose effects are unknown")
	}
}

// utilityClass gives the class and command tag of statement types that need
// no closer look. ok is false for a type this classifier does not know.
func utilityClass(node string) (Class, string, bool) {
	switch node {
	case "VariableShowStmt":
		return Read, "SHOW", true
	case "FetchStmt":
		return Read, "FETCH", true
	case "ClosePortalStmt":
		return Read, "CLOSE", true
	case "DiscardStmt":
		return Session, "DISCARD", true
	case "ListenStmt":
		return Session, "LISTEN", true
	case "UnlistenStmt":
		return Session, "UNLISTEN", true
	case "DeallocateStmt":
		return Session, "DEALLOCATE", true
	case "ConstraintsSetStmt":
		return Transaction, "SET CONSTRAINTS", true
	case "NotifyStmt":
		return Write, "NOTIFY", true
	case "RefreshMatViewStmt":
		return DDL, "REFRESH MATERIALIZED VIEW", true
	case "CreateSchemaStmt", "CreateStmt", "CreateForeignTableStmt", "CreateTrigStmt",
		"CreateSeqStmt", "DefineStmt", "CreateDomainStmt", "CreateOpClassStmt",
		"CreateOpFamilyStmt", "IndexStmt", "CreateStatsStmt", "CreateFunctionStmt",
		"CompositeTypeStmt", "CreateEnumStmt", "CreateRangeStmt", "ViewStmt", "RuleStmt",
		"CreateConversionStmt", "ImportForeignSchemaStmt":
		return DDL, "CREATE", true
	case "AlterTableStmt", "ReplicaIdentityStmt", "AlterCollationStmt", "AlterDomainStmt",
		"AlterSeqStmt", "AlterOpFamilyStmt", "AlterStatsStmt", "AlterFunctionStmt",
		"RenameStmt", "AlterObjectDependsStmt", "AlterObjectSchemaStmt", "AlterOperatorStmt",
		"AlterTypeStmt", "AlterEnumStmt", "AlterTsdictionaryStmt", "AlterTsconfigurationStmt":
		return DDL, "ALTER", true
	case "CommentStmt":
		return DDL, "COMMENT", true
	case "GrantStmt":
		return DCL, "GRANT", true
	case "GrantRoleStmt":
		return DCL, "GRANT ROLE", true
	case "AlterDefaultPrivilegesStmt", "AlterRoleStmt", "AlterRoleSetStmt", "AlterOwnerStmt",
		"AlterPolicyStmt":
		return DCL, "ALTER", true
	case "CreateRoleStmt", "CreatePolicyStmt":
		return DCL, "CREATE", true
	case "DropRoleStmt", "DropOwnedStmt":
		return DCL, "DROP", true
	case "ReassignOwnedStmt":
		return DCL, "REASSIGN OWNED", true
	case "SecLabelStmt":
		return DCL, "SECURITY LABEL", true
	case "AlterSystemStmt":
		return Admin, "ALTER SYSTEM", true
	case "ClusterStmt":
		return Admin, "CLUSTER", true
	case "ReindexStmt":
		return Admin, "REINDEX", true
	case "CheckPointStmt":
		return Admin, "CHECKPOINT", true
	case "LoadStmt":
		return Admin, "LOAD", true
	case "CreatedbStmt", "CreateTableSpaceStmt", "CreateExtensionStmt", "CreateFdwStmt",
		"CreateForeignServerStmt", "CreateUserMappingStmt", "CreatePublicationStmt",
		"CreateSubscriptionStmt", "CreateEventTrigStmt", "CreatePlangStmt", "CreateAmStmt",
		"CreateCastStmt", "CreateTransformStmt":
		return Admin, "CREATE", true
	case "AlterDatabaseStmt", "AlterDatabaseSetStmt", "AlterDatabaseRefreshCollStmt",
		"AlterTableSpaceOptionsStmt", "AlterTableMoveAllStmt", "AlterExtensionStmt",
		"AlterExtensionContentsStmt", "AlterFdwStmt", "AlterForeignServerStmt",
		"AlterUserMappingStmt", "AlterPublicationStmt", "AlterSubscriptionStmt",
		"AlterEventTrigStmt":
		return Admin, "ALTER", true
	case "DropdbStmt", "DropTableSpaceStmt", "DropSubscriptionStmt", "DropUserMappingStmt":
		return Admin, "DROP", true
	}
	return Admin, "UNKNOWN", false
}

// adminSettings are parameters whose change alters how the server reads
// later statements (search_path decides which function an unqualified name
// calls, so a read-looking SELECT could run a schema's look-alike) or
// bypasses protections; setting them is Admin.
var adminSettings = map[string]bool{
	"search_path":                 true,
	"standard_conforming_strings": true, "backslash_quote": true,
	"session_replication_role": true, "session_preload_libraries": true,
	"local_preload_libraries": true, "row_security": true, "allow_system_table_mods": true,
	"ignore_system_indexes": true, "zero_damaged_pages": true, "default_transaction_read_only": true,
	"transaction_read_only": true,
}

func setClass(s *pg.VariableSetStmt) Class {
	name := strings.ToLower(s.Name)
	switch {
	case s.Kind == pg.VariableSetKind_VAR_RESET_ALL:
		return Session
	case name == "transaction" || name == "session characteristics":
		return Transaction
	}
	return SettingClass(name)
}

// SettingStatement is the classification of "SET name = value", the
// statement a startup parameter (or "-c name=value" in the options
// parameter) stands for, so a policy decides it exactly as that SET.
func SettingStatement(name string) Statement {
	c := &pgClassifier{}
	c.statement(&pg.Node{Node: &pg.Node_VariableSetStmt{VariableSetStmt: &pg.VariableSetStmt{
		Kind: pg.VariableSetKind_VAR_SET_VALUE, Name: strings.ToLower(name),
	}}})
	return c.finish()
}

// SettingStatementClass is SettingStatement(name).Class, without building
// the statement: most startups set only parameters of the session class,
// which pass without a decision (the class alone says so).
func SettingStatementClass(name string) Class {
	return setClass(&pg.VariableSetStmt{Kind: pg.VariableSetKind_VAR_SET_VALUE, Name: name})
}

// SettingClass is the class of changing the run-time parameter name, the
// same whether by SET, by set_config or in a StartupMessage.
func SettingClass(name string) Class {
	name = strings.ToLower(name)
	switch {
	case name == "role" || name == "session_authorization":
		return DCL
	case name == "transaction_isolation":
		return Transaction
	case adminSettings[name]:
		return Admin
	}
	return Session
}

func setTag(k pg.VariableSetKind) string {
	if k == pg.VariableSetKind_VAR_RESET || k == pg.VariableSetKind_VAR_RESET_ALL {
		return "RESET"
	}
	return "SET"
}

func transactionTag(k pg.TransactionStmtKind) string {
	s := strings.TrimPrefix(k.String(), "TRANS_STMT_")
	return strings.ReplaceAll(s, "_", " ")
}

// nodeName returns the message name of the node a pg.Node wraps.
func nodeName(n *pg.Node) string {
	m := innerMessage(n)
	if m == nil || !m.IsValid() {
		return "Unknown"
	}
	return string(m.Descriptor().Name())
}

func innerMessage(n *pg.Node) protoreflect.Message {
	m := n.ProtoReflect()
	od := m.Descriptor().Oneofs().ByName("node")
	if od == nil {
		return nil
	}
	fd := m.WhichOneof(od)
	if fd == nil || fd.Message() == nil {
		return nil
	}
	return m.Get(fd).Message()
}

func hasDefElem(opts []*pg.Node, name string) bool {
	for _, o := range opts {
		if d := o.GetDefElem(); d != nil && strings.EqualFold(d.Defname, name) {
			return true
		}
	}
	return false
}

// joinNames joins a qualified name list ("schema", "name") with dots.
func joinNames(items []*pg.Node) string {
	var b strings.Builder
	for i, it := range items {
		if i > 0 {
			b.WriteByte('.')
		}
		if s := it.GetString_(); s != nil {
			b.WriteString(s.Sval)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}

func appendOnce(list []string, items ...string) []string {
outer:
	for _, it := range items {
		for _, l := range list {
			if l == it {
				continue outer
			}
		}
		list = append(list, it)
	}
	return list
}
