package policy

import (
	"strings"
	"testing"
	"time"
)

// TestSyntaxErrorLine: yaml.v3 reports an indentation error at the line
// where the enclosing block began; the error must name the line that broke
// it, and that line's first column.
func TestSyntaxErrorLine(t *testing.T) {
	for _, tc := range []struct {
		name, text, want string
	}{
		{"key indented too little", "version: 1\nidentities:\n  - name: a\n    cgroup: x\n   uid: 3\n", "p.yaml:5:4: invalid YAML"},
		{"mapping key dedented by one", "a: 1\nb:\n  c: 1\n  d: 2\n e: 3\nf: 4\n", "p.yaml:5:2: invalid YAML"},
		{"unclosed flow list", "rules: [", "p.yaml:1:1: invalid YAML"},
		{"quoted scalar before the break", "a:\n  b: \"x\n    y\"\n  c: 1\n d: 2\n", "p.yaml:5:2: invalid YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v struct{}
			err := Decode("p.yaml", []byte(tc.text), &v)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %v, want prefix %q", err, tc.want)
			}
		})
	}
}

// TestDecodeOverDefaults: Decode keeps the values of keys the text does not
// name, fills maps keyed by name, and reports unknown keys with a
// suggestion at their position.
func TestDecodeOverDefaults(t *testing.T) {
	type source struct {
		TTL  time.Duration `yaml:"ttl"`
		User string        `yaml:"user"`
	}
	type conf struct {
		Port    uint16            `yaml:"port"`
		Name    string            `yaml:"name"`
		Pool    map[string]int    `yaml:"pool"`
		Sources map[string]source `yaml:"sources"`
	}
	c := conf{Port: 15001, Name: "default"}
	if err := Decode("c.yaml", []byte("name: x\npool: {db: 2}\nsources:\n  local: {ttl: 5m, user: u}\n"), &c); err != nil {
		t.Fatal(err)
	}
	if c.Port != 15001 || c.Name != "x" || c.Pool["db"] != 2 || c.Sources["local"].TTL != 5*time.Minute {
		t.Fatalf("decoded %+v", c)
	}
	err := Decode("c.yaml", []byte("name: x\nsources:\n  local: {tll: 5m}\n"), &c)
	if err == nil || err.Error() != `c.yaml:3:11: unknown key "tll"; did you mean "ttl"?` {
		t.Fatalf("err = %v", err)
	}
	err = Decode("c.yaml", []byte("pool: {db: 1, db: 2}\n"), &c)
	if err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Fatalf("duplicate map key: err = %v", err)
	}
}
