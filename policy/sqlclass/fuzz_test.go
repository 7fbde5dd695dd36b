package sqlclass

import (
	"testing"
)

// FuzzClassify feeds arbitrary text to the parser, the classifier and the
// shape key: none may panic, two texts with one shape key that both parse
// must classify alike and redact alike, and the summary fast path must
// agree with the full parse whenever it answers.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		"SELECT 1", "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
		"COPY t TO PROGRAM 'x'", "DO $$ BEGIN END $$", "EXPLAIN ANALYZE DELETE FROM t",
		"SELECT pg_read_file('x'); DROP TABLE t", "SELECT 'a''b', 1.5, $1 -- c",
		"SELECT * FROM t FOR UPDATE", "/* nested /* */ */ SELECT 1",
		"SELECT CASE WHEN a THEN f(1) END, (SELECT g() FROM t) FROM u JOIN v ON h()",
	} {
		f.Add(s)
	}
	c := NewClassifier(Postgres{}, 256)
	f.Fuzz(func(t *testing.T, s string) {
		checkFastPath(t, s)
		checkRedactionAgrees(t, s)
		q := c.Classify(s)
		if q == nil {
			t.Fatal("nil query")
		}
		fresh, err := Postgres{}.Classify(s)
		if (err != nil) != (q.Err != nil) {
			// The cache lent another text's answer: only allowed when
			// both parse and agree.
			t.Fatalf("%q: cached err %v, fresh err %v", s, q.Err, err)
		}
		if err == nil && fresh.Class() != q.Class() {
			t.Fatalf("%q: cached class %v, fresh class %v", s, q.Class(), fresh.Class())
		}
	})
}
