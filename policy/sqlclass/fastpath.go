package sqlclass

import (
	"strings"
	"unicode/utf8"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// pgFastSelect classifies a plain single SELECT from pg_query's summary
// (tables, functions, statement types, gathered in C) instead of the full
// tree, which pg_query hands over through a protobuf round trip five times
// as costly. It only answers when the summary provably says everything the
// full classifier would look at, and returns false otherwise so the caller
// takes the full path:
//
//   - the text is valid UTF-8: the summary reads any bytes, but the full
//     parse refuses invalid UTF-8 in a literal or a name (and accepts it in
//     a comment), which only the full path can tell apart;
//   - the text is one statement starting with SELECT, and contains none of
//     the words FOR (locking clauses), INTO (SELECT INTO) or WITH (CTEs,
//     which the summary reports differently), anywhere, even inside
//     literals or comments: the check is lexical and errs towards the
//     full path;
//   - the summary's only statement type is SelectStmt (a nested
//     data-modifying statement would add its own);
//   - every table is read (context Select) and every function is called
//     (context Call), and none runs SQL given as text, which only the full
//     tree holds.
//
// FuzzClassify and TestFastPathAgrees hold the two paths to the same
// answer.
func pgFastSelect(text string) (Statement, bool) {
	if !fastEligible(text) {
		return Statement{}, false
	}
	sum, err := pg.Summary(text, 0)
	if err != nil || len(sum.StatementTypes) != 1 || sum.StatementTypes[0] != "SelectStmt" {
		return Statement{}, false
	}
	c := &pgClassifier{}
	c.command("SelectStmt", "SELECT")
	c.raise(Read, "")
	for _, t := range sum.Tables {
		if t.Context != pg.SummaryResult_Select {
			return Statement{}, false
		}
		name := t.TableName
		if t.SchemaName != "" {
			name = t.SchemaName + "." + name
		}
		c.st.Tables = appendOnce(c.st.Tables, name)
	}
	for _, f := range sum.Functions {
		if f.Context != pg.SummaryResult_Call || runsText(f.Name) {
			return Statement{}, false
		}
		c.function(f.Name)
	}
	return c.finish(), true
}

// fastEligible is the lexical gate of pgFastSelect.
func fastEligible(text string) bool {
	if !utf8.ValidString(text) {
		return false
	}
	i := 0
	for i < len(text) && isSpace(text[i]) {
		i++
	}
	if !wordAt(text, i, "select") {
		return false
	}
	for j := 0; j < len(text); j++ {
		c := text[j]
		if c == ';' {
			for _, r := range []byte(text[j:]) {
				if r != ';' && !isSpace(r) {
					return false
				}
			}
			return true
		}
		if (c|0x20 == 'f' || c|0x20 == 'i' || c|0x20 == 'w') && (j == 0 || !identByte(text[j-1])) &&
			(wordAt(text, j, "for") || wordAt(text, j, "into") || wordAt(text, j, "with")) {
			return false
		}
	}
	return true
}

// wordAt reports whether text holds the lower-case word w at i,
// case-insensitively, not followed by an identifier byte.
func wordAt(text string, i int, w string) bool {
	if i+len(w) > len(text) {
		return false
	}
	for k := 0; k < len(w); k++ {
		if text[i+k]|0x20 != w[k] {
			return false
		}
	}
	return i+len(w) == len(text) || !(identByte(text[i+len(w)]) || text[i+len(w)] == '$')
}

func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == '\v'
}

// runsText reports whether the function name (qualified or not) takes SQL
// text or a relation name to classify.
func runsText(name string) bool {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		name = name[i+1:]
	}
	_, ok := sqlTextArgs[name]
	return ok
}
