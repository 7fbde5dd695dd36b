package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary YAML to the loader: it must return a policy or
// positioned errors, never panic, and a policy it accepts must decide and
// run its tests without panicking.
func FuzzLoad(f *testing.F) {
	f.Add(DefaultSource())
	files, _ := filepath.Glob("examples/*.yaml")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("rules: [{name: r, action: allow, sql: {class: read}}]"))
	f.Add([]byte("identities: [{name: a, uid: 1, intercept: [{to: 10.0.0.0/8, ports: 1-2}]}]"))
	f.Add([]byte("a: &x [*x]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := load("fuzz.yaml", string(data), fakeResolver{})
		if err != nil {
			if _, ok := err.(ErrorList); !ok {
				t.Fatalf("error is %T, want ErrorList: %v", err, err)
			}
			return
		}
		p.RunTests()
		p.Decide(&Input{Subject: &Subject{Tag: "a"}})
		p.DecideSQL(&Subject{Tag: "a"}, nil, "SELECT 1")
	})
}
