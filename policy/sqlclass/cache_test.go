package sqlclass

import (
	"fmt"
	"slices"
	"sync"
	"testing"
)

func TestShapeKey(t *testing.T) {
	same := [][2]string{
		{"SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 23456"},
		{"SELECT * FROM t WHERE name = 'bob'", "SELECT * FROM t WHERE name = 'it''s'"},
		{"UPDATE t SET x = 1.5 WHERE id = 7", "UPDATE t SET x = 22.25 WHERE id = 9"},
		{"SELECT 1 -- 'note'", "SELECT 2 -- 'note'"},
	}
	for _, p := range same {
		a, okA := pgShapeKey(nil, p[0])
		b, okB := pgShapeKey(nil, p[1])
		if !okA || !okB || string(a) != string(b) {
			t.Errorf("%q and %q: keys %q (%v) and %q (%v), want equal", p[0], p[1], a, okA, b, okB)
		}
	}
	differ := [][2]string{
		{"SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE b = 1"},
		{"COPY t TO ''", "COPY t TO '/tmp/x'"},
		{"SELECT 1 -- a", "SELECT 1 -- b"},
		{`SELECT "a" FROM t`, `SELECT "b" FROM t`},
		{"SELECT $1", "SELECT $2"},
	}
	for _, p := range differ {
		a, okA := pgShapeKey(nil, p[0])
		b, okB := pgShapeKey(nil, p[1])
		if okA && okB && string(a) == string(b) {
			t.Errorf("%q and %q share key %q", p[0], p[1], a)
		}
	}
	for _, s := range []string{
		`SELECT E'\''; DROP TABLE t; --'`, `SELECT 'a\'; DROP TABLE t; --'`, "SELECT $$x$$",
		"SELECT $q$ ' $q$", "SELECT 0x1F", "SELECT 1e5", "SELECT 1_000", "SELECT 'open",
		"SELECT /* open", "SELECT \x00", `SELECT U&'\0041'`, "SELECT X'1F'", "SELECT 1from t",
		`SELECT "open`,
	} {
		if k, ok := pgShapeKey(nil, s); ok {
			t.Errorf("%q: keyed as %q, want no shape key", s, k)
		}
	}
}

func TestClassifierCache(t *testing.T) {
	c := NewClassifier(Postgres{}, 64)
	q1 := c.Classify("SELECT * FROM users WHERE id = 1")
	q2 := c.Classify("SELECT * FROM users WHERE id = 2")
	if q1 != q2 {
		t.Error("statements differing only in literals were parsed twice")
	}
	// Utility statements are keyed by exact text: the file name matters.
	a := c.Classify("COPY users TO STDOUT")
	b := c.Classify("COPY users TO '/tmp/x'")
	if a.Class() != Read || b.Class() != Admin {
		t.Errorf("COPY: got %v and %v, want read and admin", a.Class(), b.Class())
	}
	e := c.Classify("SELEC 1")
	if e.Err == nil || c.Classify("SELEC 1") != e {
		t.Error("parse errors must be returned and cached")
	}
	// Bounded: many distinct texts never grow the cache past its capacity.
	for i := range 1000 {
		c.Classify(fmt.Sprintf("SELECT col%d FROM t", i))
	}
	if n := c.Len(); n > 64 {
		t.Errorf("cache holds %d entries, capacity 64", n)
	}
}

func TestClassifierConcurrent(t *testing.T) {
	c := NewClassifier(Postgres{}, 128)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				q := c.Classify(fmt.Sprintf("DELETE FROM t%d WHERE id = %d", i%50, g))
				if q.Err != nil || q.Class() != Write {
					t.Errorf("got %+v", q)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// TestShapeSharingIsSound checks, over the golden corpus with literals
// varied, that whenever two texts share a shape key their fresh
// classifications are equal: the cache never lends a wrong answer.
func TestShapeSharingIsSound(t *testing.T) {
	_, cases := readGolden(t, "testdata/classify.golden")
	variants := func(s string) []string {
		return []string{s, replaceLiterals(s, "7", "'zz'"), replaceLiterals(s, "123456", "''")}
	}
	for _, c := range cases {
		q0, err := Postgres{}.Classify(c.sql)
		if err != nil || !q0.ShapeSafe {
			continue
		}
		k0, ok := pgShapeKey(nil, c.sql)
		if !ok {
			continue
		}
		for _, v := range variants(c.sql) {
			k, ok := pgShapeKey(nil, v)
			if !ok || string(k) != string(k0) {
				continue
			}
			q, err := Postgres{}.Classify(v)
			if err != nil {
				t.Errorf("%q parses but its variant %q does not: %v", c.sql, v, err)
				continue
			}
			if fmt.Sprint(describe(q)) != fmt.Sprint(describe(q0)) {
				t.Errorf("%q and %q share a key but classify as %q and %q", c.sql, v, describe(q0), describe(q))
			}
		}
	}
}

// replaceLiterals swaps simple numbers and strings for the given ones.
func replaceLiterals(s, num, str string) string {
	k, ok := pgShapeKey(nil, s)
	if !ok {
		return s
	}
	out := make([]byte, 0, len(k))
	for i := 0; i < len(k); i++ {
		if k[i] == 0 && i+1 < len(k) {
			switch k[i+1] {
			case 'n':
				out = append(out, num...)
			case 's':
				out = append(out, str...)
			case 'e':
				out = append(out, "''"...)
			}
			i++
			continue
		}
		out = append(out, k[i])
	}
	return string(out)
}

// SQL text given to a function is in a literal: two texts that differ only
// there must not share a classification through the shape cache.
func TestCacheSQLTextLiterals(t *testing.T) {
	c := NewClassifier(Postgres{}, 256)
	for _, tc := range []struct{ sql, table string }{
		{"SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM aliases') FROM docs WHERE id = 1", "aliases"},
		{"SELECT ts_rewrite('a'::tsquery, 'SELECT t, s FROM secrets') FROM docs WHERE id = 2", "secrets"},
		{"SELECT table_to_xml('public_docs', true, false, '')", "public_docs"},
		{"SELECT table_to_xml('secrets', true, false, '')", "secrets"},
	} {
		q := c.Classify(tc.sql)
		if q.Err != nil || !slices.Contains(q.Statements[0].Tables, tc.table) {
			t.Errorf("%q: %v %q, want table %s", tc.sql, q.Err, describe(q), tc.table)
		}
	}
}

// A literal with bytes that are not UTF-8 does not parse: it must not
// borrow the classification of a text of the same shape that did.
func TestCacheInvalidUTF8Literal(t *testing.T) {
	c := NewClassifier(Postgres{}, 256)
	if q := c.Classify("SELECT 'ok'"); q.Err != nil {
		t.Fatal(q.Err)
	}
	if q := c.Classify("SELECT '\xe8'"); q.Err == nil {
		t.Fatalf("invalid UTF-8 in a literal classified as %q", describe(q))
	}
}
