package policy

// reachable works out, for a cgroup tagged tag, where a connect could lead
// to a request the policy allows, so that Intercept can have the kernel
// refuse every other destination at connect(). The kernel knows the tag at
// connect, nothing else: not the uid, executable or comm an identity may
// select on, not which request will follow. So reachable errs toward reach,
// and a destination is left out only when no rule that could match any
// subject of the tag could allow any request to it:
//
//   - an identity is a candidate when its tag is tag, or when it selects on
//     attributes only (no tag: it may match a subject of any tag);
//   - a rule counts when its action is not deny (allow, mask and approve all
//     need interlockd; a deny rule never lets a connection in, and Decide
//     passes over deny rules with operation matchers at connect) and it names
//     no identity or some candidate;
//   - such a rule reaches every target it names (all of them when it names
//     none) whose protocol it accepts, at the target's port (every port for
//     port 0) and at every address the target has now: literal ones and the
//     host names' addresses as last resolved, which is why interlockd asks
//     again after each ResolveTargets; an http target chosen by name
//     (hosts:) is reached at its port on every address;
//   - a rule that names no target and accepts tcp also reaches every
//     destination that is no target (the session decides those with protocol
//     tcp, the plain relay): nothing is bounded then;
//   - a target in audit mode is always reached ("would deny" lets it
//     through), and when some subject of the tag may be audited (an
//     identity's mode:, or the top-level one) nothing is bounded.
//
// Deny rules that shadow an allowing one, and targets that shadow a later
// one on the same address (TargetFor takes the first), are not taken into
// account: they only make reachable redirect more than it must.
//
// bounded is false when the kernel may refuse nothing for the tag; known
// is whether any identity is a candidate.
func (p *Policy) reachable(tag string) (reach []InterceptRule, bounded, known bool) {
	var cand bitset
	enforced, mayAudit := false, p.modes.def == Audit
	for _, id := range p.identities {
		if id.Tag != tag && id.Tag != "" {
			continue
		}
		cand.set(id.index)
		known = true
		m := p.modes.def
		if ms := p.modes.identities[id.index]; ms.set {
			m = ms.mode
		}
		switch {
		case m == Audit:
			mayAudit = true
		case !id.selectsAttributes():
			// Every subject of the tag matches it, and one enforced
			// identity makes the subject enforced (see Mode).
			enforced = true
		}
	}
	if mayAudit && !enforced {
		return nil, false, known
	}
	var targets bitset
	for _, r := range p.rules {
		if r.decision.Action == Deny || (!r.anyIdentity && !r.identities.intersects(&cand)) {
			continue
		}
		if r.anyTarget && (len(r.protocols) == 0 || containsString(r.protocols, "tcp")) {
			return nil, false, known
		}
		for _, t := range p.targets {
			if (r.anyTarget || r.targets.has(t.index)) && (len(r.protocols) == 0 || containsString(r.protocols, t.Protocol)) {
				targets.set(t.index)
			}
		}
	}
	for _, t := range p.targets {
		if ms := p.modes.targets[t.index]; ms.set && ms.mode == Audit {
			targets.set(t.index)
		}
	}
	for _, t := range p.targets {
		if !targets.has(t.index) {
			continue
		}
		lo, hi := uint16(1), uint16(65535)
		if t.Port != 0 {
			lo, hi = t.Port, t.Port
		}
		for _, pfx := range t.Prefixes(tag) {
			reach = addCovering(reach, InterceptRule{Prefix: pfx.Masked(), PortMin: lo, PortMax: hi, Action: "redirect"})
		}
		if t.Protocol == "http" && len(t.Names) > 0 {
			for _, r := range byNameRedirects(t) {
				reach = addCovering(reach, r)
			}
		}
	}
	return reach, true, known
}

// addCovering adds r to rules unless one of them already covers it, and
// drops those r covers: the redirects are alike, so only their union
// matters, and fewer rules fit the kernel's few.
func addCovering(rules []InterceptRule, r InterceptRule) []InterceptRule {
	for _, o := range rules {
		if covers(o, r) {
			return rules
		}
	}
	out := rules[:0]
	for _, o := range rules {
		if !covers(r, o) {
			out = append(out, o)
		}
	}
	return append(out, r)
}

// covers reports whether every destination b matches, a matches too.
func covers(a, b InterceptRule) bool {
	return a.Prefix.Bits() <= b.Prefix.Bits() && a.Prefix.Contains(b.Prefix.Addr()) &&
		a.PortMin <= b.PortMin && b.PortMax <= a.PortMax
}

// selectsAttributes reports whether id selects on more than the tag: on
// attributes interlockd learns at accept and the kernel does not hold at
// connect.
func (id *Identity) selectsAttributes() bool {
	return len(id.Units)+len(id.UIDs)+len(id.GIDs)+len(id.Exes)+len(id.ExeSHA256)+len(id.Comms) > 0 || id.Container != nil
}
