package sqlclass

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	pg "github.com/pganalyze/pg_query_go/v6"
)

// classifyFull classifies with the full parse tree only.
func classifyFull(text string) (*Query, error) {
	tree, err := pg.Parse(text)
	if err != nil {
		return nil, err
	}
	return fullQuery(tree, 0)
}

// comparable renders what a policy can see of a statement, with lists
// sorted (the two paths may meet tables in another order).
func comparable(s Statement) string {
	sorted := func(l []string) string {
		l = slices.Clone(l)
		slices.Sort(l)
		return strings.Join(l, ",")
	}
	return fmt.Sprintf("%v/%v %s d=%v l=%v u=%v m=%v t=[%s] f=[%s] uf=[%s]", s.Class, s.BaseClass, s.Command,
		s.Destructive, s.Lock, s.Unknowable, s.Multi, sorted(s.Tables), sorted(s.Functions), sorted(s.UnknownFunctions))
}

// checkFastPath fails when the fast path answers differently from the
// full classifier.
func checkFastPath(t *testing.T, text string) bool {
	st, ok := pgFastSelect(text)
	if !ok {
		return false
	}
	full, err := classifyFull(text)
	if err != nil {
		t.Fatalf("%q: fast path answered but the full parse fails: %v", text, err)
	}
	if len(full.Statements) != 1 {
		t.Fatalf("%q: fast path answered for %d statements", text, len(full.Statements))
	}
	if a, b := comparable(st), comparable(full.Statements[0]); a != b {
		t.Fatalf("%q:\nfast: %s\nfull: %s", text, a, b)
	}
	return true
}

func TestFastPathAgrees(t *testing.T) {
	_, cases := readGolden(t, "testdata/classify.golden")
	fast := 0
	for _, c := range cases {
		if checkFastPath(t, c.sql) {
			fast++
		}
	}
	for _, s := range []string{
		typicalQuery,
		"SELECT abalance FROM pgbench_accounts WHERE aid = 42",
		"select * from a join b using (id) left join lateral (select * from c where c.x = a.x) s on true",
		"SELECT CASE WHEN x THEN pg_terminate_backend(1) ELSE lower('a') END FROM t",
		"SELECT (SELECT max(pg_read_file(p)) FROM files) FROM t",
		"SELECT * FROM ROWS FROM (generate_series(1,2), pg_ls_dir('/')) AS r",
		"SELECT * FROM t TABLESAMPLE SYSTEM (10) WHERE x IN (SELECT y FROM u WHERE z = my_fn())",
		"SELECT jsonb_path_query(doc, '$.a') FROM docs, JSON_TABLE(doc, '$[*]' COLUMNS (a int PATH '$.a', b text DEFAULT evil() ON EMPTY)) jt",
		"SELECT xmlelement(name x, xmlattributes(evil() AS a)), XMLSERIALIZE(CONTENT evil2() AS text)",
		"SELECT * FROM XMLTABLE('/r' PASSING evil() COLUMNS a int PATH 'a' DEFAULT evil3())",
		"SELECT array_agg(x ORDER BY evil()) FILTER (WHERE evil2()) OVER (PARTITION BY evil3() ORDER BY evil4())",
		"SELECT count(*) FROM t GROUP BY GROUPING SETS ((evil()), ())",
		"SELECT evil() IS NULL, evil2() IS TRUE, ROW(evil3()), ARRAY[evil4()], (evil5()).f, evil6()[1]",
		"SELECT COALESCE(evil(), 1), GREATEST(evil2(), 2), NULLIF(evil3(), 1), evil4()::int, evil5() COLLATE \"C\"",
		"SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE evil()) AND x = ANY (SELECT evil2())",
		"SELECT * FROM t ORDER BY evil() LIMIT evil2() OFFSET evil3()",
		"SELECT 1 UNION ALL SELECT evil() FROM u EXCEPT SELECT evil2() FROM v",
		"SELECT JSON_OBJECT('a': evil()), JSON_ARRAY(evil2()), JSON_ARRAYAGG(evil3()), JSON_OBJECTAGG('k': evil4())",
		"SELECT JSON_QUERY(evil(), '$'), JSON_VALUE(d, '$' DEFAULT evil2() ON ERROR), JSON_EXISTS(d, '$' PASSING evil3() AS v)",
		"SELECT JSON(evil()), JSON_SCALAR(evil2()), JSON_SERIALIZE(evil3()), evil4() IS JSON",
		"SELECT * FROM t WHERE CURRENT OF c",
		"SELECT \"MixedCase\".\"Col\" FROM \"MixedCase\", \"Sch\".\"T\" WHERE \"F\"() > 1",
		"SELECT a.b.c()",
		"SELECT * FROM db.sch.tbl",
		"SELECT $1::regclass, 'x'::text, E'\\x41'",
		"SELECT 1 ;",
		"SELECT 1; ",
		"SELECT 1 -- for",
		"SELECT 'into'",
		"SELECT 1 FROM t WINDOW w AS (PARTITION BY evil())",
		"SELECT DISTINCT ON (evil()) * FROM t",
		"SELECT * FROM t1 NATURAL JOIN (t2 CROSS JOIN t3) JOIN t4 ON evil()",
		"SELECT * FROM (VALUES (evil())) v(a)",
		"SELECT * FROM unnest(ARRAY[1]) WITH ORDINALITY",
		"SELECT SUBSTRING('abc' FROM evil() FOR 2)",
		"SELECT pg_catalog.set_config('role', 'x', false)",
		"SELECT merge_action() FROM t",
		"SELECT GROUPING(a) FROM t GROUP BY ROLLUP (a, evil())",
		"SELECT CAST('x' AS numeric(evil(), 2))",
		"SELECT * FROM t TABLESAMPLE SYSTEM (evil()) REPEATABLE (evil2())",
	} {
		if checkFastPath(t, s) {
			fast++
		}
	}
	if fast < 30 {
		t.Errorf("fast path taken for only %d statements: is it still used?", fast)
	}
	t.Logf("fast path answered for %d statements", fast)
}
