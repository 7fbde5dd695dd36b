package policy

import (
	"math"
	"regexp"
	"slices"
	"strings"
	"unicode"
)

// DNS questions: every tagged look-up goes through interlockd, which asks
// DecideDNS before any resolver sees the name. README.md documents the
// identity's dns: keys.

// DefaultDNSTypes are the query types an identity may ask without naming
// them in dns.types: addresses, aliases and service bindings.
var DefaultDNSTypes = []string{"A", "AAAA", "CNAME", "HTTPS", "SVCB"}

// MaxDNSName is the longest name (without the final dot) DNS carries, and
// the default of dns.max_name_length.
const MaxDNSName = 253

// Encoded-label rule (dns.refuse_encoded_labels): a label is taken for
// encoded data when it is encodedAlwaysLen characters or longer, or when a
// run of it between hyphens has at least encodedMinLen characters, mixes
// letters and digits, and has a Shannon entropy of at least encodedMinBits
// bits per character. Hex (xxd -p), base32 and base64 chunks of 10 bytes
// and more score so (a chunk with no digit at all, about 3% of base64
// chunks of 20 characters, passes); names made of words and hyphens do
// not: words have no digits, and hyphens cut them into short runs.
// TestEncodedLabelRule holds the names it was checked on, and
// TestEncodedLabelFalsePositives its false positives on public lists of
// real host names (under 0.1 %).
const (
	encodedMinLen    = 20
	encodedMinBits   = 3.3
	encodedAlwaysLen = 48
)

// Why DecideDNS refused a question.
const (
	DNSRefuseUnknownIdentity = "unknown-identity"
	DNSRefuseName            = "name-not-allowed"
	DNSRefuseType            = "type-not-allowed"
	DNSRefuseLength          = "name-too-long"
	DNSRefuseEncoded         = "encoded-label"
)

// dnsTypeRE is a query type mnemonic: letters and digits (TYPE65534 too).
var dnsTypeRE = regexp.MustCompile(`^[A-Z][A-Z0-9]*$`)

// rawDNS is an identity's dns: section.
type rawDNS struct {
	Allow               []string `yaml:"allow"`
	Types               []string `yaml:"types"`
	MaxNameLength       int      `yaml:"max_name_length"`
	RefuseEncodedLabels bool     `yaml:"refuse_encoded_labels"`
	Pos                 Pos
	Keys                keyPos
}

// dnsPolicy is an identity's compiled dns: section.
type dnsPolicy struct {
	// allow holds name patterns; nil until finishDNS fills the default
	// (the host names of the targets its rules reach) when none is given.
	allow         []string
	explicit      bool
	types         []string
	maxName       int
	refuseEncoded bool
}

// DNSDecision is the verdict on one DNS question.
type DNSDecision struct {
	Allow bool
	// Identity is the identity whose dns: section allowed the question,
	// or the first one that refused it.
	Identity string
	// Reason names why a question was refused (DNSRefuse...).
	Reason string
}

func (c *compiler) dnsPolicy(identity string, r *rawDNS) *dnsPolicy {
	d := &dnsPolicy{types: DefaultDNSTypes, maxName: MaxDNSName}
	if r == nil {
		return d
	}
	if _, set := r.Keys["allow"]; set {
		d.explicit = true
		d.allow = []string{}
		for _, a := range r.Allow {
			n := strings.ToLower(strings.TrimSuffix(a, "."))
			if !hostRE.MatchString(strings.TrimPrefix(n, "*.")) || n == "*" {
				c.errorf(r.Keys.at("allow", r.Pos), "identity %q: dns allow %q is not a host name or *.domain pattern", identity, a)
				continue
			}
			d.allow = append(d.allow, n)
		}
	}
	for _, t := range r.Types {
		u := strings.ToUpper(t)
		if !dnsTypeRE.MatchString(u) {
			c.errorf(r.Keys.at("types", r.Pos), "identity %q: dns type %q is not a query type name such as TXT or MX", identity, t)
			continue
		}
		if !slices.Contains(d.types, u) {
			d.types = append(slices.Clone(d.types), u)
		}
	}
	if _, set := r.Keys["max_name_length"]; set {
		if r.MaxNameLength < 1 || r.MaxNameLength > MaxDNSName {
			c.errorf(r.Keys.at("max_name_length", r.Pos), "identity %q: dns max_name_length %d: use 1 to %d", identity, r.MaxNameLength, MaxDNSName)
		} else {
			d.maxName = r.MaxNameLength
		}
	}
	d.refuseEncoded = r.RefuseEncodedLabels
	return d
}

// finishDNS gives every identity without dns.allow its default: the host
// names (addresses: and hosts:) of the targets a rule that could allow it
// reaches, as reachable counts them, and those of its intercept entries
// that redirect or pass.
func (p *Policy) finishDNS() {
	for _, id := range p.identities {
		if id.dns.explicit {
			continue
		}
		var names []string
		for _, r := range id.intercept {
			if r.Host != "" && r.Action != "deny" && !slices.Contains(names, r.Host) {
				names = append(names, r.Host)
			}
		}
		for _, r := range p.rules {
			if r.decision.Action == Deny || (!r.anyIdentity && !r.identities.has(id.index)) {
				continue
			}
			for _, t := range p.targets {
				if !r.anyTarget && !r.targets.has(t.index) {
					continue
				}
				for _, h := range append(slices.Clone(t.Hosts), t.Names...) {
					h = strings.ToLower(strings.TrimSuffix(h, "."))
					if !slices.Contains(names, h) {
						names = append(names, h)
					}
				}
			}
		}
		id.dns.allow = names
	}
}

// DNSNames returns the name patterns the identity may look up (its
// dns.allow, or the default finishDNS derived); nil for an unknown name.
func (p *Policy) DNSNames(identity string) []string {
	id := p.identityIndex[identity]
	if id == nil {
		return nil
	}
	return id.dns.allow
}

// DecideDNS decides one question of the caller s: the name (any case, with
// or without the final dot) and the query type's mnemonic ("A", "TXT",
// "TYPE65534"). Any identity matching s that allows it allows it.
func (p *Policy) DecideDNS(s *Subject, name, qtype string) DNSDecision {
	ids := p.identitySet(s)
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	var refused *DNSDecision
	for _, id := range p.identities {
		if !ids.has(id.index) {
			continue
		}
		d := id.dns.decide(name, qtype)
		d.Identity = id.Name
		if d.Allow {
			return d
		}
		if refused == nil {
			refused = &d
		}
	}
	if refused == nil {
		return DNSDecision{Reason: DNSRefuseUnknownIdentity}
	}
	return *refused
}

func (d *dnsPolicy) decide(name, qtype string) DNSDecision {
	switch {
	case len(name) > d.maxName:
		return DNSDecision{Reason: DNSRefuseLength}
	case d.refuseEncoded && hasEncodedLabel(name):
		return DNSDecision{Reason: DNSRefuseEncoded}
	case !slices.Contains(d.types, qtype):
		return DNSDecision{Reason: DNSRefuseType}
	}
	for _, pat := range d.allow {
		if NameMatches(pat, name) {
			return DNSDecision{Allow: true}
		}
	}
	return DNSDecision{Reason: DNSRefuseName}
}

// NameMatches reports whether a host name (lower case, no final dot)
// matches a pattern: the same name, or for "*.domain" any name one or more
// labels below domain (not domain itself).
func NameMatches(pattern, name string) bool {
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		return strings.HasSuffix(name, "."+rest)
	}
	return pattern == name
}

// hasEncodedLabel applies the encoded-label rule to every label of name.
func hasEncodedLabel(name string) bool {
	for _, l := range strings.Split(name, ".") {
		if len(l) >= encodedAlwaysLen {
			return true
		}
		for _, run := range strings.Split(l, "-") {
			if len(run) >= encodedMinLen && strings.ContainsAny(run, "0123456789") &&
				strings.IndexFunc(run, unicode.IsLetter) >= 0 && entropy(run) >= encodedMinBits {
				return true
			}
		}
	}
	return false
}

// entropy is the Shannon entropy of s's bytes, in bits per byte.
func entropy(s string) float64 {
	var counts [256]int
	for i := 0; i < len(s); i++ {
		counts[s[i]]++
	}
	h := 0.0
	for _, c := range counts {
		if c > 0 {
			f := float64(c) / float64(len(s))
			h -= f * math.Log2(f)
		}
	}
	return h
}
