package policy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// mustParse compiles src at the language level: every protocol the
// language knows, so rules for protocols with no decoder yet can be tested;
// no shipped tests run and no names resolve. Tests of loading use load.
func mustParse(t testing.TB, src string) *Policy {
	t.Helper()
	p, err := compile("test.yaml", []byte(src), protocols)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

// load loads src as interlockd would, with r resolving host names.
func load(name, src string, r Resolver) (*Policy, error) {
	return Load(context.Background(), Source{Name: name, Text: []byte(src)}, Options{Resolver: r})
}

func runShipped(t *testing.T, p *Policy) {
	t.Helper()
	res := p.RunTests()
	if len(res) == 0 {
		t.Fatal("policy ships no tests")
	}
	for _, r := range res {
		if !r.Pass {
			t.Error(r)
		}
	}
}

func TestDefaultPolicy(t *testing.T) {
	p := Default()
	if len(p.Warnings()) > 0 {
		t.Errorf("warnings: %v", p.Warnings())
	}
	runShipped(t, p)
}

// TestDefaultPolicyMasksColumnsByName: the embedded default masks columns
// named like SSNs, e-mail addresses and cards whatever their values look
// like, and leaves other columns to the value detectors.
func TestDefaultPolicyMasksColumnsByName(t *testing.T) {
	p := Default()
	d, _ := p.DecideSQL(&Subject{Tag: "demo"}, p.Target("local-postgres"), "SELECT * FROM customers")
	if d.Action != Mask || d.Mask == nil {
		t.Fatalf("demo's read: %+v, want a mask decision", d)
	}
	plan := d.Mask.Plan([]string{"customer_ssn", "Contact_Email", "card_number", "name", "discard"})
	for i, want := range []bool{true, true, true, false, false} {
		if got := plan.Column(i) != 0; got != want {
			t.Errorf("column %d masked by name: %v, want %v", i, got, want)
		}
	}
}

func TestExamplePolicies(t *testing.T) {
	files, _ := filepath.Glob("examples/*.yaml")
	if len(files) == 0 {
		t.Fatal("no example policies")
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.yaml") {
			continue
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			p, err := Load(context.Background(), Source{Path: f}, Options{Resolver: fakeResolver{}})
			if err != nil {
				t.Fatal(err)
			}
			runShipped(t, p)
		})
	}
}

// TestLoadErrors checks that each mistake is reported at its position with
// a message that says what is wrong.
func TestLoadErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{"rules: [", "test.yaml:1:1: invalid YAML"},
		{"identities:\n  - name: a\n    tga: x\n", `test.yaml:3:5: unknown key "tga"; did you mean "tag"?`},
		{"identities:\n  - name: a\n    uid: -1\n", `test.yaml:3:10: expected a whole number from 0 to 4294967295, got "-1"`},
		{"identities:\n  - name: a\n  - name: a\n", `test.yaml:3:5: identity "a" defined twice`},
		{"targets:\n  - name: db\n    protocol: oracle\n    addresses: [10.0.0.1]\n", `test.yaml:3:15: target "db": protocol "oracle": use one of postgres`},
		{"targets:\n  - name: db\n    protocol: postgres\n    addresses: [10.0.0.1/99]\n", `test.yaml:4:16: target "db": address "10.0.0.1/99" is not an IP, a CIDR or a host name`},
		{"targets:\n  - name: db\n    protocol: postgres\n    addresses: [10.0.0.1]\n    port: 70000\n", `test.yaml:5:11: expected a whole number from 0 to 65535, got "70000"`},
		{"rules:\n  - name: r\n    action: allow\n    identity: ghost\n", `test.yaml:4:15: rule "r": unknown identity "ghost" (none defined)`},
		{"rules:\n  - name: r\n    action: permit\n", `test.yaml:3:13: rule "r": action "permit": use allow, deny, mask or approve`},
		{"rules:\n  - name: r\n    action: allow\n    sql: {class: [reads]}\n", `test.yaml:4:18: rule "r": sql class "reads": use read, session`},
		{"rules:\n  - name: r\n    action: mask\n", `test.yaml:3:13: rule "r": action mask needs mask:`},
		{"rules:\n  - name: r\n    action: approve\n    approve: {reviewers: [a], quorum: 2}\n", `test.yaml:4:39: rule "r": quorum 2: must be between 1 and the 1 reviewers`},
		{"rules:\n  - name: r\n    action: approve\n    approve: {reviewers: [a], timeout: soon}\n", `test.yaml:4:40: "soon" is not a duration`},
		{"rules:\n  - name: r\n    action: allow\n  - name: r\n    action: deny\n", `test.yaml:4:5: rule name "r" already used at test.yaml:2:5`},
		{"masks:\n  - name: m\n    detectors: {passport: redact}\n", `test.yaml:3:17: mask "m": unknown detector "passport"`},
		{"masks:\n  - name: m\n    columns: {email: blur}\n", `test.yaml:3:15: mask "m": column "email": method "blur": use redact, partial or hash`},
		{"identities:\n  - name: a\n    intercept: [{to: 10.0.0.0/8, ports: 9-1}]\n", `test.yaml:3:41: identity "a": ports "9-1": not a port range`},
		{"identities:\n  - name: a\n    exe_sha256: abc\n", `test.yaml:3:17: identity "a": exe_sha256 "abc" is not 64 hex digits`},
		{"identities:\n  - name: a\n    container: {runtime: lxc}\n", `test.yaml:3:26: identity "a": container runtime "lxc": this build asks docker only`},
		{"identities:\n  - name: a\n    container: {}\n", `identity "a": container selects nothing`},
		{"tests:\n  - name: t\n    identity: nobody\n    expect: {action: allow}\n", `test.yaml:3:15: test "t": unknown identity "nobody"`},
		{"rules: {}\n", "test.yaml:1:8: expected a list, got a mapping"},
		{"version: 2\n", "test.yaml:1:10: version 2 is not supported"},
	}
	for _, c := range cases {
		_, err := load("test.yaml", c.src, fakeResolver{})
		if err == nil {
			t.Errorf("%q: accepted, want error %q", c.src, c.want)
			continue
		}
		var list ErrorList
		if !errors.As(err, &list) {
			t.Errorf("%q: error %v is not an ErrorList", c.src, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q:\n got: %v\nwant: %s", c.src, err, c.want)
		}
	}
}

const selectorPolicy = `
identities:
  - name: by-tag
    tag: agents
  - name: by-uid
    uid: [1001, 1002]
  - name: by-exe
    exe: /usr/bin/ps*
  - name: by-unit-and-tag
    tag: agents
    unit: runner.service
  - name: by-hash
    exe_sha256: 9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08
`

func TestIdentities(t *testing.T) {
	p := mustParse(t, selectorPolicy)
	if !p.NeedsExeHash() {
		t.Error("NeedsExeHash false with an exe_sha256 selector")
	}
	cases := []struct {
		s    Subject
		want string
	}{
		{Subject{Tag: "agents"}, "by-tag"},
		{Subject{Tag: "agents", Unit: "runner.service"}, "by-tag,by-unit-and-tag"},
		{Subject{Tag: "x", UID: 1002, Exe: "/usr/bin/psql"}, "by-uid,by-exe"},
		{Subject{Tag: "x", Exe: "/usr/local/bin/psql"}, ""},
		{Subject{Tag: "x", ExeSHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}, "by-hash"},
		{Subject{Tag: "x"}, ""},
	}
	for _, c := range cases {
		got := strings.Join(p.Identities(nil, &c.s), ",")
		if got != c.want {
			t.Errorf("%+v: identities %q, want %q", c.s, got, c.want)
		}
	}
}

// TestSelectsOnProcess: a tag's callers need their process read when an
// identity that could match them selects on its unit, executable or
// container; uid, gid, comm and the tag are the kernel's.
func TestSelectsOnProcess(t *testing.T) {
	p := mustParse(t, selectorPolicy)
	// by-exe and by-hash name no tag: they may match any caller.
	for _, tag := range []string{"agents", "x"} {
		if !p.SelectsOnProcess(tag) {
			t.Errorf("SelectsOnProcess(%q) false beside exe and exe_sha256 selectors", tag)
		}
	}
	p = mustParse(t, "identities:\n  - name: a\n  - name: a-7\n    tag: a\n    uid: [7]\n    comm: [psql]\n  - name: b-unit\n    tag: b\n    unit: [x.service]\n")
	if p.SelectsOnProcess("a") {
		t.Error("SelectsOnProcess(a) true with tag, uid and comm selectors only")
	}
	if !p.SelectsOnProcess("b") {
		t.Error("SelectsOnProcess(b) false with a unit selector")
	}
	if !mustParse(t, containerPolicy).SelectsOnProcess("ci-containers") {
		t.Error("SelectsOnProcess false with a container selector")
	}
}

const containerPolicy = `
identities:
  - name: ci-containers
    container: {runtime: docker, image: "ghcr.io/acme/*", labels: {ci.job: "*"}}
`

// TestContainerIdentities: a container selector narrows the identity of its
// tag to tasks of matching containers; a task the runtime said nothing of
// (Container nil) does not match.
func TestContainerIdentities(t *testing.T) {
	p := mustParse(t, containerPolicy)
	if !p.NeedsContainer() {
		t.Error("NeedsContainer false with a container selector")
	}
	job := map[string]string{"ci.job": "build-7"}
	cases := []struct {
		c    *Container
		want string
	}{
		{&Container{Runtime: "docker", Image: "ghcr.io/acme/build:1", Labels: job}, "ci-containers"},
		{&Container{Runtime: "docker", Image: "ghcr.io/acme/build:1"}, ""},
		{&Container{Runtime: "docker", Image: "docker.io/library/alpine", Labels: job}, ""},
		{&Container{Runtime: "podman", Image: "ghcr.io/acme/build:1", Labels: job}, ""},
		{nil, ""},
	}
	for _, c := range cases {
		s := Subject{Tag: "ci-containers", Container: c.c}
		if got := strings.Join(p.Identities(nil, &s), ","); got != c.want {
			t.Errorf("container %+v: identities %q, want %q", c.c, got, c.want)
		}
	}
	if got := p.Identities(nil, &Subject{Tag: "other", Container: cases[0].c}); len(got) != 0 {
		t.Errorf("another tag with a matching container: %v", got)
	}
}

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestTargetsAndResolution(t *testing.T) {
	src := `
targets:
  - name: db
    protocol: postgres
    addresses: [10.0.0.0/24, "2001:db8::5", db.internal]
    port: 5432
  - name: anyport
    protocol: tcp
    addresses: [192.0.2.1]
`
	r := fakeResolver{"db.internal": {netip.MustParseAddr("198.51.100.7")}}
	p, err := load("t.yaml", src, r)
	if err != nil {
		t.Fatal(err)
	}
	check := func(addr string, port uint16, want string) {
		t.Helper()
		got := ""
		if tg := p.TargetFor("", netip.MustParseAddr(addr), port); tg != nil {
			got = tg.Name
		}
		if got != want {
			t.Errorf("TargetFor(%s, %d) = %q, want %q", addr, port, got, want)
		}
	}
	check("10.0.0.9", 5432, "db")
	check("::ffff:10.0.0.9", 5432, "db") // IPv4-mapped
	check("2001:db8::5", 5432, "db")
	check("198.51.100.7", 5432, "db")
	check("10.0.0.9", 5433, "")
	check("192.0.2.1", 22, "anyport")
	check("203.0.113.1", 5432, "")

	// A refresh moves the host name; a failed refresh keeps the old answer.
	r["db.internal"] = []netip.Addr{netip.MustParseAddr("198.51.100.8")}
	if errs := p.ResolveTargets(context.Background()); len(errs) != 0 {
		t.Fatal(errs)
	}
	check("198.51.100.8", 5432, "db")
	check("198.51.100.7", 5432, "")
	delete(r, "db.internal")
	if errs := p.ResolveTargets(context.Background()); len(errs) != 1 {
		t.Errorf("failed refresh: %d errors, want 1", len(errs))
	}
	check("198.51.100.8", 5432, "db")
}

// TestUnresolvedHost: a target host name that does not resolve is the same
// at start and at reload (both are Load): the policy loads, a warning names
// the target and the host, the target matches none of the host's
// addresses (so a connection there gets no target and is denied by
// default), and the next ResolveTargets that resolves it makes it match.
func TestUnresolvedHost(t *testing.T) {
	src := `
identities: [{name: bot}]
targets:
  - name: db
    protocol: postgres
    addresses: [10.0.0.1, db.internal]
rules: [{name: bot-db, identity: bot, target: db, action: allow}]
`
	addr := netip.MustParseAddr("198.51.100.7")
	r := fakeResolver{"db.internal": {addr}}
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(file, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	started, err := Load(context.Background(), Source{Path: file}, Options{Resolver: r})
	if err != nil || len(started.Warnings()) != 0 || started.TargetFor("", addr, 5432) == nil {
		t.Fatalf("resolvable host: err %v, warnings %v", err, started.Warnings())
	}
	e := NewEngine(started)

	// The name stops resolving, and the policy is loaded again: at start
	// (a new engine) and at reload (a swap) alike.
	delete(r, "db.internal")
	for _, how := range []string{"start", "reload"} {
		p, err := Load(context.Background(), Source{Path: file}, Options{Resolver: r})
		if err != nil {
			t.Fatalf("%s: unresolvable host refused the policy: %v", how, err)
		}
		if how == "start" {
			e = NewEngine(p)
		} else {
			e.Swap(p)
		}
		want := file + `:4:5: target "db": resolve db.internal: no such host (the target matches no address of this host until it resolves)`
		if w := p.Warnings(); len(w) != 1 || w[0] != want {
			t.Errorf("%s: warnings %q, want %q", how, w, want)
		}
		if tg := e.Current().TargetFor("", addr, 5432); tg != nil {
			t.Errorf("%s: %s matches target %s before its name resolves", how, addr, tg.Name)
		}
		if d := e.Current().Decide(&Input{Subject: &Subject{Tag: "bot"}, Target: e.Current().TargetFor("", addr, 5432)}); d.Action != Deny {
			t.Errorf("%s: a connection to the unresolved address: %v by %s, want deny", how, d.Action, d.Rule)
		}
		if e.Current().TargetFor("", netip.MustParseAddr("10.0.0.1"), 5432) == nil {
			t.Errorf("%s: the literal address stopped matching", how)
		}
		r["db.internal"] = []netip.Addr{addr}
		if errs := e.Current().ResolveTargets(context.Background()); len(errs) != 0 {
			t.Fatal(errs)
		}
		if tg := e.Current().TargetFor("", addr, 5432); tg == nil || tg.Name != "db" {
			t.Errorf("%s: the refresh that resolves the name: target %v, want db", how, tg)
		}
		delete(r, "db.internal")
	}
}

// TestUndecodedProtocolsRefused: the language knows redis and
// mysql, but this build decodes none of them, so a target or rule that
// needs one would never match: Load refuses it at the line that names it.
func TestUndecodedProtocolsRefused(t *testing.T) {
	cases := []struct{ src, want string }{
		{"targets:\n  - {name: cache, protocol: redis, addresses: [10.0.0.1]}\n", `test.yaml:2:29: target "cache": protocol "redis" is not supported yet`},
		{"targets:\n  - {name: shop, protocol: mysql, addresses: [10.0.0.1]}\n", `target "shop": protocol "mysql" is not supported yet`},
		{"rules:\n  - {name: r, redis: {command: [GET]}, action: allow}\n", `test.yaml:2:22: rule "r": redis requests are not decoded`},
		{"rules:\n  - {name: r, protocol: [postgres, mysql], action: allow}\n", `test.yaml:2:25: rule "r": protocol "mysql" is not supported yet`},
	}
	for _, c := range cases {
		_, err := load("test.yaml", c.src, fakeResolver{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q:\n got: %v\nwant: %s", c.src, err, c.want)
		}
		// The language itself accepts them: the refusal is this build's.
		if _, err := compile("test.yaml", []byte(c.src), protocols); err != nil {
			t.Errorf("%q: the language refuses it: %v", c.src, err)
		}
	}
	if _, err := load("test.yaml", "targets:\n  - {name: db, protocol: postgres, addresses: [10.0.0.1]}\n  - {name: raw, protocol: tcp, addresses: [10.0.0.2]}\nrules:\n  - {name: r, protocol: [tcp], action: allow}\n", fakeResolver{}); err != nil {
		t.Errorf("postgres and tcp targets: %v", err)
	}
}

// TestLoadSources: a file, its text given by name, and the embedded default
// load alike and carry their text and its SHA-256.
func TestLoadSources(t *testing.T) {
	file := filepath.Join("examples", "ci-runner.yaml")
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := Load(context.Background(), Source{Path: file}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fromText, err := Load(context.Background(), Source{Name: file, Text: text}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(text)
	for _, p := range []*Policy{fromFile, fromText} {
		if p.Name() != file || string(p.Text()) != string(text) || p.SHA256() != hex.EncodeToString(sum[:]) {
			t.Errorf("%s: name %q, sha256 %s, text of %d bytes", file, p.Name(), p.SHA256(), len(p.Text()))
		}
	}
	def := Default()
	sum = sha256.Sum256(DefaultSource())
	if def.Name() != DefaultName || string(def.Text()) != string(DefaultSource()) || def.SHA256() != hex.EncodeToString(sum[:]) {
		t.Errorf("default: name %q, sha256 %s", def.Name(), def.SHA256())
	}
	if _, err := Load(context.Background(), Source{Path: filepath.Join(t.TempDir(), "missing.yaml")}, Options{}); err == nil {
		t.Error("a missing file loaded")
	}
}

func TestNetworkRules(t *testing.T) {
	p := mustParse(t, `
identities:
  - name: a
    tag: ci
    intercept:
      - {to: [10.0.0.0/8, "fd00::/8"], ports: 5432, action: redirect}
      - {to: 169.254.169.254, action: deny}
    udp_allow:
      - {to: 10.0.0.123, ports: 123}
deny_unix_paths: [/var/run/docker.sock]
`)
	got := p.Intercept("ci", 16)
	if len(got) != 5 || got[0].PortMin != 5432 || got[0].PortMax != 5432 || got[2].Action != "deny" ||
		got[2].PortMin != 1 || got[3].Prefix.String() != "0.0.0.0/0" || got[4].Prefix.String() != "::/0" {
		t.Errorf("Intercept = %+v", got)
	}
	if got[3].Action != "deny" || got[3].Reason != RefuseNoRule {
		t.Errorf("no rule allows ci anything, yet Intercept = %+v", got)
	}
	if other := p.Intercept("nope", 16); len(other) != 2 || other[0].Action != "deny" || other[0].Reason != RefuseUnknownIdentity {
		t.Errorf("intercept of an unknown tag = %+v", other)
	}
	if u := p.UDPAllow("ci"); len(u) != 1 || u[0].PortMin != 123 || u[0].Action != "pass" {
		t.Errorf("UDPAllow = %+v", u)
	}
	if d := p.DenyUnixPaths(); len(d) != 1 {
		t.Errorf("DenyUnixPaths = %v", d)
	}
}

const rulesPolicy = `
identities:
  - name: bot
  - name: admin
targets:
  - name: db
    protocol: postgres
    addresses: [10.0.0.1]
    port: 5432
  - name: api
    protocol: http
    addresses: [10.0.0.2]
  - name: cache
    protocol: redis
    addresses: [10.0.0.3]
  - name: host
    protocol: ssh
    addresses: [10.0.0.4]
    known_hosts: /etc/interlock/known_hosts
masks:
  - name: m
    columns: {email: partial}
rules:
  - name: no-drop
    sql: {command: [DROP, TRUNCATE]}
    action: deny
  - name: admin-anything
    identity: admin
    action: allow
  - name: bot-reads-public
    identity: bot
    target: db
    sql: {class: read, only_tables: [public_*, "reporting.*"]}
    action: allow
  - name: bot-reads-masked
    identity: bot
    target: db
    sql: {class: read}
    action: mask
    mask: m
  - name: bot-writes-approved
    identity: bot
    target: db
    sql: {class: write, tables: [orders]}
    action: approve
    approve: {reviewers: [alice]}
  - name: bot-api-get
    identity: bot
    http: {methods: [GET, HEAD], paths: ["/v1/*"]}
    action: allow
  - name: bot-redis-read
    identity: bot
    redis: {command: [GET, "H*"]}
    action: allow
  - name: bot-ssh-no-rm
    identity: bot
    ssh: {exec: ["rm *"]}
    action: deny
  - name: bot-ssh-uptime
    identity: bot
    ssh: {exec: ["uptime", "systemctl status *"]}
    action: allow
`

func TestDecide(t *testing.T) {
	p := mustParse(t, rulesPolicy)
	bot, admin := &Subject{Tag: "bot"}, &Subject{Tag: "admin"}
	db, api := p.Target("db"), p.Target("api")
	sqlCases := []struct {
		s      *Subject
		sql    string
		action Action
		rule   string
	}{
		{bot, "SELECT * FROM public_stats", Allow, "bot-reads-public"},
		{bot, "SELECT * FROM reporting.daily", Allow, "bot-reads-public"},
		{bot, "SELECT * FROM public_stats JOIN customers USING (id)", Mask, "bot-reads-masked"},
		{bot, "SELECT 1", Allow, "bot-reads-public"}, // no table: only_tables holds
		{bot, "UPDATE orders SET x = 1 WHERE id = 2", Approve, "bot-writes-approved"},
		{bot, "UPDATE users SET x = 1 WHERE id = 2", Deny, "default-deny"},
		{bot, "DROP TABLE x", Deny, "no-drop"},
		{admin, "DROP TABLE x", Deny, "no-drop"}, // first match wins
		{admin, "ALTER TABLE x ADD y int", Allow, "admin-anything"},
		{&Subject{Tag: "stranger"}, "SELECT 1", Deny, "default-deny"},
		{nil, "SELECT 1", Deny, "default-deny"},
		// Precedence across statements: deny > approve > mask > allow.
		{bot, "SELECT 1; SELECT * FROM customers", Mask, "bot-reads-masked"},
		{bot, "SELECT * FROM customers; UPDATE orders SET a = 1 WHERE b = 2", Approve, "bot-writes-approved"},
		{bot, "UPDATE orders SET a = 1 WHERE b = 2; TRUNCATE t; SELECT 1", Deny, "no-drop"},
		{bot, "SELEC 1", Deny, "unparseable"},
		{bot, "", Allow, "empty-query"},
		{bot, " ; ", Allow, "empty-query"},
	}
	for _, c := range sqlCases {
		d, _ := p.DecideSQL(c.s, db, c.sql)
		if d.Action != c.action || d.Rule != c.rule {
			t.Errorf("%+v %q: got %v by %s, want %v by %s", c.s, c.sql, d.Action, d.Rule, c.action, c.rule)
		}
		if d.Action == Mask && d.Mask == nil || d.Action == Approve && (d.Approval == nil || d.Approval.Quorum != 1 || d.Approval.Timeout == 0) {
			t.Errorf("%q: decision %+v lacks its details", c.sql, d)
		}
	}
	opCases := []struct {
		in   Input
		want string
	}{
		{Input{Subject: bot, Target: api, Op: Operation{Kind: OpHTTP, HTTP: &HTTPRequest{Method: "GET", URI: "/v1/users/7"}}}, "bot-api-get"},
		{Input{Subject: bot, Target: api, Op: Operation{Kind: OpHTTP, HTTP: &HTTPRequest{Method: "DELETE", URI: "/v1/users/7"}}}, "default-deny"},
		{Input{Subject: bot, Target: api, Op: Operation{Kind: OpHTTP, HTTP: &HTTPRequest{Method: "GET", URI: "/admin"}}}, "default-deny"},
		{Input{Subject: bot, Target: p.Target("cache"), Op: Operation{Kind: OpRedis, Command: "hgetall"}}, "bot-redis-read"},
		{Input{Subject: bot, Target: p.Target("cache"), Op: Operation{Kind: OpRedis, Command: "FLUSHALL"}}, "default-deny"},
		{Input{Subject: bot, Target: p.Target("host"), Op: Operation{Kind: OpSSH, SSH: "exec", Args: []string{"systemctl", "status", "nginx"}}}, "bot-ssh-uptime"},
		{Input{Subject: bot, Target: p.Target("host"), Op: Operation{Kind: OpSSH, SSH: "exec", Args: []string{"rm", "-rf", "/"}}}, "bot-ssh-no-rm"},
		{Input{Subject: bot, Target: p.Target("host"), Op: Operation{Kind: OpSSH, SSH: "exec", Args: []string{"reboot"}}}, "default-deny"},
		{Input{Subject: bot, Target: p.Target("host"), Op: Operation{Kind: OpSSH, SSH: "shell"}}, "default-deny"},
		{Input{Subject: bot, Target: db, Op: Operation{Kind: OpConnect}}, "bot-reads-public"},
		{Input{Subject: &Subject{Tag: "x"}, Target: db, Op: Operation{Kind: OpConnect}}, "default-deny"},
		{Input{Subject: admin, Target: nil, Op: Operation{Kind: OpConnect}}, "admin-anything"},
	}
	for _, c := range opCases {
		if d := p.Decide(&c.in); d.Rule != c.want {
			t.Errorf("%+v: rule %s, want %s", c.in.Op, d.Rule, c.want)
		}
	}
}

func TestReadOnlyFunctions(t *testing.T) {
	src := `
identities: [{name: bot}]
sql: {readonly_functions: [app.total]}
rules:
  - {name: reads, identity: bot, sql: {class: read}, action: allow}
`
	p := mustParse(t, src)
	s := &Subject{Tag: "bot"}
	if d, _ := p.DecideSQL(s, nil, "SELECT app.total(1)"); d.Rule != "reads" {
		t.Errorf("declared read-only function: %s", d.Rule)
	}
	if d, _ := p.DecideSQL(s, nil, "SELECT app.total(1), app.wipe()"); d.Rule != "default-deny" {
		t.Errorf("undeclared function: %s", d.Rule)
	}
}

// TestLoadRefusesAndSwap: a policy that does not load (invalid, or failing
// its shipped tests) never reaches the engine; a swap is atomic for readers.
func TestLoadRefusesAndSwap(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yaml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e := NewEngine(nil)
	if e.Current().Name() != DefaultName {
		t.Fatal("NewEngine(nil) does not start on the default policy")
	}
	write("rules: [{name: r1, action: allw}]\n")
	if _, err := Load(context.Background(), Source{Path: file}, Options{}); err == nil || !strings.Contains(err.Error(), "p.yaml:1:28") {
		t.Errorf("invalid policy: err %v", err)
	}
	write("identities: [{name: a}]\nrules: [{name: r1, action: deny}]\ntests:\n  - {identity: a, expect: {action: allow}}\n")
	_, err := Load(context.Background(), Source{Path: file}, Options{})
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 1 || list[0].Error() != file+`:4:5: test "test at line 4": got deny by r1, want allow` {
		t.Errorf("policy failing its tests: err %v", err)
	}
	if e.Current().Name() != DefaultName {
		t.Error("a refused policy replaced the one in force")
	}
	// Concurrent readers always see a whole policy.
	e.Swap(mustParse(t, "identities: [{name: a}]\nrules: [{name: r1, action: allow}]\n"))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				d := e.Current().Decide(&Input{Subject: &Subject{Tag: "a"}})
				if d.Rule != "r1" && d.Rule != "r2" {
					t.Errorf("torn decision %+v", d)
					return
				}
			}
		}()
	}
	for i := range 50 {
		name := []string{"r1", "r2"}[i%2]
		e.Swap(mustParse(t, "identities: [{name: a}]\nrules: [{name: "+name+", action: allow}]\n"))
	}
	close(stop)
	wg.Wait()
}

func TestSiblingTests(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("identities: [{name: a}]\nrules: [{name: r, identity: a, action: allow}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "p_test.yaml"), []byte("tests:\n  - {identity: a, expect: {action: allow, rule: r}}\n  - {identity: b, expect: {action: deny}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(context.Background(), Source{Path: filepath.Join(dir, "p.yaml")}, Options{})
	if err == nil || !strings.Contains(err.Error(), `p_test.yaml:3:16: test "test at line 3": unknown identity "b"`) {
		t.Fatalf("sibling test errors: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "p_test.yaml"), []byte("tests:\n  - {identity: a, expect: {action: allow, rule: r}}\n"), 0o600)
	p, err := Load(context.Background(), Source{Path: filepath.Join(dir, "p.yaml")}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res := p.RunTests(); len(res) != 1 || !res[0].Pass {
		t.Errorf("sibling tests: %v", res)
	}
}

func TestGlobMatch(t *testing.T) {
	for _, c := range []struct {
		p, s string
		want bool
	}{
		{"*", "", true}, {"a*", "abc", true}, {"*c", "abc", true}, {"a*c", "abbbc", true},
		{"a?c", "abc", true}, {"a?c", "ac", false}, {"/usr/bin/*", "/usr/bin/x/y", true},
		{"public_*", "publicx", false}, {"*_credentials", "service_credentials", true},
		{"a*b*c", "aXbYc", true}, {"a*b*c", "aXbY", false}, {"", "", true}, {"", "a", false},
	} {
		if got := globMatch(c.p, c.s); got != c.want {
			t.Errorf("globMatch(%q, %q) = %v", c.p, c.s, got)
		}
	}
}

// TestDecideNoAlloc holds the hot path to zero allocations.
func TestDecideNoAlloc(t *testing.T) {
	p := mustParse(t, rulesPolicy)
	q := Classifier("postgres").Classify("SELECT * FROM customers WHERE id = 1")
	in := &Input{Subject: &Subject{Tag: "bot"}, Target: p.Target("db"), Op: Operation{Kind: OpSQL, SQL: &q.Statements[0]}}
	if n := testing.AllocsPerRun(100, func() { p.Decide(in) }); n != 0 {
		t.Errorf("Decide allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { p.DecideSQL(in.Subject, in.Target, "SELECT * FROM customers WHERE id = 2") }); n != 0 {
		t.Errorf("DecideSQL (cached) allocates %v times", n)
	}
}

// TestKnowsTag: a tag is known when an identity selects on it (its own
// name when it has no selector, or its tag:), or when one selects on no
// tag at all; `interlock exec` warns of one that is not.
func TestKnowsTag(t *testing.T) {
	tagged := mustParse(t, "version: 1\nidentities: [{name: ci}, {name: deploy, tag: runner, uid: [1000]}]\n")
	for tag, want := range map[string]bool{"ci": true, "runner": true, "deploy": false, "cj": false, "": false} {
		if got := tagged.KnowsTag(tag); got != want {
			t.Errorf("KnowsTag(%q) = %v, want %v", tag, got, want)
		}
	}
	if p := mustParse(t, "version: 1\nidentities: [{name: root, uid: [0]}]\n"); !p.KnowsTag("anything") {
		t.Error("an identity selecting on no tag does not know every tag")
	}
	if Default().KnowsTag("dmeo") || !Default().KnowsTag("demo") {
		t.Error("the default policy knows demo alone")
	}
}
