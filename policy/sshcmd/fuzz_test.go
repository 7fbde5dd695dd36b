package sshcmd

import (
	"testing"
)

// FuzzSplit: Split never panics, and a command it reports decidable has
// a literal name.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{
		"uname -a", "uname; rm -rf /", "uname $(curl x)", "uname `id`", "uname > /etc/x",
		"cat <<EOF\n$(id)\nEOF", "echo 'a b' \"c $d\" e\\ f", "una\\\nme", "a && b || c | d & e",
		"if a; then b; fi", "while a; do b; done", "{ a; (b); }", "x=1 y", "${a:-$(b)}", "ls *.go ~ {a,b}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		cmds, err := Split(line)
		if err != nil {
			return
		}
		for _, c := range cmds {
			if c.Undecidable == "" && len(c.Args) == 0 {
				t.Fatalf("Split(%q): decidable command without words", line)
			}
		}
	})
}

// FuzzParsePattern: compiling and matching never panic.
func FuzzParsePattern(f *testing.F) {
	for _, s := range []string{"uname *", "cat /var/log/app/*", "'a b' [x]", "a\\*", "*"} {
		f.Add(s, "uname -a")
	}
	f.Fuzz(func(t *testing.T, pattern, line string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		cmds, err := Split(line)
		if err != nil {
			return
		}
		for _, c := range cmds {
			p.Match(c.Args)
		}
	})
}
