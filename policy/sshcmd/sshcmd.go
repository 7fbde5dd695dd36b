// Package sshcmd splits the command line of an SSH exec request into the
// simple commands the server's shell would run, so a policy can decide each
// of them on its own words.
//
// The server hands the line to the login shell (sh -c LINE), so a line is as
// allowed as the least allowed thing it runs. Split parses it with
// mvdan.cc/sh (bash syntax, a superset of what sh and dash accept) and
// returns every simple command: those after ;, &&, ||, |, & and newlines,
// inside { }, ( ), if and while, and inside $( ), backticks and process
// substitution. A command is decided on its words only when the shell would
// run exactly those words: a word with an expansion ($VAR, $( ), globs,
// braces, ~), a redirection or a variable assignment makes the command
// Undecidable, and the policy refuses it. Syntax that makes the words
// depend on run time or defines new commands (functions, for, case,
// declare/export, [[ ]], (( ))) is an error for the whole line.
//
// The package is pure: no I/O, no logging.
package sshcmd

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/syntax"
)

// MaxLine bounds the command line Split parses: a longer one is an error.
const MaxLine = 64 << 10

// Command is one simple command of a line.
type Command struct {
	// Args are its words as the program receives them (quotes removed),
	// Args[0] the command name. For an Undecidable command they are its
	// literal words up to the first one that is not.
	Args []string
	// Undecidable, when set, says why the command's words are not what it
	// would run: "command substitution", "redirection >", ... The command
	// must be refused.
	Undecidable string
}

// String returns the command's literal words joined by spaces, for
// messages.
func (c Command) String() string { return strings.Join(c.Args, " ") }

// Split parses line and returns its simple commands in the order they
// appear (an outer command before the commands substituted into it). An
// error means the line cannot be decided at all: it does not parse, is
// longer than MaxLine, or uses syntax outside what Split decides.
func Split(line string) ([]Command, error) {
	f, err := parse(line)
	if err != nil {
		return nil, err
	}
	var (
		out     []Command
		walkErr error
		// redirs holds the redirections of the statement whose command
		// the walk reaches next.
		redirs = map[*syntax.CallExpr]string{}
	)
	syntax.Walk(f, func(n syntax.Node) bool {
		if walkErr != nil {
			return false
		}
		switch n := n.(type) {
		case nil:
			// The walk's signal that a node's children are done.
		case *syntax.File, *syntax.Word, *syntax.Lit, *syntax.SglQuoted, *syntax.DblQuoted,
			*syntax.Comment, *syntax.BinaryCmd, *syntax.Block, *syntax.Subshell,
			*syntax.IfClause, *syntax.WhileClause, *syntax.CmdSubst, *syntax.ProcSubst,
			*syntax.ParamExp, *syntax.ArithmExp, *syntax.BraceExp, *syntax.ExtGlob,
			*syntax.Redirect, *syntax.Assign:
			// Structure, or the parts of a word the call below judges;
			// substituted commands inside are walked into.
		case *syntax.Stmt:
			if len(n.Redirs) > 0 {
				r := "redirection " + n.Redirs[0].Op.String()
				call, ok := n.Cmd.(*syntax.CallExpr)
				if !ok {
					walkErr = fmt.Errorf("a %s on a compound command is not decided", r)
					return false
				}
				redirs[call] = r
			}
		case *syntax.CallExpr:
			out = append(out, call(n, redirs[n]))
		default:
			walkErr = fmt.Errorf("%s is not decided by rules", describe(n))
			return false
		}
		return true
	})
	if walkErr != nil {
		return nil, walkErr
	}
	return out, nil
}

func parse(line string) (*syntax.File, error) {
	if len(line) > MaxLine {
		return nil, fmt.Errorf("command line of %d bytes is longer than %d", len(line), MaxLine)
	}
	// The parser and the server's shell need not agree on control
	// characters (mvdan.cc/sh drops a \r that bash keeps in the word):
	// a line with one is not decided.
	if i := strings.IndexFunc(line, func(r rune) bool { return r < 0x20 && r != '\t' && r != '\n' || r == 0x7f }); i >= 0 {
		return nil, fmt.Errorf("command line holds control character %q", line[i])
	}
	f, err := syntax.NewParser(syntax.Variant(syntax.LangBash)).Parse(strings.NewReader(line), "")
	if err != nil {
		return nil, fmt.Errorf("command line does not parse: %w", err)
	}
	return f, nil
}

// call turns one simple command into a Command; redir is the first
// redirection of its statement, if any.
func call(c *syntax.CallExpr, redir string) Command {
	cmd := Command{Undecidable: redir}
	if len(c.Assigns) > 0 {
		cmd.Undecidable = "variable assignment " + c.Assigns[0].Name.Value + "="
	}
	for _, w := range c.Args {
		why := expansion(w)
		var fields []string
		if why == "" {
			var err error
			if fields, err = expand.Fields(nil, w); err != nil || len(fields) != 1 {
				why = "a word that does not expand to itself"
			}
		}
		if why != "" {
			// Words after this one would stand at positions they do not
			// hold: leave them out.
			if cmd.Undecidable == "" {
				cmd.Undecidable = why
			}
			break
		}
		cmd.Args = append(cmd.Args, fields[0])
	}
	if len(cmd.Args) == 0 && cmd.Undecidable == "" {
		cmd.Undecidable = "a command without a literal name"
	}
	return cmd
}

// expansion says which expansion the shell would make in w, "" for none:
// w is then its own value once quotes are removed.
func expansion(w *syntax.Word) string {
	for _, p := range w.Parts {
		switch p := p.(type) {
		case *syntax.Lit:
			// bash expands ~ at a word's start and, outside POSIX mode,
			// after = and : in words that look like assignments.
			if strings.Contains(p.Value, "~") {
				return "tilde expansion"
			}
			if strings.ContainsAny(p.Value, "*?[") {
				return "pathname expansion (glob)"
			}
			if strings.ContainsAny(p.Value, "{}") {
				return "brace expansion"
			}
		case *syntax.SglQuoted:
			if p.Dollar {
				// $'...' is bash's; sh and dash read a $ and a quoted
				// string, so the word depends on the server's shell.
				return "$'...' quoting"
			}
		case *syntax.DblQuoted:
			if p.Dollar {
				return `$"..." quoting`
			}
			for _, q := range p.Parts {
				if _, ok := q.(*syntax.Lit); !ok {
					return describe(q)
				}
			}
		default:
			return describe(p)
		}
	}
	return ""
}

// describe names a syntax node for a message.
func describe(n syntax.Node) string {
	switch n := n.(type) {
	case *syntax.CmdSubst:
		return "command substitution"
	case *syntax.ProcSubst:
		return "process substitution"
	case *syntax.ParamExp:
		return "parameter expansion"
	case *syntax.ArithmExp:
		return "arithmetic expansion"
	case *syntax.BraceExp:
		return "brace expansion"
	case *syntax.ExtGlob:
		return "extended glob"
	case *syntax.FuncDecl:
		return "a function definition"
	case *syntax.ForClause:
		return "a for loop"
	case *syntax.CaseClause:
		return "a case statement"
	case *syntax.DeclClause:
		return n.Variant.Value
	case *syntax.TestClause:
		return "[[ ]]"
	case *syntax.ArithmCmd:
		return "(( ))"
	case *syntax.LetClause:
		return "let"
	case *syntax.TimeClause:
		return "time"
	case *syntax.CoprocClause:
		return "coproc"
	}
	return fmt.Sprintf("%T", n)
}

// Pattern is a compiled exec pattern: a command line of glob words.
type Pattern struct {
	words []string
}

// ParsePattern compiles an exec pattern. It is one simple command whose
// words are path.Match globs ("*" does not match "/"), except that a last
// word of "*" alone stands for any number of further arguments, none
// included: "uname *" matches "uname" and "uname -a -r".
func ParsePattern(p string) (Pattern, error) {
	f, err := parse(p)
	if err != nil {
		return Pattern{}, err
	}
	if len(f.Stmts) != 1 || len(f.Stmts[0].Redirs) > 0 || f.Stmts[0].Background || f.Stmts[0].Negated {
		return Pattern{}, errors.New("a pattern is one simple command")
	}
	c, ok := f.Stmts[0].Cmd.(*syntax.CallExpr)
	if !ok || len(c.Assigns) > 0 || len(c.Args) == 0 {
		return Pattern{}, errors.New("a pattern is one simple command")
	}
	var out Pattern
	for _, w := range c.Args {
		for _, part := range w.Parts {
			switch part.(type) {
			case *syntax.Lit, *syntax.SglQuoted, *syntax.DblQuoted:
			default:
				return Pattern{}, fmt.Errorf("a pattern holds no %s", describe(part))
			}
		}
		v, err := expand.Literal(nil, w)
		if err != nil {
			return Pattern{}, fmt.Errorf("pattern word %q: %w", w.Lit(), err)
		}
		if _, err := path.Match(v, ""); err != nil {
			return Pattern{}, fmt.Errorf("pattern word %q is not a valid glob", v)
		}
		out.words = append(out.words, v)
	}
	return out, nil
}

// Match reports whether the words of a command match the pattern.
func (p Pattern) Match(args []string) bool {
	for i, w := range p.words {
		if i == len(p.words)-1 && w == "*" && i > 0 {
			return len(args) >= i
		}
		if i >= len(args) {
			return false
		}
		if ok, _ := path.Match(w, args[i]); !ok {
			return false
		}
	}
	return len(args) == len(p.words)
}

// String returns the pattern's words joined by spaces.
func (p Pattern) String() string { return strings.Join(p.words, " ") }
