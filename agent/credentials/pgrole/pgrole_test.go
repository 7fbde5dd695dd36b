package pgrole

import (
	"strings"
	"testing"
)

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:    `'plain'`,
		`it's`:     `'it''s'`,
		`back\'sl`: `E'back\\''sl'`,
	} {
		if got := QuoteLiteral(in); got != want {
			t.Errorf("QuoteLiteral(%q) = %s, want %s", in, got, want)
		}
	}
	if got := QuoteIdent(`we"ird`); got != `"we""ird"` {
		t.Errorf("QuoteIdent = %s", got)
	}
}

func TestScramVerifierShape(t *testing.T) {
	v, err := scramVerifier(RandomPassword())
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.FieldsFunc(v, func(r rune) bool { return r == '$' || r == ':' })
	if len(parts) != 5 || parts[0] != "SCRAM-SHA-256" || parts[1] != "1" {
		t.Errorf("verifier %q", v)
	}
}

// BenchmarkScramVerifier is the client-side key derivation per role.
func BenchmarkScramVerifier(b *testing.B) {
	pw := RandomPassword()
	for b.Loop() {
		if _, err := scramVerifier(pw); err != nil {
			b.Fatal(err)
		}
	}
}
