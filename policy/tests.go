package policy

import (
	"fmt"

	"github.com/interlock-dev/interlock/policy/sqlclass"
)

// Test is one test case shipped with a policy (under tests: in the file, or
// in a sibling file ci_test.yaml for ci.yaml): a request and the decision
// expected for it.
type Test struct {
	Name string
	Pos  Pos
	// Identity names the identity the caller has; Subject, when given
	// instead, is matched against the identities as the kernel's would be.
	Identity string
	Subject  *Subject
	Target   string
	// One of SQL, HTTPMethod/HTTPPath (a path with its query, and the Host
	// and headers the request carries), Redis, SSH (an exec command line);
	// none is a connection.
	SQL                            string
	HTTPMethod, HTTPHost, HTTPPath string
	HTTPHeader                     map[string][]string
	Redis, SSH                     string
	WantAction                     Action
	// WantRule, if set, must be the deciding rule's name.
	WantRule string
}

// TestResult is the outcome of one Test.
type TestResult struct {
	Test *Test
	Got  Decision
	// Query is the SQL classification, for SQL tests.
	Query *sqlclass.Query
	Pass  bool
}

// String renders the result as "PASS name" or "FAIL file:line: name: got
// ..., want ...".
func (r TestResult) String() string {
	if r.Pass {
		return "PASS " + r.Test.Name
	}
	return fmt.Sprintf("FAIL %s: %s: %s", r.Test.Pos, r.Test.Name, r.mismatch())
}

// mismatch says how a failed result differs from the expectation: "got
// deny by r, want allow".
func (r TestResult) mismatch() string {
	want := r.Test.WantAction.String()
	if r.Test.WantRule != "" {
		want += " by " + r.Test.WantRule
	}
	return fmt.Sprintf("got %s by %s, want %s", r.Got.Action, r.Got.Rule, want)
}

// Tests returns the policy's test cases in file order.
func (p *Policy) Tests() []*Test { return p.tests }

// RunTests decides every shipped test case and reports each result.
func (p *Policy) RunTests() []TestResult {
	out := make([]TestResult, 0, len(p.tests))
	for _, t := range p.tests {
		d, q := p.Explain(t)
		pass := d.Action == t.WantAction && (t.WantRule == "" || d.Rule == t.WantRule)
		out = append(out, TestResult{Test: t, Got: d, Query: q, Pass: pass})
	}
	return out
}

// Explain decides the request a Test describes, without checking the
// expectation: what `interlock policy explain` prints.
func (p *Policy) Explain(t *Test) (Decision, *sqlclass.Query) {
	ids, subject, target := p.caller(t)
	in := Input{Subject: subject, Target: target}
	switch {
	case t.SQL != "":
		return p.decideSQL(&ids, subject, target, t.SQL)
	case t.HTTPMethod != "" || t.HTTPPath != "":
		return p.decideHTTP(&ids, subject, target, HTTPRequest{Method: t.HTTPMethod, Host: t.HTTPHost, URI: t.HTTPPath, Header: t.HTTPHeader}), nil
	case t.Redis != "":
		in.Op = Operation{Kind: OpRedis, Command: t.Redis}
	case t.SSH != "":
		return p.decideSSH(&ids, subject, target, "exec", t.SSH), nil
	}
	return p.decide(&ids, &in), nil
}

// ExplainStatement decides one classified statement for the caller and
// target a Test names, so explain can show each statement's own rule.
func (p *Policy) ExplainStatement(t *Test, st *sqlclass.Statement) Decision {
	ids, subject, target := p.caller(t)
	return p.decide(&ids, &Input{Subject: subject, Target: target, Op: Operation{Kind: OpSQL, SQL: st}})
}

// caller resolves a Test's identity or subject and target.
func (p *Policy) caller(t *Test) (bitset, *Subject, *Target) {
	var ids bitset
	subject := t.Subject
	if t.Identity != "" {
		if id := p.identityIndex[t.Identity]; id != nil {
			ids.set(id.index)
		}
		subject = &Subject{Tag: t.Identity}
	} else if subject != nil {
		ids = p.identitySet(subject)
	}
	return ids, subject, p.targetIndex[t.Target]
}
