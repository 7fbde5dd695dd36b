package sqlclass

import (
	"errors"
	"fmt"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
)

// Some functions run SQL given to them as text (ts_stat, query_to_xml,
// dblink, ...) or read a relation named by text (table_to_xml's regclass,
// which a string literal casts to). The statement that calls them names
// neither the tables nor the effects of that SQL, so a rule on tables would
// never see them. The classifier parses such text when it is a constant and
// merges what it finds into the calling statement; when it is not a
// constant (a parameter, a column, an expression), the effect cannot be known
// before it runs and the statement is refused with a *DynamicSQLError.

// textArg is an argument of a function that holds SQL text or a relation
// name.
type textArg struct {
	pos  int    // position in positional notation
	name string // parameter name, for named notation (query => '...'); "" if unnamed
	rel  bool   // a relation name (regclass), not a statement
}

// sqlTextArgs gives, for a call with args, which arguments hold SQL text
// or a relation name. Some functions are overloaded by arity or argument
// type (dblink(sql) and dblink(connection, sql)), hence a function.
var sqlTextArgs = map[string]func(args []*pg.Node) []textArg{
	// Text search: ts_rewrite(query, select) runs its second argument;
	// ts_rewrite(query, target, substitute) runs nothing.
	"ts_rewrite": func(args []*pg.Node) []textArg {
		if len(args) == 2 {
			return []textArg{{pos: 1, name: "select"}}
		}
		return nil
	},
	"ts_stat": fixedArg(textArg{pos: 0, name: "sqlquery"}),
	// XML: query_to_* run a query, table_to_* read a relation.
	"query_to_xml":               fixedArg(textArg{pos: 0, name: "query"}),
	"query_to_xmlschema":         fixedArg(textArg{pos: 0, name: "query"}),
	"query_to_xml_and_xmlschema": fixedArg(textArg{pos: 0, name: "query"}),
	"table_to_xml":               fixedArg(textArg{pos: 0, name: "tbl", rel: true}),
	"table_to_xmlschema":         fixedArg(textArg{pos: 0, name: "tbl", rel: true}),
	"table_to_xml_and_xmlschema": fixedArg(textArg{pos: 0, name: "tbl", rel: true}),
	// dblink (contrib) runs SQL on a connection it opens; the class stays
	// admin for the connection, the SQL adds its tables.
	"dblink":            dblinkSQL,
	"dblink_exec":       dblinkSQL,
	"dblink_open":       dblinkSQL,
	"dblink_send_query": fixedArg(textArg{pos: 1}),
	// tablefunc (contrib): crosstab runs its source and category queries,
	// connectby reads the relation it names.
	"crosstab":  crosstabArgs,
	"crosstab2": fixedArg(textArg{pos: 0}),
	"crosstab3": fixedArg(textArg{pos: 0}),
	"crosstab4": fixedArg(textArg{pos: 0}),
	"connectby": fixedArg(textArg{pos: 0, rel: true}),
}

func fixedArg(a textArg) func([]*pg.Node) []textArg {
	return func([]*pg.Node) []textArg { return []textArg{a} }
}

// dblinkSQL handles dblink's overloads (dblink(sql), dblink(conn, sql),
// dblink_open(cursor, sql), dblink_open(conn, cursor, sql), each with an
// optional fail_on_error boolean): the SQL is the last argument but for
// that boolean.
func dblinkSQL(args []*pg.Node) []textArg {
	k := len(args)
	if k > 0 && boolConst(args[k-1]) {
		k--
	}
	if k == 0 {
		return nil
	}
	return []textArg{{pos: k - 1}}
}

// crosstabArgs: crosstab(source), crosstab(source, category) and
// crosstab(source, num_values integer).
func crosstabArgs(args []*pg.Node) []textArg {
	out := []textArg{{pos: 0}}
	if len(args) == 2 && !intConst(args[1]) {
		out = append(out, textArg{pos: 1})
	}
	return out
}

func boolConst(n *pg.Node) bool {
	if c := unwrapCasts(n).GetAConst(); c != nil {
		return c.GetBoolval() != nil
	}
	return false
}

func intConst(n *pg.Node) bool {
	if c := unwrapCasts(n).GetAConst(); c != nil {
		return c.GetIval() != nil
	}
	return false
}

// unwrapCasts strips 'text'::type casts, which keep a constant constant.
func unwrapCasts(n *pg.Node) *pg.Node {
	for n != nil {
		tc := n.GetTypeCast()
		if tc == nil {
			return n
		}
		n = tc.Arg
	}
	return n
}

// DynamicSQLError refuses a statement that calls a function running SQL
// text (or reading a relation named by text) that cannot be classified
// before it runs: not a constant, not parseable, or nested too deeply.
type DynamicSQLError struct {
	Function string
	Reason   string
}

func (e *DynamicSQLError) Error() string {
	return "classify sql: " + e.Function + ": " + e.Reason
}

// maxTextDepth bounds SQL text inside SQL text inside SQL text...
const maxTextDepth = 4

// textArguments classifies the SQL text and relation-name arguments of a
// call of name (schema-qualified or not: an extension's schema is any) and
// merges them into the statement.
func (c *pgClassifier) textArguments(name string, args []*pg.Node) {
	bare := name
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		bare = name[i+1:]
	}
	spec, ok := sqlTextArgs[bare]
	if !ok {
		return
	}
	c.literal = true
	for _, a := range spec(args) {
		arg := argument(args, a)
		if arg == nil {
			continue
		}
		text, ok := stringConst(arg)
		if !ok {
			what := "SQL text"
			if a.rel {
				what = "relation name"
			}
			c.fail(&DynamicSQLError{Function: name, Reason: "its " + what + " is not a constant, so what it reads or runs cannot be decided before it does"})
			return
		}
		if a.rel {
			rel, err := relationName(text)
			if err != nil {
				c.fail(&DynamicSQLError{Function: name, Reason: fmt.Sprintf("%q is not a relation name (%v)", text, err)})
				return
			}
			c.st.Tables = appendOnce(c.st.Tables, rel)
			c.st.Reasons = appendOnce(c.st.Reasons, name+" reads "+rel)
			continue
		}
		if c.depth >= maxTextDepth {
			c.fail(&DynamicSQLError{Function: name, Reason: fmt.Sprintf("SQL text nested more than %d deep", maxTextDepth)})
			return
		}
		q, err := classifyText(text, c.depth+1)
		var de *DynamicSQLError
		var pe *ParseError
		switch {
		case errors.As(err, &de):
			// The innermost function is the one to name.
			c.fail(de)
			return
		case errors.As(err, &pe):
			c.fail(&DynamicSQLError{Function: name, Reason: "its SQL text does not parse: " + strings.TrimPrefix(pe.Error(), "parse sql: ")})
			return
		case err != nil:
			c.fail(&DynamicSQLError{Function: name, Reason: "its SQL text does not classify: " + err.Error()})
			return
		}
		for i := range q.Statements {
			c.merge(name, &q.Statements[i])
		}
	}
}

// merge adds what an inner statement does to the calling statement.
func (c *pgClassifier) merge(fn string, in *Statement) {
	c.raise(in.BaseClass, fn+" runs "+in.Command+" given as text")
	if in.Class > c.full {
		c.full = in.Class
	}
	c.st.Reasons = appendOnce(c.st.Reasons, in.Reasons...)
	c.st.Tables = appendOnce(c.st.Tables, in.Tables...)
	c.st.Functions = appendOnce(c.st.Functions, in.Functions...)
	c.st.UnknownFunctions = appendOnce(c.st.UnknownFunctions, in.UnknownFunctions...)
	c.st.Destructive = c.st.Destructive || in.Destructive
	c.st.Lock = c.st.Lock || in.Lock
	c.st.Unknowable = c.st.Unknowable || in.Unknowable
}

func (c *pgClassifier) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// argument finds a by position among the positional arguments, or by name
// among the named ones (positional notation comes first in a call).
func argument(args []*pg.Node, a textArg) *pg.Node {
	positional := 0
	for _, n := range args {
		if n.GetNamedArgExpr() != nil {
			break
		}
		positional++
	}
	if a.pos < positional {
		return args[a.pos]
	}
	for _, n := range args[positional:] {
		if na := n.GetNamedArgExpr(); na != nil && a.name != "" && strings.EqualFold(na.Name, a.name) {
			return na.Arg
		}
	}
	return nil
}

func stringConst(n *pg.Node) (string, bool) {
	if c := unwrapCasts(n).GetAConst(); c != nil && !c.Isnull {
		if s := c.GetSval(); s != nil {
			return s.Sval, true
		}
	}
	return "", false
}

// relationName reads text as regclass input does, with the grammar: it must
// be exactly one possibly qualified relation name ("t", "s.t", `"T"`).
func relationName(text string) (string, error) {
	tree, err := pg.Parse("SELECT FROM " + text)
	if err != nil {
		return "", err
	}
	if len(tree.Stmts) != 1 {
		return "", fmt.Errorf("more than a name")
	}
	sel := tree.Stmts[0].GetStmt().GetSelectStmt()
	if sel == nil || len(sel.FromClause) != 1 {
		return "", fmt.Errorf("more than a name")
	}
	rv := sel.FromClause[0].GetRangeVar()
	if rv == nil || rv.Alias != nil || !rv.Inh || rv.Catalogname != "" {
		return "", fmt.Errorf("more than a name")
	}
	// Nothing else may be set: no WHERE, no locking clause, no second
	// statement hidden in the name.
	want := &pg.SelectStmt{FromClause: sel.FromClause, LimitOption: sel.LimitOption, Op: sel.Op}
	if !proto.Equal(sel, want) {
		return "", fmt.Errorf("more than a name")
	}
	if rv.Schemaname != "" {
		return rv.Schemaname + "." + rv.Relname, nil
	}
	return rv.Relname, nil
}
