package sshcmd

import (
	"reflect"
	"strings"
	"testing"
)

// TestSplit holds the attacker's inputs: every simple command a line would
// run comes out, and every one the words do not describe is Undecidable.
func TestSplit(t *testing.T) {
	type cmd = Command
	cases := []struct {
		line string
		want []Command
	}{
		{"uname -a", []cmd{{Args: []string{"uname", "-a"}}}},
		{"uname; rm -rf /", []cmd{{Args: []string{"uname"}}, {Args: []string{"rm", "-rf", "/"}}}},
		{"uname && rm -rf / || id", []cmd{{Args: []string{"uname"}}, {Args: []string{"rm", "-rf", "/"}}, {Args: []string{"id"}}}},
		{"uname | sh", []cmd{{Args: []string{"uname"}}, {Args: []string{"sh"}}}},
		{"uname\nrm -rf /", []cmd{{Args: []string{"uname"}}, {Args: []string{"rm", "-rf", "/"}}}},
		{"uname & rm x", []cmd{{Args: []string{"uname"}}, {Args: []string{"rm", "x"}}}},
		{"uname $(curl x)", []cmd{{Args: []string{"uname"}, Undecidable: "command substitution"}, {Args: []string{"curl", "x"}}}},
		{"uname `id`", []cmd{{Args: []string{"uname"}, Undecidable: "command substitution"}, {Args: []string{"id"}}}},
		{`uname "$(id)"`, []cmd{{Args: []string{"uname"}, Undecidable: "command substitution"}, {Args: []string{"id"}}}},
		{"uname > /etc/x", []cmd{{Args: []string{"uname"}, Undecidable: "redirection >"}}},
		{"uname >> /etc/x", []cmd{{Args: []string{"uname"}, Undecidable: "redirection >>"}}},
		{"cat < /etc/shadow", []cmd{{Args: []string{"cat"}, Undecidable: "redirection <"}}},
		{"cat <<EOF\nhello\nEOF", []cmd{{Args: []string{"cat"}, Undecidable: "redirection <<"}}},
		{"cat <<EOF\n$(rm -rf /)\nEOF", []cmd{{Args: []string{"cat"}, Undecidable: "redirection <<"}, {Args: []string{"rm", "-rf", "/"}}}},
		{"cat <(rm x)", []cmd{{Args: []string{"cat"}, Undecidable: "process substitution"}, {Args: []string{"rm", "x"}}}},
		{`echo 'a b' "c d" e\ f`, []cmd{{Args: []string{"echo", "a b", "c d", "e f"}}}},
		{`'r''m' -rf /`, []cmd{{Args: []string{"rm", "-rf", "/"}}}},
		{`"rm" -rf /`, []cmd{{Args: []string{"rm", "-rf", "/"}}}},
		{"una\\\nme -a", []cmd{{Args: []string{"uname", "-a"}}}},
		{"uname # ; rm -rf /", []cmd{{Args: []string{"uname"}}}},
		{"uname '; rm -rf /'", []cmd{{Args: []string{"uname", "; rm -rf /"}}}},
		{"echo $HOME", []cmd{{Args: []string{"echo"}, Undecidable: "parameter expansion"}}},
		{"$X -rf /", []cmd{{Undecidable: "parameter expansion"}}},
		{`echo "$HOME"`, []cmd{{Args: []string{"echo"}, Undecidable: "parameter expansion"}}},
		{"ls *", []cmd{{Args: []string{"ls"}, Undecidable: "pathname expansion (glob)"}}},
		{"ls '*'", []cmd{{Args: []string{"ls", "*"}}}},
		{"ls ~root", []cmd{{Args: []string{"ls"}, Undecidable: "tilde expansion"}}},
		{"cat x=~/secret", []cmd{{Args: []string{"cat"}, Undecidable: "tilde expansion"}}},
		{"git log 'HEAD~1'", []cmd{{Args: []string{"git", "log", "HEAD~1"}}}},
		{"echo {a,b}", []cmd{{Args: []string{"echo"}, Undecidable: "brace expansion"}}},
		{"LD_PRELOAD=/tmp/x.so uname", []cmd{{Args: []string{"uname"}, Undecidable: "variable assignment LD_PRELOAD="}}},
		{"PATH=/tmp", []cmd{{Undecidable: "variable assignment PATH="}}},
		{"{ uname; rm x; }", []cmd{{Args: []string{"uname"}}, {Args: []string{"rm", "x"}}}},
		{"(uname; rm x)", []cmd{{Args: []string{"uname"}}, {Args: []string{"rm", "x"}}}},
		{"if uname; then rm x; else id; fi", []cmd{{Args: []string{"uname"}}, {Args: []string{"rm", "x"}}, {Args: []string{"id"}}}},
		{"while true; do rm x; done", []cmd{{Args: []string{"true"}}, {Args: []string{"rm", "x"}}}},
		{"echo ${X:-$(rm x)}", []cmd{{Args: []string{"echo"}, Undecidable: "parameter expansion"}, {Args: []string{"rm", "x"}}}},
		{"uname $(id) -a", []cmd{{Args: []string{"uname"}, Undecidable: "command substitution"}, {Args: []string{"id"}}}},
		{`cat $'/etc/shadow'`, []cmd{{Args: []string{"cat"}, Undecidable: "$'...' quoting"}}},
		{`cat $"x"`, []cmd{{Args: []string{"cat"}, Undecidable: `$"..." quoting`}}},
		{"! uname", []cmd{{Args: []string{"uname"}}}},
		{"", nil},
		{"   # only a comment", nil},
	}
	for _, c := range cases {
		got, err := Split(c.line)
		if err != nil {
			t.Errorf("Split(%q): %v", c.line, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Split(%q)\n got %+v\nwant %+v", c.line, got, c.want)
		}
	}
}

// TestSplitRefuses: syntax whose commands depend on run time, or that
// defines new ones, is refused for the whole line, as is a line that does
// not parse.
func TestSplitRefuses(t *testing.T) {
	for _, line := range []string{
		"uname 'unterminated",
		"uname $(",
		"uname; )",
		"uname() { rm -rf /; }; uname",
		"for f in /etc/*; do cat $f; done",
		"case x in x) rm y;; esac",
		"export X=1",
		"declare -x X=1",
		"[[ -e /x ]] && rm /x",
		"(( x = 1 ))",
		"let x=1",
		"coproc rm x",
		"{ uname; } > /tmp/x",
		"uname\x00; rm -rf /",
		"uname\r",
		"uname\x1b[2K",
		strings.Repeat("a", MaxLine+1),
	} {
		if cmds, err := Split(line); err == nil {
			t.Errorf("Split(%.40q) = %+v, want an error", line, cmds)
		}
	}
}

func TestPattern(t *testing.T) {
	cases := []struct {
		pattern string
		args    []string
		want    bool
	}{
		{"uname *", []string{"uname"}, true},
		{"uname *", []string{"uname", "-a", "-r"}, true},
		{"uname *", []string{"unamex"}, false},
		{"uname", []string{"uname", "-a"}, false},
		{"uname -a", []string{"uname", "-a"}, true},
		{"cat /var/log/app/*", []string{"cat", "/var/log/app/x.log"}, true},
		{"cat /var/log/app/*", []string{"cat", "/var/log/app/../../../etc/shadow"}, false},
		{"cat /var/log/app/*", []string{"cat", "/var/log/app/x", "/etc/shadow"}, false},
		{"cat /var/log/app/*", []string{"cat"}, false},
		{"'a b' x", []string{"a b", "x"}, true},
		{"*", []string{"anything"}, true},
		{"*", []string{"two", "words"}, false},
		{"git -C /srv/* status", []string{"git", "-C", "/srv/repo", "status"}, true},
		{"git -C * status", []string{"git", "-C", "/srv/repo", "status"}, false},
	}
	for _, c := range cases {
		p, err := ParsePattern(c.pattern)
		if err != nil {
			t.Fatalf("ParsePattern(%q): %v", c.pattern, err)
		}
		if got := p.Match(c.args); got != c.want {
			t.Errorf("%q matches %q: %v, want %v", c.pattern, c.args, got, c.want)
		}
	}
	for _, bad := range []string{"", "a; b", "a > x", "X=1 a", "a $(b)", "a $X", "a &", "a [", "a | b"} {
		if _, err := ParsePattern(bad); err == nil {
			t.Errorf("ParsePattern(%q) accepted", bad)
		}
	}
}
