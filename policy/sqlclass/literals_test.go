package sqlclass

import "testing"

// The audit trail's redaction and the shape key read literals with one
// lexer; these are the cases where the two used to disagree with each other
// or with PostgreSQL, and what both do now.
func TestLiteralsReconciled(t *testing.T) {
	// PostgreSQL ends a -- comment at \r as well as \n: what follows is
	// code, and its literals are redacted like any others. Redaction used
	// to drop everything up to \n.
	if got, want := RedactLiterals("SELECT 1 -- note\rFROM t WHERE pw = 'x'\n"), "SELECT ? \rFROM t WHERE pw = ?"; got != want {
		t.Errorf("redact: got %q, want %q", got, want)
	}
	a, okA := pgShapeKey(nil, "SELECT 1 -- note\rFROM t WHERE pw = 'x'")
	b, okB := pgShapeKey(nil, "SELECT 2 -- note\rFROM t WHERE pw = 'y'")
	if !okA || !okB || string(a) != string(b) {
		t.Errorf("shape keys after a \\r comment: %q (%v), %q (%v), want equal", a, okA, b, okB)
	}
	// A NUL byte anywhere, comments and quoted names included, keys by the
	// exact text: the markers start with NUL. It used to be refused only
	// outside comments and names.
	for _, s := range []string{"SELECT 1 /* \x00n */", "SELECT \"a\x00\" FROM t", "SELECT 1 -- \x00"} {
		if k, ok := pgShapeKey(nil, s); ok {
			t.Errorf("%q: keyed as %q, want no shape key", s, k)
		}
	}
	// A number written with a leading point is one number to both.
	if got, want := RedactLiterals("SELECT .5, t.c, x.5"), "SELECT ?, t.c, x.?"; got != want {
		t.Errorf("redact: got %q, want %q", got, want)
	}
	a, okA = pgShapeKey(nil, "SELECT .5 FROM t")
	b, okB = pgShapeKey(nil, "SELECT 7 FROM t")
	if !okA || !okB || string(a) != string(b) {
		t.Errorf("shape keys of .5 and 7: %q (%v), %q (%v), want equal", a, okA, b, okB)
	}
}

// Texts that share a shape key differ only in literals, so they must
// redact alike: the shape key and the redaction agree on where every
// literal begins and ends.
func TestShapeKeyAndRedactionAgree(t *testing.T) {
	_, cases := readGolden(t, "testdata/classify.golden")
	for _, c := range cases {
		checkRedactionAgrees(t, c.sql)
	}
}

func checkRedactionAgrees(t *testing.T, s string) {
	t.Helper()
	k0, ok := pgShapeKey(nil, s)
	if !ok {
		return
	}
	for _, v := range []string{replaceLiterals(s, "7", "'zz'"), replaceLiterals(s, "123456", "''")} {
		if k, ok := pgShapeKey(nil, v); !ok || string(k) != string(k0) {
			continue // an empty string has a marker of its own
		}
		if RedactLiterals(v) != RedactLiterals(s) {
			t.Errorf("%q and %q share a key but redact as %q and %q", s, v, RedactLiterals(s), RedactLiterals(v))
		}
	}
}
