package policy

import "fmt"

// Mode says whether a decision is carried out (Enforce) or only recorded as
// what the policy would have done (Audit). Audit mode exists for rollouts:
// operators watch a policy's verdicts on real agents before enforcing it,
// identity by identity. It softens only the verdict: requests are decoded,
// decided and recorded exactly as under enforcement, and the kernel refuses
// no connect that the policy would only deny (see Policy.Intercept): every
// one reaches interlockd to be recorded as "would deny".
type Mode uint8

// Modes. The zero value is Enforce so a forgotten field fails closed.
const (
	// Enforce carries out every decision.
	Enforce Mode = iota
	// Audit lets every request through unchanged (no deny, no hold, no
	// mask) and records the decision as "would deny", "would hold" or
	// "would mask" with its rule.
	Audit
)

var modeNames = [...]string{"enforce", "audit"}

// String returns the policy-file name of m.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "unknown"
}

// MarshalText encodes m as its policy-file name, so JSON (the control API's
// status) carries "enforce" or "audit".
func (m Mode) MarshalText() ([]byte, error) {
	if int(m) >= len(modeNames) {
		return nil, fmt.Errorf("marshal mode: unknown mode %d", m)
	}
	return []byte(modeNames[m]), nil
}

// UnmarshalText decodes a policy-file mode name.
func (m *Mode) UnmarshalText(b []byte) error {
	v, ok := parseMode(string(b))
	if !ok {
		return fmt.Errorf("unmarshal mode: %q: use enforce or audit", b)
	}
	*m = v
	return nil
}

// parseMode maps a policy-file name to a Mode.
func parseMode(s string) (Mode, bool) {
	for i, n := range modeNames {
		if n == s {
			return Mode(i), true
		}
	}
	return 0, false
}

// modeSetting is a mode as written in one place of the file: unset, or an
// explicit mode.
type modeSetting struct {
	set  bool
	mode Mode
}

// modeTable is the compiled mode configuration of a policy, indexed like
// the policy's identities and targets.
type modeTable struct {
	def        Mode
	identities []modeSetting
	targets    []modeSetting
	// anyIdentity is true when some identity sets a mode, so Mode can skip
	// matching identities when none does.
	anyIdentity bool
}

// compileModes reads the top-level, identity and target mode keys. It runs
// after identities and targets are compiled, so indexes line up.
func (c *compiler) compileModes(raw *rawPolicy) {
	t := modeTable{}
	if m, ok := c.modeKey("", raw.Mode, raw.Keys, raw.Pos); ok {
		t.def = m
	}
	t.identities = make([]modeSetting, len(c.p.identities))
	for i := range raw.Identities {
		r := &raw.Identities[i]
		m, ok := c.modeKey(fmt.Sprintf("identity %q: ", r.Name), r.Mode, r.Keys, r.Pos)
		if id := c.p.identityIndex[r.Name]; ok && id != nil && id.pos == r.Pos {
			t.identities[id.index] = modeSetting{set: true, mode: m}
			t.anyIdentity = true
		}
	}
	t.targets = make([]modeSetting, len(c.p.targets))
	for i := range raw.Targets {
		r := &raw.Targets[i]
		m, ok := c.modeKey(fmt.Sprintf("target %q: ", r.Name), r.Mode, r.Keys, r.Pos)
		if tg := c.p.targetIndex[r.Name]; ok && tg != nil && tg.pos == r.Pos {
			t.targets[tg.index] = modeSetting{set: true, mode: m}
		}
	}
	c.p.modes = t
}

// modeKey parses one mode: key; ok is false when it is absent or invalid
// (reported, prefixed with where it stands).
func (c *compiler) modeKey(where, value string, keys keyPos, pos Pos) (Mode, bool) {
	if value == "" {
		return Enforce, false
	}
	m, ok := parseMode(value)
	if !ok {
		c.errorf(keys.at("mode", pos), "%smode %q: use enforce or audit", where, value)
	}
	return m, ok
}

// Mode returns whether requests of subject s to target t (nil when the
// destination is no known target) are enforced or only audited. The most
// specific setting wins: the target's mode: if it has one, else the
// identities' (an identity without mode: has the top-level one), else the
// policy's top-level mode: (Enforce when absent). A subject that matches
// several identities is audited only when every one of them is, so audit
// never weakens an identity that is enforced. Mode does not allocate; call
// it per request on the policy in force (Engine.Current), so a reload that
// switches an identity to enforce applies to the next request of sessions
// already open.
func (p *Policy) Mode(s *Subject, t *Target) Mode {
	if t != nil && t.index < len(p.modes.targets) && p.targets[t.index] == t {
		if ms := p.modes.targets[t.index]; ms.set {
			return ms.mode
		}
	}
	if s == nil || !p.modes.anyIdentity {
		return p.modes.def
	}
	matched := false
	for _, id := range p.identities {
		if !id.matches(s) {
			continue
		}
		m := p.modes.def
		if ms := p.modes.identities[id.index]; ms.set {
			m = ms.mode
		}
		if m == Enforce {
			return Enforce
		}
		matched = true
	}
	if matched {
		return Audit
	}
	return p.modes.def
}

// DefaultMode returns the policy's top-level mode (Enforce when the file
// sets none).
func (p *Policy) DefaultMode() Mode { return p.modes.def }

// IdentityMode is how one identity's requests are treated, for
// `interlock status`.
type IdentityMode struct {
	Identity string `json:"identity"`
	// Mode applies to every target not listed in Exceptions.
	Mode Mode `json:"mode"`
	// FromDefault is true when the identity sets no mode and Mode is the
	// policy's top-level one.
	FromDefault bool `json:"from_default"`
	// Exceptions are the targets whose own mode: differs from Mode, in
	// file order; on them the identity gets the other mode.
	Exceptions []string `json:"exceptions,omitempty"`
}

// String renders m as "NAME MODE" plus "(default)" and the targets where
// the other mode applies.
func (m IdentityMode) String() string {
	s := m.Identity + " " + m.Mode.String()
	if m.FromDefault {
		s += " (default)"
	}
	if len(m.Exceptions) > 0 {
		other := Audit
		if m.Mode == Audit {
			other = Enforce
		}
		s += fmt.Sprintf(", %s on %v", other, m.Exceptions)
	}
	return s
}

// Modes lists every identity of the policy, in file order, with the mode
// its requests get and the targets that override it. An identity whose
// subjects also match another identity with a stricter mode is enforced
// more strictly than listed here (see Mode).
func (p *Policy) Modes() []IdentityMode {
	out := make([]IdentityMode, 0, len(p.identities))
	for _, id := range p.identities {
		im := IdentityMode{Identity: id.Name, Mode: p.modes.def, FromDefault: true}
		if ms := p.modes.identities[id.index]; ms.set {
			im.Mode, im.FromDefault = ms.mode, false
		}
		for _, t := range p.targets {
			if ms := p.modes.targets[t.index]; ms.set && ms.mode != im.Mode {
				im.Exceptions = append(im.Exceptions, t.Name)
			}
		}
		out = append(out, im)
	}
	return out
}

// Describe returns how a decision with action a reads under mode m: the
// action itself ("deny", "allow", ...) when enforced; "would deny",
// "would hold" or "would mask" when audited ("allow" stays "allow").
func (m Mode) Describe(a Action) string {
	if m != Audit {
		return a.String()
	}
	switch a {
	case Deny:
		return "would deny"
	case Approve:
		return "would hold"
	case Mask:
		return "would mask"
	}
	return a.String()
}

// ExplainMode returns the mode the request a Test describes would get:
// what `interlock policy explain` shows beside the decision. It follows the
// rules of Mode, with the Test's identity taken as matched.
func (p *Policy) ExplainMode(t *Test) Mode {
	ids, subject, target := p.caller(t)
	if target != nil {
		if ms := p.modes.targets[target.index]; ms.set {
			return ms.mode
		}
	}
	if t.Identity == "" {
		return p.Mode(subject, nil)
	}
	m := p.modes.def
	for _, id := range p.identities {
		if ids.has(id.index) {
			if ms := p.modes.identities[id.index]; ms.set {
				m = ms.mode
			}
		}
	}
	return m
}
