package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/decoders/http"
	"github.com/interlock-dev/interlock/policy"
	"github.com/interlock-dev/interlock/policy/sqlclass"
)

func newPolicyCmd(a *cli) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "policy",
		Short: "Check, test and explain policies; reload the daemon's",
		Long: `A policy names identities, targets and rules; every request gets the action of
the first rule that matches (allow, deny, mask or approve), else it is denied.
check, test, explain, default and replay work on files, with no daemon;
reload makes the running interlockd load its policy file again.`,
	})
	cmd.AddCommand(newPolicyCheckCmd(a), newPolicyTestCmd(a), newPolicyExplainCmd(a), newPolicyDefaultCmd(a),
		newPolicyReloadCmd(a), newPolicyReplayCmd(a))
	return cmd
}

func newPolicyCheckCmd(a *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE...",
		Short: "Validate policy files",
		Long: `check loads each policy file as interlockd would and reports every problem as
FILE:LINE:COL: what is wrong (with a suggestion for a misspelt name), and
warnings such as a host name that does not resolve. It fails when a file has
errors.`,
		Example: `  interlock policy check /etc/interlock/policy.yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(policyCheck(args, a.stdout, a.stderr))
		},
	}
}

func newPolicyTestCmd(a *cli) *cobra.Command {
	var verbose, asJSON bool
	cmd := &cobra.Command{
		Use:   "test [-v] FILE...",
		Short: "Run the test cases policy files ship with",
		Long: `test decides every test case a policy ships with (tests: inside the file, or
FILE_test.yaml beside it) and compares the decision with what the case
expects. It prints the failures (every case with -v) and a summary per file,
and fails when a case fails.`,
		Example: `  interlock policy test policy.yaml
  interlock policy test -v policy.yaml
  interlock policy test --json policy.yaml | jq '.[] | select(.pass | not)'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(policyTest(args, verbose, asJSON, a.stdout, a.stderr))
		},
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print passing tests too")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print every test's result as JSON")
	return cmd
}

func newPolicyExplainCmd(a *cli) *cobra.Command {
	var o explainOptions
	cmd := &cobra.Command{
		Use:   "explain (--identity NAME | --tag TAG [--uid N] [--exe PATH]) [--target NAME] (--sql TEXT | --http 'METHOD PATH|URL' | --redis CMD | --ssh CMD)",
		Short: "Show how one request is classified and decided, and by which rule",
		Long: `explain decides one request the way interlockd would and shows the work: the
identities a caller matches, each SQL statement's class, tables, functions
and flags, the rule that decided each, and the decision with its mode,
message, mask or approval.

Without --policy it decides with the running interlockd's policy, else with
the embedded default, and says which.`,
		Example: `  interlock policy explain --identity ci-bot --target orders --sql 'DELETE FROM orders'
  interlock policy explain --policy policy.yaml --tag ci --uid 1000 --exe /usr/bin/psql --sql 'SELECT 1'
  interlock policy explain --identity ci-bot --http 'GET /v1/orders' --json
  interlock policy explain --identity ci-bot --http 'GET https://api.example.com/repos/acme/web'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(policyExplain(cmd.Context(), a.client(), o, args, a.stdout, a.stderr))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.file, "policy", "", "policy file (default: the running interlockd's policy, else the embedded default)")
	f.StringVar(&o.identity, "identity", "", "identity name the caller has")
	f.StringVar(&o.tag, "tag", "", "cgroup tag of the caller (instead of --identity)")
	f.UintVar(&o.uid, "uid", 0, "caller's uid (with --tag)")
	f.StringVar(&o.exe, "exe", "", "caller's executable path (with --tag)")
	f.StringVar(&o.target, "target", "", "target name")
	f.StringVar(&o.sql, "sql", "", "SQL text of the request")
	f.StringVar(&o.http, "http", "", "HTTP request as 'METHOD PATH' or 'METHOD URL' (the URL's host chooses the target)")
	f.StringVar(&o.redis, "redis", "", "Redis command name")
	f.StringVar(&o.ssh, "ssh", "", "SSH command line")
	f.BoolVar(&o.json, "json", false, "print JSON")
	return cmd
}

func newPolicyDefaultCmd(a *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "default",
		Short: "Print the embedded default policy",
		Long: `default prints the policy interlockd enforces when its configuration names
none: a starting point to copy and edit.`,
		Example: `  interlock policy default > /etc/interlock/policy.yaml`,
		Args:    usage(cobra.NoArgs),
		RunE: func(*cobra.Command, []string) error {
			_, err := a.stdout.Write(policy.DefaultSource())
			return err
		},
	}
}

func newPolicyReloadCmd(a *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Make interlockd load its policy file again",
		Long: `reload makes the running interlockd read, check and compile its policy file and
swap it in; open sessions are decided by the new policy from their next
request. A policy that does not load is refused, and the one in force stays.`,
		Example: `  interlock policy check policy.yaml && interlock policy reload`,
		Args:    usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out map[string]string
			if err := a.client().Call(cmd.Context(), "/v1/policy/reload", struct{}{}, &out); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "policy reloaded from %s\n", out["policy"])
			return nil
		},
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

// testedCase is one test case's result as `policy test --json` prints it.
type testedCase struct {
	File       string `json:"file"`
	Test       string `json:"test"`
	Position   string `json:"position"`
	Pass       bool   `json:"pass"`
	Action     string `json:"action"`
	Rule       string `json:"rule"`
	WantAction string `json:"want_action"`
	WantRule   string `json:"want_rule,omitempty"`
}

func policyTest(files []string, verbose, asJSON bool, stdout, stderr io.Writer) int {
	if len(files) == 0 {
		fmt.Fprint(stderr, "usage: interlock policy test [-v] FILE...\n")
		return 2
	}
	code := 0
	cases := []testedCase{}
	for _, f := range files {
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
			}
			if asJSON {
				cases = append(cases, testedCase{File: f, Test: r.Test.Name, Position: r.Test.Pos.String(), Pass: r.Pass,
					Action: r.Got.Action.String(), Rule: r.Got.Rule, WantAction: r.Test.WantAction.String(), WantRule: r.Test.WantRule})
			} else if !r.Pass || verbose {
				fmt.Fprintln(stdout, r)
			}
		}
		if asJSON {
			if failed > 0 {
				code = 1
			}
			continue
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
	if asJSON {
		if err := printJSON(stdout, cases); err != nil {
			fmt.Fprintf(stderr, "interlock policy test: %v\n", err)
			return 1
		}
	}
	return code
}

// explanation is the JSON form of `policy explain --json`.
type explanation struct {
	Policy     string   `json:"policy"`
	Identity   string   `json:"identity,omitempty"`
	Identities []string `json:"matched_identities,omitempty"`
	Target     string   `json:"target,omitempty"`
	// NoTarget says why an --http URL chose no target.
	NoTarget   string          `json:"no_target,omitempty"`
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

// explainOptions are policy explain's flags.
type explainOptions struct {
	file, identity, tag, exe, target, sql, http, redis, ssh string
	uid                                                     uint
	json                                                    bool
}

func policyExplain(ctx context.Context, c *control.Client, o explainOptions, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 || (o.identity == "") == (o.tag == "") {
		fmt.Fprint(stderr, "interlock policy explain: give exactly one of --identity or --tag\n")
		return 2
	}
	var p *policy.Policy
	var name string
	if o.file == "" {
		var err error
		if p, name, err = daemonPolicy(ctx, c); err != nil {
			printLoadError(stderr, err)
			return 1
		}
	} else {
		var err error
		if p, err = policy.Load(ctx, policy.Source{Path: o.file}, policy.Options{}); err != nil {
			printLoadError(stderr, err)
			return 1
		}
		name = o.file
	}
	t := &policy.Test{Identity: o.identity, Target: o.target, SQL: o.sql, Redis: o.redis, SSH: o.ssh}
	if o.identity != "" && p.Identity(o.identity) == nil {
		fmt.Fprintf(stderr, "interlock policy explain: %s has no identity %q\n", name, o.identity)
		return 1
	}
	if o.tag != "" {
		t.Subject = &policy.Subject{Tag: o.tag, UID: uint32(o.uid), Exe: o.exe}
	}
	if o.target != "" && p.Target(o.target) == nil {
		fmt.Fprintf(stderr, "interlock policy explain: %s has no target %q\n", name, o.target)
		return 1
	}
	var noTarget string
	if o.http != "" {
		tag := o.tag
		if o.identity != "" {
			tag = p.Identity(o.identity).Tag
		}
		var err error
		if noTarget, err = explainHTTP(p, t, tag, o.http); err != nil {
			fmt.Fprintf(stderr, "interlock policy explain: --http: %v\n", err)
			return 2
		}
	}
	d, q := p.Explain(t)
	mode := p.ExplainMode(t)
	ex := explanation{Policy: name, Identity: o.identity, Target: t.Target, NoTarget: noTarget, Action: d.Action.String(), Rule: d.Rule,
		Mode: mode.String(), Verdict: mode.Describe(d.Action), Message: d.Message}
	if o.http != "" {
		path, _, _ := strings.Cut(t.HTTPPath, "?")
		if why := http.NonCanonical(path); why != "" {
			// interlockd answers it 400 before the policy, in any mode.
			ex.Action, ex.Rule, ex.Mode, ex.Verdict, ex.Message = policy.Deny.String(), refusedRule, policy.Enforce.String(), "refused (400)", why
		}
	}
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
	if o.json {
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

// explainHTTP fills t from --http: 'METHOD PATH', or 'METHOD URL', whose
// host and port choose the target (urlTarget) when --target does not name
// one, for a caller tagged tag. noTarget says so when they choose none.
//
// The path is decided as interlockd decides an agent's: decoded
// (http.DecidedTarget), so "/%61dmin/x" is explained as the "/admin/x" it
// is.
func explainHTTP(p *policy.Policy, t *policy.Test, tag, req string) (noTarget string, err error) {
	m, rest, _ := strings.Cut(strings.TrimSpace(req), " ")
	rest = strings.TrimSpace(rest)
	t.HTTPMethod = strings.ToUpper(m)
	if strings.HasPrefix(rest, "/") {
		u, err := url.ParseRequestURI(rest)
		if err != nil {
			return "", fmt.Errorf("%q is not a request path: %w", rest, err)
		}
		t.HTTPPath = http.DecidedTarget(u)
		return "", nil
	}
	u, err := url.Parse(rest)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q is neither a path nor an http(s) URL", rest)
	}
	port := uint16(443)
	if u.Scheme == "http" {
		port = 80
	}
	if ps := u.Port(); ps != "" {
		n, err := strconv.ParseUint(ps, 10, 16)
		if err != nil {
			return "", fmt.Errorf("port %q: %w", ps, err)
		}
		port = uint16(n)
	}
	if u.Path == "" {
		u.Path = "/" // as a client asks for https://host
	}
	t.HTTPHost, t.HTTPPath = u.Hostname(), http.DecidedTarget(u)
	if t.Target == "" {
		tg, why := urlTarget(p, tag, u.Scheme, u.Hostname(), port)
		if tg == nil {
			return why, nil
		}
		t.Target = tg.Name
	}
	return "", nil
}

// urlTarget is the target interlockd gives a request for host on port, as
// a connection's address and then the name the agent sends choose it
// (policy.ChoosesByName and ChosenByName). An IP address is a connection's
// address: the target that lists it, unless http targets chosen by name
// take the port, and then a plain request's Host (the address) names the
// target, while a TLS one, which sends no server name for an address,
// keeps the address's. A host name is the name the agent sends: the http
// target whose hosts match it. (The address it resolves to is not known
// here: a target that is not http and lists that address would take the
// connection first.)
func urlTarget(p *policy.Policy, tag, scheme, host string, port uint16) (*policy.Target, string) {
	a, err := netip.ParseAddr(host)
	if err != nil {
		if t := p.TargetForName(host, port); t != nil {
			return t, ""
		}
		return nil, fmt.Sprintf("no target's hosts match %s on port %d", host, port)
	}
	t := p.TargetFor(tag, a, port)
	if p.ChoosesByName(t, port) && scheme == "http" {
		if t = p.ChosenByName(t, host, port); t == nil {
			return nil, fmt.Sprintf("no http target has host %s on port %d", host, port)
		}
	}
	if t == nil {
		return nil, fmt.Sprintf("no target has the address %s on port %d", host, port)
	}
	return t, ""
}

// daemonPolicy is the policy explain decides with when none is named: the
// running interlockd's, else the embedded default. The name says which,
// and why when it is the default, so an answer never silently comes from a
// policy the daemon does not enforce.
func daemonPolicy(ctx context.Context, c *control.Client) (*policy.Policy, string, error) {
	var pt control.PolicyText
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
	switch {
	case ex.Target != "":
		fmt.Fprintf(w, "target:    %s\n", ex.Target)
	case ex.NoTarget != "":
		fmt.Fprintf(w, "target:    none (%s)\n", ex.NoTarget)
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
