package policy

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/interlock-dev/interlock/policy/mask"
	"github.com/interlock-dev/interlock/policy/sqlclass"
	"github.com/interlock-dev/interlock/policy/sshcmd"
)

// Policy is a compiled policy. It is immutable after load (target
// addresses aside, which ResolveTargets swaps atomically) and safe for
// concurrent use.
type Policy struct {
	name           string
	text           []byte
	sha256         string
	resolver       Resolver
	identities     []*Identity
	identityIndex  map[string]*Identity
	targets        []*Target
	targetIndex    map[string]*Target
	masks          map[string]*mask.Masker
	rules          []*rule
	tests          []*Test
	denyUnix       []string
	readOnlyFuncs  map[string]bool
	needsHash      bool
	needsContainer bool
	warnings       []string
	modes          modeTable
	// interceptHosts holds, per host pattern of an intercept entry, the
	// addresses relayed answers gave it (Learn).
	interceptHosts map[string]*learned
}

// rule is a compiled rule: every set is precomputed so matching is a few
// comparisons and no allocation.
type rule struct {
	name        string
	index       int
	pos         Pos
	identities  bitset
	anyIdentity bool
	targets     bitset
	anyTarget   bool
	protocols   []string
	kind        OpKind // meaningful unless any
	any         bool   // no operation matcher: matches every operation
	sql         *sqlMatch
	http        *httpMatch
	patterns    []string // Redis commands
	ssh         *sshMatch
	decision    Decision
}

type sshMatch struct {
	exec                []sshcmd.Pattern
	shell               bool
	sftpRead, sftpWrite []pathGlob
	gitFetch, gitPush   []string
}

func (m *sshMatch) matches(op *Operation) bool {
	switch op.SSH {
	case "shell":
		return m.shell
	case SFTPRead, SFTPWrite, SFTPStat, GitFetch, GitPush:
		return m.matchesPath(op)
	case "exec":
		for _, p := range m.exec {
			if p.Match(op.Args) {
				return true
			}
		}
	}
	return false
}

type sqlMatch struct {
	classes                              uint16 // bit per sqlclass.Class; 0 = any
	commands                             []string
	tables, onlyTables, functions        []namePattern
	hasOnly                              bool
	destructive, lock, unknowable, multi int8 // 0 any, 1 must, -1 must not
}

// Name returns the file name the policy was loaded from (DefaultName for
// the embedded default).
func (p *Policy) Name() string { return p.name }

// Text returns the policy text that was compiled (without a sibling test
// file's), for `interlock policy explain` to decide with exactly what the
// daemon decides with. The caller must not modify it.
func (p *Policy) Text() []byte { return p.text }

// SHA256 returns the hex SHA-256 of Text: which policy was in force, for
// the audit trail.
func (p *Policy) SHA256() string { return p.sha256 }

// Warnings lists problems that do not stop the policy from loading: a
// target host name that did not resolve at load (see Load).
func (p *Policy) Warnings() []string { return p.warnings }

// NeedsExeHash reports whether some identity selects on exe_sha256, so the
// daemon must hash executables at accept (and only then).
func (p *Policy) NeedsExeHash() bool { return p.needsHash }

// NeedsContainer reports whether some identity selects on its container,
// so the daemon must ask the container runtime at accept (and only then).
func (p *Policy) NeedsContainer() bool { return p.needsContainer }

// Identity returns the identity named name, or nil.
func (p *Policy) Identity(name string) *Identity { return p.identityIndex[name] }

// Target returns the target named name, or nil.
func (p *Policy) Target(name string) *Target { return p.targetIndex[name] }

// RuleCount returns how many rules the policy has.
func (p *Policy) RuleCount() int { return len(p.rules) }

// Targets returns every target in file order.
func (p *Policy) Targets() []*Target { return p.targets }

// KnowsTag reports whether an identity of the policy could match a caller
// tagged tag: one that selects on that tag, or on no tag at all. The
// callers of a tag none could match are an unknown identity, denied
// everything no rule for every identity allows.
func (p *Policy) KnowsTag(tag string) bool {
	for _, id := range p.identities {
		if id.Tag == "" || id.Tag == tag {
			return true
		}
	}
	return false
}

// SelectsOnProcess reports whether an identity a caller tagged tag could
// match selects on what only the caller's process tells (its unit, its
// executable's path or hash, its container): a caller whose process is
// gone cannot be placed by them.
func (p *Policy) SelectsOnProcess(tag string) bool {
	for _, id := range p.identities {
		if (id.Tag == "" || id.Tag == tag) &&
			(len(id.Units)+len(id.Exes)+len(id.ExeSHA256) > 0 || id.Container != nil) {
			return true
		}
	}
	return false
}

// Identities appends to dst the names of the identities s matches, in file
// order.
func (p *Policy) Identities(dst []string, s *Subject) []string {
	for _, id := range p.identities {
		if id.matches(s) {
			dst = append(dst, id.Name)
		}
	}
	return dst
}

func (p *Policy) identitySet(s *Subject) bitset {
	var b bitset
	if s == nil {
		return b
	}
	for _, id := range p.identities {
		if id.matches(s) {
			b.set(id.index)
		}
	}
	return b
}

// TargetFor returns the target that the original destination a:port of a
// connection of the identity tagged tag belongs to (first in file order),
// or nil when it is not a known target. An address counts as a target's
// host name's when it is literal, resolved by interlockd, or given to
// this identity by a DNS answer (Learn): an answer to another identity
// does not make it one.
func (p *Policy) TargetFor(tag string, a netip.Addr, port uint16) *Target {
	a = a.Unmap()
	for _, t := range p.targets {
		if (t.Port == 0 || t.Port == port) && t.contains(tag, a) {
			return t
		}
	}
	return nil
}

// ResolveTargets resolves every target host name with the Resolver the
// policy was loaded with, within ResolveTimeout, and swaps in the new
// addresses atomically, target by target. A target whose host names all
// fail keeps its previous addresses (none, right after Load); the errors
// name the target and the host. Load calls it once; interlockd calls it
// every minute, so a database that moves keeps being recognised and a name
// that did not resolve at load is picked up once it does.
func (p *Policy) ResolveTargets(ctx context.Context) []error {
	ctx, cancel := context.WithTimeout(ctx, ResolveTimeout)
	defer cancel()
	r := p.resolver
	var errs []error
	for _, t := range p.targets {
		if len(t.Hosts) == 0 {
			continue
		}
		var out []netip.Prefix
		failed := false
		for _, h := range t.Hosts {
			addrs, err := r.LookupNetIP(ctx, "ip", h)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: target %q: resolve %s: %w", t.pos, t.Name, h, err))
				failed = true
				continue
			}
			for _, a := range addrs {
				a = a.Unmap()
				out = append(out, netip.PrefixFrom(a, a.BitLen()))
			}
		}
		if failed && len(out) == 0 {
			continue
		}
		t.resolved.Store(&out)
	}
	return errs
}

// Intercept returns the kernel's TCP rules for cgroups tagged tag, at most
// max of them (the room the caller's own rules leave); first match wins:
//
//  1. the intercept entries of every identity with that tag, in file order;
//  2. a redirect for every destination some request of the tag could be
//     allowed to reach (see reachable), then deny for every other IPv4 and
//     IPv6 destination, with Reason saying why: the agent gets EPERM at
//     connect() instead of a connection interlockd could only reset;
//  3. or, when the kernel cannot decide for the tag (an identity that may
//     be audited, a rule that allows destinations that are no target) or
//     the redirects of 2 do not fit in max, redirect everything.
//
// What Intercept derives only ever redirects or denies: only an entry an
// identity's intercept list writes can let a connection bypass interlockd.
func (p *Policy) Intercept(tag string, max int) []InterceptRule {
	var written []InterceptRule
	for _, id := range p.identities {
		if id.Tag == tag {
			written = append(written, id.intercept...)
		}
	}
	out := p.expandHosts(tag, written, max-2)
	reach, bounded, known := p.reachable(tag)
	if bounded && len(out)+len(reach)+2 <= max {
		why := RefuseNoRule
		if !known {
			why = RefuseUnknownIdentity
		}
		out = append(out, reach...)
		return append(out,
			InterceptRule{Prefix: netip.MustParsePrefix("0.0.0.0/0"), PortMin: 1, PortMax: 65535, Action: "deny", Reason: why},
			InterceptRule{Prefix: netip.MustParsePrefix("::/0"), PortMin: 1, PortMax: 65535, Action: "deny", Reason: why})
	}
	return append(out,
		InterceptRule{Prefix: netip.MustParsePrefix("0.0.0.0/0"), PortMin: 1, PortMax: 65535, Action: "redirect"},
		InterceptRule{Prefix: netip.MustParsePrefix("::/0"), PortMin: 1, PortMax: 65535, Action: "redirect"})
}

// UDPAllow returns the UDP destinations cgroups tagged tag may send to
// besides DNS to the host's resolvers (which the daemon adds itself);
// everything else is denied.
func (p *Policy) UDPAllow(tag string) []InterceptRule {
	var out []InterceptRule
	for _, id := range p.identities {
		if id.Tag == tag {
			out = append(out, id.udpAllow...)
		}
	}
	return out
}

// Listen returns where cgroups tagged tag may bind besides loopback (every
// rule's Action is "pass"); empty, they may listen on loopback only.
func (p *Policy) Listen(tag string) []InterceptRule {
	var out []InterceptRule
	for _, id := range p.identities {
		if id.Tag == tag {
			out = append(out, id.listen...)
		}
	}
	return out
}

// AllowUnixPaths returns the unix socket paths and @abstract names cgroups
// tagged tag may reach, and whether any identity with that tag set
// allow_unix_paths: when on, every other unix socket is refused.
func (p *Policy) AllowUnixPaths(tag string) (paths []string, on bool) {
	for _, id := range p.identities {
		if id.Tag == tag && id.allowUnix != nil {
			paths = append(paths, id.allowUnix...)
			on = true
		}
	}
	if on && paths == nil {
		paths = []string{}
	}
	return paths, on
}

// DenyUnixPaths lists unix socket paths tagged processes may not connect to.
func (p *Policy) DenyUnixPaths() []string { return p.denyUnix }

// UnixReachable reports whether cgroups tagged tag may reach the unix
// socket at path (in the clean form the policy's paths are in) where the
// kernel enforces unix paths: neither denied to every tagged task nor left
// out of the tag's allow-list.
func (p *Policy) UnixReachable(tag, path string) bool {
	if slices.Contains(p.denyUnix, path) {
		return false
	}
	paths, on := p.AllowUnixPaths(tag)
	return !on || slices.Contains(paths, path)
}

// Decide returns the decision for one request: the first rule in file
// order that matches wins; none matching is "default-deny". It does not
// allocate.
//
// For OpConnect (a connection before any request, or a target without a
// decoder) a rule without an operation matcher decides as written; a rule
// with one (sql:, http: ...) that is not a deny allows the connection under
// its name, because some requests on it may be allowed and each is decided
// when it comes. Deny rules with operation matchers are passed over.
func (p *Policy) Decide(in *Input) Decision {
	ids := p.identitySet(in.Subject)
	return p.decide(&ids, in)
}

var defaultDeny = Decision{Action: Deny, Rule: "default-deny", Message: "no policy rule allows this"}

func (p *Policy) decide(ids *bitset, in *Input) Decision {
	proto := in.Protocol
	if proto == "" && in.Target != nil {
		proto = in.Target.Protocol
	}
	for _, r := range p.rules {
		if !r.matchesCaller(ids, in, proto) {
			continue
		}
		if r.any {
			return r.decision
		}
		if in.Op.Kind == OpConnect {
			// A connection is let in when the first rule that could
			// apply to its requests does not simply deny them; each
			// request is then decided on its own.
			if r.decision.Action != Deny {
				return Decision{Action: Allow, Rule: r.name}
			}
			continue
		}
		if r.matchesOp(p, in) {
			return r.decision
		}
	}
	return defaultDeny
}

// matchesCaller checks identity, target and protocol.
func (r *rule) matchesCaller(ids *bitset, in *Input, proto string) bool {
	if !r.anyIdentity && !r.identities.intersects(ids) {
		return false
	}
	if !r.anyTarget && (in.Target == nil || !r.targets.has(in.Target.index)) {
		return false
	}
	return len(r.protocols) == 0 || containsString(r.protocols, proto)
}

// matchesOp checks the operation matcher of a rule that has one.
func (r *rule) matchesOp(p *Policy, in *Input) bool {
	if r.kind != in.Op.Kind {
		return false
	}
	switch r.kind {
	case OpSQL:
		return in.Op.SQL != nil && r.sql.matches(p, in.Op.SQL)
	case OpHTTP:
		return in.Op.HTTP != nil && r.http.matches(in.Op.HTTP)
	case OpRedis:
		return matchAnyFold(r.patterns, in.Op.Command)
	case OpSSH:
		return r.ssh.matches(&in.Op)
	}
	return false
}

func matchAnyFold(upperPatterns []string, s string) bool {
	if len(upperPatterns) == 0 {
		return true
	}
	for _, p := range upperPatterns {
		if strings.EqualFold(p, s) || (strings.ContainsAny(p, "*?") && globMatch(p, strings.ToUpper(s))) {
			return true
		}
	}
	return false
}

// EffectiveClass is the class rules see for st: its Class, or its
// BaseClass when every function the classifier did not know is declared
// read-only by the policy (sql.readonly_functions).
func (p *Policy) EffectiveClass(st *sqlclass.Statement) sqlclass.Class {
	if len(st.UnknownFunctions) == 0 || len(p.readOnlyFuncs) == 0 {
		return st.Class
	}
	for _, f := range st.UnknownFunctions {
		if !p.readOnlyFuncs[f] {
			return st.Class
		}
	}
	return st.BaseClass
}

func (m *sqlMatch) matches(p *Policy, st *sqlclass.Statement) bool {
	if m.classes != 0 && m.classes&(1<<p.EffectiveClass(st)) == 0 {
		return false
	}
	if len(m.commands) > 0 && !containsString(m.commands, st.Command) {
		return false
	}
	if !triMatch(m.destructive, st.Destructive) || !triMatch(m.lock, st.Lock) ||
		!triMatch(m.unknowable, st.Unknowable) || !triMatch(m.multi, st.Multi) {
		return false
	}
	if len(m.tables) > 0 && !anyName(m.tables, st.Tables) {
		return false
	}
	if m.hasOnly {
		for _, t := range st.Tables {
			if !nameMatches(m.onlyTables, t) {
				return false
			}
		}
	}
	if len(m.functions) > 0 && !anyName(m.functions, st.Functions) {
		return false
	}
	return true
}

func triMatch(want int8, got bool) bool {
	return want == 0 || (want == 1) == got
}

// anyName reports whether some name matches some pattern.
func anyName(patterns []namePattern, names []string) bool {
	for _, n := range names {
		if nameMatches(patterns, n) {
			return true
		}
	}
	return false
}

// namePattern is a compiled table or function pattern. A pattern with no
// '.' is matched against the part after the last '.' of a name (the bare
// table or function name), so "users" matches "public.users".
type namePattern struct {
	pat       string
	literal   bool // no wildcard: compare, do not glob
	qualified bool // contains '.': match the whole name
}

func compileNamePatterns(pats []string) []namePattern {
	out := make([]namePattern, 0, len(pats))
	for _, p := range pats {
		p = strings.ToLower(p)
		out = append(out, namePattern{pat: p, literal: !strings.ContainsAny(p, "*?"), qualified: strings.Contains(p, ".")})
	}
	return out
}

func nameMatches(patterns []namePattern, name string) bool {
	bare := name
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		bare = name[i+1:]
	}
	for i := range patterns {
		p := &patterns[i]
		subject := bare
		if p.qualified {
			subject = name
		}
		if p.literal {
			if p.pat == subject {
				return true
			}
		} else if globMatch(p.pat, subject) {
			return true
		}
	}
	return false
}

// sqlClassifiers holds one cached classifier per SQL dialect. Parsing does
// not depend on the policy, so the cache survives policy reloads.
var sqlClassifiers = map[string]*sqlclass.Classifier{
	"postgres": sqlclass.NewClassifier(sqlclass.Postgres{}, 16384),
}

// Classifier returns the shared cached classifier for a protocol ("postgres"),
// or nil when the protocol has no SQL dialect yet.
func Classifier(protocol string) *sqlclass.Classifier { return sqlClassifiers[protocol] }

// DecideSQL classifies query (through the shared parse cache) and decides
// each statement, combining them with the precedence deny > approve > mask
// > allow: one denied statement denies the whole message, and the decision
// names the rule of the statement that decided. Text that does not parse is
// denied by the rule "unparseable"; an empty query is allowed as
// "empty-query". The Query is shared through the cache: do not modify it.
func (p *Policy) DecideSQL(s *Subject, t *Target, query string) (Decision, *sqlclass.Query) {
	ids := p.identitySet(s)
	return p.decideSQL(&ids, s, t, query)
}

var unparseable = Decision{Action: Deny, Rule: "unparseable", Message: "statement could not be parsed; denied"}

func (p *Policy) decideSQL(ids *bitset, s *Subject, t *Target, query string) (Decision, *sqlclass.Query) {
	proto := "postgres"
	if t != nil && t.Protocol != "" && t.Protocol != "tcp" {
		proto = t.Protocol
	}
	c := sqlClassifiers[proto]
	if c == nil {
		return Decision{Action: Deny, Rule: "unsupported-sql", Message: "no SQL parser for protocol " + proto}, nil
	}
	q := c.Classify(query)
	if q.Err != nil {
		return unparseable, q
	}
	if len(q.Statements) == 0 {
		return Decision{Action: Allow, Rule: "empty-query"}, q
	}
	in := Input{Subject: s, Target: t, Protocol: proto, Op: Operation{Kind: OpSQL}}
	var best Decision
	for i := range q.Statements {
		in.Op.SQL = &q.Statements[i]
		d := p.decide(ids, &in)
		if i == 0 || precedence(d.Action) > precedence(best.Action) {
			best = d
		}
		if d.Action == Deny {
			break
		}
	}
	return best, q
}

func precedence(a Action) int {
	switch a {
	case Deny:
		return 3
	case Approve:
		return 2
	case Mask:
		return 1
	}
	return 0
}

// DecideSSH decides an SSH request: "shell" as a whole; "exec" per simple
// command of its line (sshcmd.Split), combined as DecideSQL combines
// statements, so a line is as allowed as the least allowed command it
// runs. A line that cannot be split is denied by "unparseable", a command
// whose words are not what it would run (an expansion, a redirection) by
// "shell-syntax", an empty line by "empty-command". Any other request is
// denied by "unsupported-operation".
func (p *Policy) DecideSSH(s *Subject, t *Target, request, line string) Decision {
	ids := p.identitySet(s)
	return p.decideSSH(&ids, s, t, request, line)
}

func (p *Policy) decideSSH(ids *bitset, s *Subject, t *Target, request, line string) Decision {
	in := Input{Subject: s, Target: t, Protocol: "ssh", Op: Operation{Kind: OpSSH, SSH: request}}
	switch request {
	case "shell":
		return p.decide(ids, &in)
	case SFTPRead, SFTPWrite, SFTPStat:
		return p.decideSFTP(ids, &in, line)
	case "exec":
	default:
		return Decision{Action: Deny, Rule: "unsupported-operation", Message: "interlock cannot decide ssh " + request + " requests"}
	}
	cmds, err := sshcmd.Split(line)
	if err != nil {
		return Decision{Action: Deny, Rule: "unparseable", Message: err.Error()}
	}
	if len(cmds) == 0 {
		return Decision{Action: Deny, Rule: "empty-command", Message: "the command line runs no command"}
	}
	if d, ok := p.decideFileCommand(ids, &in, cmds); ok {
		return d
	}
	var best Decision
	for i, c := range cmds {
		if c.Undecidable != "" {
			return Decision{Action: Deny, Rule: "shell-syntax", Message: fmt.Sprintf(
				"command %d (%s) has a %s; rules decide literal words only", i+1, commandName(c), c.Undecidable)}
		}
		in.Op.Args = c.Args
		d := p.decide(ids, &in)
		if i == 0 || precedence(d.Action) > precedence(best.Action) {
			best = d
		}
		if d.Action == Deny {
			break
		}
	}
	return best
}

// commandName names a command in a message: its first word, which the
// line's author wrote and a denial may repeat.
func commandName(c sshcmd.Command) string {
	if len(c.Args) == 0 {
		return "no literal name"
	}
	return strconv.Quote(c.Args[0])
}
