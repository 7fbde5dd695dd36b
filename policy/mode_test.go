package policy

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

const modePolicy = `
mode: audit
identities:
  - name: ci
    mode: enforce
  - name: bot
  - name: reporter
    mode: audit
  - name: builders
    uid: [1000]
targets:
  - name: prod
    protocol: postgres
    addresses: [10.0.0.1]
    port: 5432
  - name: staging
    protocol: postgres
    addresses: [10.0.0.2]
    port: 5432
    mode: enforce
  - name: sandbox
    protocol: postgres
    addresses: [10.0.0.3]
    port: 5432
    mode: audit
rules:
  - name: reads
    sql: {class: [read]}
    action: allow
`

func TestMode(t *testing.T) {
	p := mustParse(t, modePolicy)
	prod, staging, sandbox := p.Target("prod"), p.Target("staging"), p.Target("sandbox")
	cases := []struct {
		subject *Subject
		target  *Target
		want    Mode
	}{
		// The identity's mode beats the default.
		{&Subject{Tag: "ci"}, prod, Enforce},
		{&Subject{Tag: "reporter"}, prod, Audit},
		// No mode on the identity: the default.
		{&Subject{Tag: "bot"}, prod, Audit},
		// The target's mode beats the identity's, both ways.
		{&Subject{Tag: "ci"}, sandbox, Audit},
		{&Subject{Tag: "bot"}, staging, Enforce},
		// An unknown destination or caller gets the identity or default.
		{&Subject{Tag: "ci"}, nil, Enforce},
		{&Subject{Tag: "stranger"}, prod, Audit},
		{nil, nil, Audit},
		// A subject matching several identities is audited only when all
		// of them are: ci (enforce) + builders (default audit) enforces.
		{&Subject{Tag: "ci", UID: 1000}, prod, Enforce},
		{&Subject{Tag: "reporter", UID: 1000}, prod, Audit},
	}
	for _, c := range cases {
		tag := "<nil>"
		if c.subject != nil {
			tag = c.subject.Tag
		}
		tname := "<nil>"
		if c.target != nil {
			tname = c.target.Name
		}
		if got := p.Mode(c.subject, c.target); got != c.want {
			t.Errorf("Mode(%s uid %v, %s) = %s, want %s", tag, c.subject, tname, got, c.want)
		}
	}
}

func TestModeDefaultIsEnforce(t *testing.T) {
	p := mustParse(t, `
identities: [{name: ci}]
targets: [{name: db, protocol: postgres, addresses: [10.0.0.1]}]
`)
	if got := p.Mode(&Subject{Tag: "ci"}, p.Target("db")); got != Enforce {
		t.Errorf("mode without any mode: key = %s, want enforce", got)
	}
	if got := Default().Mode(&Subject{Tag: "x"}, nil); got != Enforce {
		t.Errorf("default policy mode = %s, want enforce", got)
	}
	if p.DefaultMode() != Enforce {
		t.Errorf("DefaultMode = %s", p.DefaultMode())
	}
}

// A target from another policy (an older one, before a reload) must not be
// looked up by its index in this one.
func TestModeForeignTarget(t *testing.T) {
	p := mustParse(t, modePolicy)
	other := mustParse(t, `
targets: [{name: x, protocol: postgres, addresses: [10.9.9.9], mode: enforce}]
`)
	if got := p.Mode(&Subject{Tag: "bot"}, other.Target("x")); got != Audit {
		t.Errorf("foreign target: got %s, want the identity's audit", got)
	}
}

func TestModes(t *testing.T) {
	p := mustParse(t, modePolicy)
	var got []string
	for _, m := range p.Modes() {
		got = append(got, m.String())
	}
	want := []string{
		"ci enforce, audit on [sandbox]",
		"bot audit (default), enforce on [staging]",
		"reporter audit, enforce on [staging]",
		"builders audit (default), enforce on [staging]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Modes:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestModeErrors(t *testing.T) {
	_, err := load("m.yaml", `mode: watch
identities:
  - name: ci
    mode: enforced
targets:
  - name: db
    protocol: postgres
    addresses: [10.0.0.1]
    mode: 3
`, fakeResolver{})
	if err == nil {
		t.Fatal("invalid modes accepted")
	}
	for _, want := range []string{
		`m.yaml:1:7: mode "watch": use enforce or audit`,
		`m.yaml:4:11: identity "ci": mode "enforced": use enforce or audit`,
		`m.yaml:9:11: target "db": mode "3": use enforce or audit`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("errors lack %q:\n%v", want, err)
		}
	}
}

func TestModeDescribe(t *testing.T) {
	for _, c := range []struct {
		m    Mode
		a    Action
		want string
	}{
		{Audit, Deny, "would deny"},
		{Audit, Approve, "would hold"},
		{Audit, Mask, "would mask"},
		{Audit, Allow, "allow"},
		{Enforce, Deny, "deny"},
		{Enforce, Approve, "approve"},
	} {
		if got := c.m.Describe(c.a); got != c.want {
			t.Errorf("%s.Describe(%s) = %q, want %q", c.m, c.a, got, c.want)
		}
	}
}

// Switching an identity from audit to enforce is a reload: the engine's
// next Current answers with the new mode.
func TestModeReloadSwitches(t *testing.T) {
	audit := mustParse(t, "identities: [{name: ci, mode: audit}]")
	e := NewEngine(audit)
	if e.Current().Mode(&Subject{Tag: "ci"}, nil) != Audit {
		t.Fatal("not audited before the switch")
	}
	e.Swap(mustParse(t, "identities: [{name: ci, mode: enforce}]"))
	if e.Current().Mode(&Subject{Tag: "ci"}, nil) != Enforce {
		t.Fatal("not enforced after the switch")
	}
}

func TestModeNoAlloc(t *testing.T) {
	p := mustParse(t, modePolicy)
	s := &Subject{Tag: "reporter", UID: 1000}
	tg := p.TargetFor("", netip.MustParseAddr("10.0.0.1"), 5432)
	if n := testing.AllocsPerRun(100, func() { p.Mode(s, tg) }); n != 0 {
		t.Errorf("Mode allocates %v times", n)
	}
}

func BenchmarkMode(b *testing.B) {
	p := mustParse(b, modePolicy)
	s := &Subject{Tag: "reporter", UID: 1000}
	tg := p.Target("prod")
	b.ReportAllocs()
	for b.Loop() {
		p.Mode(s, tg)
	}
}

func TestExplainMode(t *testing.T) {
	p := mustParse(t, modePolicy)
	for _, c := range []struct {
		test *Test
		want Mode
	}{
		{&Test{Identity: "ci", Target: "prod"}, Enforce},
		{&Test{Identity: "ci", Target: "sandbox"}, Audit},
		{&Test{Identity: "bot", Target: "prod"}, Audit},
		{&Test{Identity: "bot", Target: "staging"}, Enforce},
		{&Test{Subject: &Subject{Tag: "ci", UID: 1000}}, Enforce},
		{&Test{Subject: &Subject{Tag: "reporter"}}, Audit},
	} {
		if got := p.ExplainMode(c.test); got != c.want {
			t.Errorf("ExplainMode(%+v) = %s, want %s", c.test, got, c.want)
		}
	}
}

func TestModeJSON(t *testing.T) {
	p := mustParse(t, modePolicy)
	b, err := json.Marshal(p.Modes()[:2])
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"identity":"ci","mode":"enforce","from_default":false,"exceptions":["sandbox"]},` +
		`{"identity":"bot","mode":"audit","from_default":true,"exceptions":["staging"]}]`
	if string(b) != want {
		t.Errorf("JSON:\n%s\nwant\n%s", b, want)
	}
	var back []IdentityMode
	if err := json.Unmarshal(b, &back); err != nil || back[1].Mode != Audit {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	var m Mode
	if err := json.Unmarshal([]byte(`"watch"`), &m); err == nil {
		t.Error("unknown mode name accepted")
	}
	if _, err := json.Marshal(Mode(7)); err == nil {
		t.Error("unknown mode marshalled")
	}
}

// FuzzMode loads arbitrary policies with mode keys and asks every mode
// question the daemon and CLI ask: none may panic, and a policy's modes
// must agree with Modes().
func FuzzMode(f *testing.F) {
	f.Add([]byte(modePolicy))
	f.Add([]byte("mode: audit\nidentities: [{name: a, mode: enforce}, {name: b}]\ntargets: [{name: t, protocol: tcp, addresses: [10.0.0.0/8], mode: audit}]"))
	f.Add([]byte("identities: [{name: a, mode: audit}, {name: a, mode: enforce}]\ntests: [{identity: a, expect: {action: deny}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := load("fuzz.yaml", string(data), fakeResolver{})
		if err != nil {
			return
		}
		modes := p.Modes()
		for _, im := range modes {
			id := p.Identity(im.Identity)
			s := &Subject{Tag: id.Tag}
			if id.Tag == "" || len(p.Identities(nil, s)) != 1 {
				continue // the subject would match other identities too
			}
			if got := p.Mode(s, nil); got != im.Mode {
				t.Errorf("identity %s: Mode %s, Modes says %s", im.Identity, got, im.Mode)
			}
			for _, tg := range p.Targets() {
				want := im.Mode
				for _, e := range im.Exceptions {
					if e == tg.Name {
						want = 1 - im.Mode
					}
				}
				if got := p.Mode(s, tg); got != want {
					t.Errorf("identity %s, target %s: Mode %s, Modes says %s", im.Identity, tg.Name, got, want)
				}
			}
		}
		for _, tc := range p.Tests() {
			p.ExplainMode(tc)
		}
		p.Mode(nil, nil)
	})
}
