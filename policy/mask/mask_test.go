package mask

import (
	"testing"
	"unicode/utf8"
)

func TestPlanAndMask(t *testing.T) {
	m, err := New("pii", []ColumnRule{
		{Pattern: "email", Method: Partial},
		{Pattern: "*ssn*", Method: Redact},
		{Pattern: "users.api_token", Method: Hash},
	}, []DetectorRule{{Detector: "card", Method: Partial}, {Detector: "secrets", Method: Redact}}, []byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	p := m.Plan([]string{"id", "EMAIL", "customer_ssn", "api_token", "notes"})
	if !p.Active() || p.Column(0) != 0 || p.Column(1) != Partial || p.Column(2) != Redact || p.Column(3) != Hash {
		t.Fatalf("plan = %+v", p.columns)
	}
	cases := []struct {
		col       int
		in, want  string
		unchanged bool
	}{
		{0, "42", "42", true},
		{1, "jane.doe@example.com", "j*******@example.com", false},
		{1, "not an email", "********mail", false},
		{2, "123-45-6789", "[redacted]", false},
		{4, "paid with 4111 1111 1111 1111 ok", "paid with **** **** **** 1111 ok", false},
		{4, "token AKIAIOSFODNN7EXAMPLE here", "token [redacted:aws_key] here", false},
		{4, "nothing to see", "nothing to see", true},
		{1, "Zoë Müller-Lüdenscheidt", "*******************eidt", false},
	}
	for _, c := range cases {
		out, changed := p.Mask(nil, c.col, []byte(c.in))
		if changed == c.unchanged {
			t.Errorf("col %d %q: changed=%v", c.col, c.in, changed)
		}
		got := c.in
		if changed {
			got = string(out)
		}
		if got != c.want {
			t.Errorf("col %d %q: got %q, want %q", c.col, c.in, got, c.want)
		}
		if !utf8.Valid(out) {
			t.Errorf("col %d %q: invalid UTF-8 %q", c.col, c.in, out)
		}
	}
	h1, _ := p.Mask(nil, 3, []byte("secret-a"))
	h2, _ := p.Mask(nil, 3, []byte("secret-a"))
	h3, _ := p.Mask(nil, 3, []byte("secret-b"))
	if string(h1) != string(h2) || string(h1) == string(h3) || len(h1) != 18 {
		t.Errorf("hash: %q %q %q", h1, h2, h3)
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New("x", nil, []DetectorRule{{Detector: "passport", Method: Redact}}, nil); err == nil {
		t.Error("unknown detector accepted")
	}
	if _, err := New("x", []ColumnRule{{Pattern: "[", Method: Redact}}, nil, nil); err == nil {
		t.Error("bad glob accepted")
	}
	if _, err := New("x", []ColumnRule{{Pattern: "a", Method: 0}}, nil, nil); err == nil {
		t.Error("missing method accepted")
	}
}

// FuzzMask runs every detector and method over arbitrary bytes: no panics,
// valid UTF-8 in gives valid UTF-8 out.
func FuzzMask(f *testing.F) {
	for _, s := range []string{"a@b.io", "4111 1111 1111 1111", "GB82 WEST 1234 5698 7654 32",
		"-----BEGIN PRIVATE KEY-----", "eyJhbGciOiJub25lIn0.eyJhIjoxfQ.", "123-45-6789", "ü@é.de",
		"-----END RSA PRIVATE KEY-----x@b.io"} {
		f.Add(s)
	}
	var ms []*Masker
	for _, meth := range []Method{Redact, Partial, Hash} {
		m, err := New("f", []ColumnRule{{Pattern: "c", Method: meth}}, []DetectorRule{{Detector: "pii", Method: meth}, {Detector: "secrets", Method: meth}}, nil)
		if err != nil {
			f.Fatal(err)
		}
		ms = append(ms, m)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, m := range ms {
			p := m.Plan([]string{"c", "d"})
			for col := range 2 {
				out, changed := p.Mask(nil, col, []byte(s))
				if changed && utf8.ValidString(s) && !utf8.Valid(out) {
					t.Fatalf("%q -> invalid UTF-8 %q", s, out)
				}
			}
		}
	})
}

func BenchmarkMaskRow(b *testing.B) {
	m, _ := New("pii", []ColumnRule{{Pattern: "email", Method: Partial}}, []DetectorRule{{Detector: "pii", Method: Partial}, {Detector: "secrets", Method: Redact}}, nil)
	p := m.Plan([]string{"id", "email", "name", "notes"})
	row := [][]byte{[]byte("123456"), []byte("jane.doe@example.com"), []byte("Jane Doe"), []byte("Order ORD-2025-000123 shipped to Berlin on 2025-03-14, total 129.90 EUR")}
	var dst []byte
	b.ReportAllocs()
	for b.Loop() {
		for i, v := range row {
			dst, _ = p.Mask(dst[:0], i, v)
		}
	}
}
