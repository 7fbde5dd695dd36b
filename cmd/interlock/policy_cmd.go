package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/daemon"
	"github.com/interlock-dev/interlock/policy"
	"github.com/interlock-dev/interlock/policy/sqlclass"
)

const policyUsage = `usage:
  interlock policy check FILE...
      validate policy files; errors are FILE:LINE:COL: what is wrong
  interlock policy test [-v] FILE...
      run the test cases each file ships (tests: inside, or FILE_test.yaml beside it)
  interlock policy explain [--policy FILE] (--identity NAME | --tag TAG [--uid N] [--exe PATH])
                           [--target NAME] (--sql TEXT | --http 'METHOD PATH' | --redis CMD | --ssh CMD) [--json]
      show how a request is classified and decided, and by which rule
      (without --policy: the running interlockd's policy, else the embedded default; it says which)
  interlock policy default
      print the embedded default policy
`

// runPolicy implements the offline policy commands: check, test, explain
// and default; explain without --policy asks the daemon for its policy. It
// returns the process exit code: 0 success, 1 a policy problem or failed
// test, 2 a usage error. (`policy reload` talks to the daemon and lives
// with the other control commands.)
func runPolicy(ctx context.Context, c *control.Client, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return 2
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "check":
		return policyCheck(rest, stdout, stderr)
	case "test":
		return policyTest(rest, stdout, stderr)
	case "explain":
		return policyExplain(ctx, c, rest, stdout, stderr)
	case "default":
		stdout.Write(policy.DefaultSource())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, policyUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "interlock policy: unknown command %q\n%s", cmd, policyUsage)
		return 2
	}
}

// printLoadError prints each positioned error on its own line.
func printLoadError(w io.Writer, err error) {
	var list policy.ErrorList
	if errors.As(err, &list) {
		for _, e := range list {
			fmt.Fprintln(w, e)
		}
		return
	}
	fmt.Fprintf(w, "interlock policy: %v\n", err)
}

func policyCheck(files []string, stdout, stderr io.Writer) int {
	if len(files) == 0 {
		fmt.Fprint(stderr, "usage: interlock policy check FILE...\n")
		return 2
	}
	code := 0
	for _, f := range files {
		p, err := policy.Load(context.Background(), policy.Source{Path: f}, policy.Options{})
		if err != nil {
			printLoadError(stderr, err)
			code = 1
			continue
		}
		for _, w := range p.Warnings() {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		fmt.Fprintf(stdout, "%s: ok (targets: %d, tests: %d)\n", f, len(p.Targets()), len(p.Tests()))
	}
	return code
}

func policyTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "print passing tests too")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, "usage: interlock policy test [-v] FILE...\n")
		return 2
	}
	code := 0
	for _, f := range fs.Args() {
		p, err := policy.Load(context.Background(), policy.Source{Path: f}, policy.Options{})
		if err != nil {
			printLoadError(stderr, err)
			code = 1
			continue
		}
		results := p.RunTests()
		failed := 0
		for _, r := range results {
			if !r.Pass {
				failed++
				fmt.Fprintln(stdout, r)
			} else if *verbose {
				fmt.Fprintln(stdout, r)
			}
		}
		switch {
		case len(results) == 0:
			fmt.Fprintf(stdout, "%s: no tests\n", f)
		case failed > 0:
			fmt.Fprintf(stdout, "%s: FAIL %d of %d tests\n", f, failed, len(results))
			code = 1
		default:
			fmt.Fprintf(stdout, "%s: ok %d tests\n", f, len(results))
		}
	}
	return code
}

// explanation is the JSON form of `policy explain --json`.
type explanation struct {
	Policy     string          `json:"policy"`
	Identity   string          `json:"identity,omitempty"`
	Identities []string        `json:"matched_identities,omitempty"`
	Target     string          `json:"target,omitempty"`
	Statements []explainedStmt `json:"statements,omitempty"`
	ParseError string          `json:"parse_error,omitempty"`
	Action     string          `json:"action"`
	Rule       string          `json:"rule"`
	// Mode is "enforce" or "audit"; Verdict reads Action under it
	// ("would deny" in audit mode).
	Mode     string        `json:"mode"`
	Verdict  string        `json:"verdict"`
	Message  string        `json:"message,omitempty"`
	Mask     string        `json:"mask,omitempty"`
	Approval *approvalJSON `json:"approval,omitempty"`
}

type explainedStmt struct {
	Class            string   `json:"class"`
	Command          string   `json:"command"`
	Tables           []string `json:"tables,omitempty"`
	Functions        []string `json:"functions,omitempty"`
	UnknownFunctions []string `json:"unknown_functions,omitempty"`
	Flags            []string `json:"flags,omitempty"`
	Reasons          []string `json:"reasons,omitempty"`
	Rule             string   `json:"rule"`
	Action           string   `json:"action"`
}

type approvalJSON struct {
	Reviewers []string `json:"reviewers"`
	Quorum    int      `json:"quorum"`
	Timeout   string   `json:"timeout"`
}

func policyExplain(ctx context.Context, c *control.Client, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("policy explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("policy", "", "policy file (default: the running interlockd's policy, else the embedded default)")
	identity := fs.String("identity", "", "identity name the caller has")
	tag := fs.String("tag", "", "cgroup tag of the caller (instead of --identity)")
	uid := fs.Uint("uid", 0, "caller's uid (with --tag)")
	exe := fs.String("exe", "", "caller's executable path (with --tag)")
	target := fs.String("target", "", "target name")
	sql := fs.String("sql", "", "SQL text of the request")
	httpReq := fs.String("http", "", "HTTP request as 'METHOD PATH'")
	redis := fs.String("redis", "", "Redis command name")
	ssh := fs.String("ssh", "", "SSH command line")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 || (*identity == "") == (*tag == "") {
		fmt.Fprint(stderr, "interlock policy explain: give exactly one of --identity or --tag\n")
		return 2
	}
	var p *policy.Policy
	var name string
	if *file == "" {
		var err error
		if p, name, err = daemonPolicy(ctx, c); err != nil {
			printLoadError(stderr, err)
			return 1
		}
	} else {
		var err error
		if p, err = policy.Load(ctx, policy.Source{Path: *file}, policy.Options{}); err != nil {
			printLoadError(stderr, err)
			return 1
		}
		name = *file
	}
	t := &policy.Test{Identity: *identity, Target: *target, SQL: *sql, Redis: *redis, SSH: *ssh}
	if *identity != "" && p.Identity(*identity) == nil {
		fmt.Fprintf(stderr, "interlock policy explain: %s has no identity %q\n", name, *identity)
		return 1
	}
	if *tag != "" {
		t.Subject = &policy.Subject{Tag: *tag, UID: uint32(*uid), Exe: *exe}
	}
	if *target != "" && p.Target(*target) == nil {
		fmt.Fprintf(stderr, "interlock policy explain: %s has no target %q\n", name, *target)
		return 1
	}
	if *httpReq != "" {
		m, path, _ := strings.Cut(strings.TrimSpace(*httpReq), " ")
		t.HTTPMethod, t.HTTPPath = strings.ToUpper(m), strings.TrimSpace(path)
	}
	d, q := p.Explain(t)
	mode := p.ExplainMode(t)
	ex := explanation{Policy: name, Identity: *identity, Target: *target, Action: d.Action.String(), Rule: d.Rule,
		Mode: mode.String(), Verdict: mode.Describe(d.Action), Message: d.Message}
	if t.Subject != nil {
		ex.Identities = p.Identities(nil, t.Subject)
	}
	if d.Mask != nil {
		ex.Mask = d.Mask.Name()
	}
	if a := d.Approval; a != nil {
		ex.Approval = &approvalJSON{Reviewers: a.Reviewers, Quorum: a.Quorum, Timeout: a.Timeout.String()}
	}
	if q != nil {
		if q.Err != nil {
			ex.ParseError = q.Err.Error()
		}
		for i := range q.Statements {
			st := &q.Statements[i]
			sd := p.ExplainStatement(t, st)
			ex.Statements = append(ex.Statements, explainedStmt{
				Class: p.EffectiveClass(st).String(), Command: st.Command, Tables: st.Tables, Functions: st.Functions,
				UnknownFunctions: st.UnknownFunctions, Flags: flags(st), Reasons: st.Reasons,
				Rule: sd.Rule, Action: sd.Action.String(),
			})
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(ex); err != nil {
			fmt.Fprintf(stderr, "interlock policy explain: %v\n", err)
			return 1
		}
		return 0
	}
	printExplanation(stdout, &ex)
	return 0
}

// daemonPolicy is the policy explain decides with when none is named: the
// running interlockd's, else the embedded default. The name says which,
// and why when it is the default, so an answer never silently comes from a
// policy the daemon does not enforce.
func daemonPolicy(ctx context.Context, c *control.Client) (*policy.Policy, string, error) {
	var pt daemon.PolicyText
	err := c.Call(ctx, "/v1/policy", nil, &pt)
	switch {
	case errors.Is(err, control.ErrNotRunning):
		return policy.Default(), "embedded default policy (interlockd is not running at " + c.Socket + "; give --policy FILE for another)", nil
	case err != nil:
		return policy.Default(), fmt.Sprintf("embedded default policy (could not ask interlockd for its policy: %v)", err), nil
	}
	p, err := policy.Load(ctx, policy.Source{Name: pt.Policy, Text: []byte(pt.Text)}, policy.Options{})
	if err != nil {
		return nil, "", err
	}
	return p, "policy of the running interlockd: " + pt.Policy, nil
}

func flags(st *sqlclass.Statement) []string {
	var f []string
	for _, x := range []struct {
		on   bool
		name string
	}{{st.Destructive, "destructive"}, {st.Lock, "lock"}, {st.Unknowable, "unknowable"}, {st.Multi, "multi"}} {
		if x.on {
			f = append(f, x.name)
		}
	}
	return f
}

func printExplanation(w io.Writer, ex *explanation) {
	fmt.Fprintf(w, "policy:    %s\n", ex.Policy)
	if ex.Identity != "" {
		fmt.Fprintf(w, "identity:  %s\n", ex.Identity)
	} else {
		fmt.Fprintf(w, "identities matched: %s\n", orNone(ex.Identities))
	}
	if ex.Target != "" {
		fmt.Fprintf(w, "target:    %s\n", ex.Target)
	}
	if ex.ParseError != "" {
		fmt.Fprintf(w, "parse:     %s\n", ex.ParseError)
	}
	for i, s := range ex.Statements {
		fmt.Fprintf(w, "statement %d: %s %s", i+1, s.Class, s.Command)
		if len(s.Flags) > 0 {
			fmt.Fprintf(w, " [%s]", strings.Join(s.Flags, ", "))
		}
		fmt.Fprintln(w)
		if len(s.Tables) > 0 {
			fmt.Fprintf(w, "    tables:    %s\n", strings.Join(s.Tables, ", "))
		}
		if len(s.Functions) > 0 {
			fmt.Fprintf(w, "    functions: %s\n", strings.Join(s.Functions, ", "))
		}
		for _, r := range s.Reasons {
			fmt.Fprintf(w, "    because:   %s\n", r)
		}
		fmt.Fprintf(w, "    decided:   %s by %s\n", s.Action, s.Rule)
	}
	if ex.Mode == policy.Audit.String() {
		fmt.Fprintf(w, "decision:  %s by rule %s (audit mode: the agent is not blocked)\n", ex.Verdict, ex.Rule)
	} else {
		fmt.Fprintf(w, "decision:  %s by rule %s\n", ex.Action, ex.Rule)
	}
	if ex.Message != "" {
		fmt.Fprintf(w, "message:   %s\n", ex.Message)
	}
	if ex.Mask != "" {
		fmt.Fprintf(w, "mask:      %s\n", ex.Mask)
	}
	if a := ex.Approval; a != nil {
		fmt.Fprintf(w, "approval:  %d of %s within %s (a timeout denies)\n", a.Quorum, strings.Join(a.Reviewers, ", "), a.Timeout)
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "(none)"
	}
	return strings.Join(s, ", ")
}
