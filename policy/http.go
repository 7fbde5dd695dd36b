package policy

import (
	"net/netip"
	"net/textproto"
	"net/url"
	"path/filepath"
	"strings"
)

// TLS handling of an http target (tls:).
const (
	// TLSIntercept terminates the agent's TLS with a leaf of Interlock's
	// CA and decides every request.
	TLSIntercept = "intercept"
	// TLSPassthrough decides the connection by its TLS server name and
	// relays the bytes undecrypted.
	TLSPassthrough = "passthrough"
)

// HTTPRequest is one HTTP request as a rule sees it.
type HTTPRequest struct {
	// Method is upper case.
	Method string
	// Host is the server name the request is for (TLS server name, Host
	// or :authority), without a port.
	Host string
	// URI is the request target: a path with its query.
	URI string
	// Header holds the request's headers, canonical keys (textproto.MIMEHeader).
	Header map[string][]string
}

// httpMatch is a rule's http: matcher; every field given must match.
type httpMatch struct {
	hosts   []string // lower case; "*.example.com" matches one label
	methods []string // upper case
	// paths are globs ('*' matches any run, '/' included) or, ending in
	// '/' without a wildcard, prefixes.
	paths []string
	query []kv // name: value glob; the parameter must have a matching value
	// headers must be present (canonical names).
	headers []string
	// awsActions are globs one of the request's X-Amz-Target values must
	// match.
	awsActions []string
}

func (m *httpMatch) matches(r *HTTPRequest) bool {
	if len(m.hosts) > 0 && !hostMatchesAny(m.hosts, r.Host) {
		return false
	}
	if len(m.methods) > 0 && !containsString(m.methods, r.Method) {
		return false
	}
	path, rawQuery, _ := strings.Cut(r.URI, "?")
	if len(m.paths) > 0 && !pathMatchesAny(m.paths, path) {
		return false
	}
	if len(m.query) > 0 {
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			return false
		}
		for _, want := range m.query {
			if !anyGlob(want.Value, q[want.Key]) {
				return false
			}
		}
	}
	for _, h := range m.headers {
		if len(r.Header[h]) == 0 {
			return false
		}
	}
	if len(m.awsActions) > 0 && !anyGlobOf(m.awsActions, r.Header["X-Amz-Target"]) {
		return false
	}
	return true
}

// anyGlobOf reports whether one of values matches one of patterns.
func anyGlobOf(patterns, values []string) bool {
	for _, p := range patterns {
		if anyGlob(p, values) {
			return true
		}
	}
	return false
}

func anyGlob(pattern string, values []string) bool {
	for _, v := range values {
		if globMatch(pattern, v) {
			return true
		}
	}
	return false
}

func pathMatchesAny(patterns []string, path string) bool {
	for _, p := range patterns {
		if strings.HasSuffix(p, "/") && !strings.ContainsAny(p, "*?") {
			if strings.HasPrefix(path, p) {
				return true
			}
			continue
		}
		if globMatch(p, path) {
			return true
		}
	}
	return false
}

// hostMatches reports whether name (any case, no port) matches a host
// pattern: an exact name, or "*.example.com" for a name with exactly one
// more label, as a certificate's wildcard would.
func hostMatches(pattern, name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		label, parent, found := strings.Cut(name, ".")
		return found && label != "" && parent == rest
	}
	return name == pattern
}

func hostMatchesAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if hostMatches(p, name) {
			return true
		}
	}
	return false
}

// TargetForName returns the http target an agent asking for server name
// on port is for: the first in file order whose hosts match name and whose
// port is port (or any). Nil when none does.
func (p *Policy) TargetForName(name string, port uint16) *Target {
	for _, t := range p.targets {
		if t.Protocol == "http" && (t.Port == 0 || t.Port == port) && hostMatchesAny(t.Names, name) {
			return t
		}
	}
	return nil
}

// ChoosesByName reports whether a connection to port, whose address gave
// target t (nil for none), is chosen by the server name the agent asks
// for: t is no target or an http one, and some http target with hosts
// takes that port. The session then reads the name (TLS server name, else
// Host) before it knows the target.
func (p *Policy) ChoosesByName(t *Target, port uint16) bool {
	if t != nil && t.Protocol != "http" {
		return false
	}
	for _, n := range p.targets {
		if n.Protocol == "http" && len(n.Names) > 0 && (n.Port == 0 || n.Port == port) {
			return true
		}
	}
	return false
}

// ChosenByName is the target of a connection ChoosesByName says is chosen
// by name, once the agent asked for name (its TLS server name, else a
// plain request's Host; "" for none, which a TLS client sends for an IP
// address): the http target whose hosts match name, or, when it named
// none, byAddr, the target of the address it connected to.
func (p *Policy) ChosenByName(byAddr *Target, name string, port uint16) *Target {
	if name == "" {
		return byAddr
	}
	return p.TargetForName(name, port)
}

// byNameRedirects are the kernel rules that bring every connection an
// http target chosen by name may get to interlockd: its port at every
// address, since which address a name stands for is the agent's
// resolver's to say.
func byNameRedirects(t *Target) []InterceptRule {
	lo, hi := uint16(1), uint16(65535)
	if t.Port != 0 {
		lo, hi = t.Port, t.Port
	}
	return []InterceptRule{
		{Prefix: netip.MustParsePrefix("0.0.0.0/0"), PortMin: lo, PortMax: hi, Action: "redirect"},
		{Prefix: netip.MustParsePrefix("::/0"), PortMin: lo, PortMax: hi, Action: "redirect"},
	}
}

// DecideHTTP decides one HTTP request. A request target that is not a
// path (an absolute URI, '*') is denied by "unparseable".
func (p *Policy) DecideHTTP(s *Subject, t *Target, r HTTPRequest) Decision {
	ids := p.identitySet(s)
	return p.decideHTTP(&ids, s, t, r)
}

func (p *Policy) decideHTTP(ids *bitset, s *Subject, t *Target, r HTTPRequest) Decision {
	if !strings.HasPrefix(r.URI, "/") {
		return Decision{Action: Deny, Rule: "unparseable", Message: "the request target is not a path"}
	}
	r.Method = strings.ToUpper(r.Method)
	for k := range r.Header {
		if textproto.CanonicalMIMEHeaderKey(k) != k {
			// Matched by canonical keys: a copy in that form, made only
			// when needed (the HTTP decoder's keys are canonical, and a
			// copy for each of its requests was a tenth of what deciding
			// one allocated).
			h := make(map[string][]string, len(r.Header))
			for k, v := range r.Header {
				h[textproto.CanonicalMIMEHeaderKey(k)] = v
			}
			r.Header = h
			break
		}
	}
	return p.decide(ids, &Input{Subject: s, Target: t, Protocol: "http", Op: Operation{Kind: OpHTTP, HTTP: &r}})
}

// httpTarget checks the keys of an http target: hosts (names and
// wildcards it is chosen by), tls and upstream_ca.
func (c *compiler) httpTarget(r *rawTarget, t *Target) {
	if r.Protocol != "http" {
		for _, k := range []struct {
			key string
			set bool
		}{{"tls", r.TLS != ""}, {"upstream_ca", r.UpstreamCA != ""}} {
			if k.set {
				c.errorf(r.Keys.at(k.key, r.Pos), "target %q: %s is only for http targets", r.Name, k.key)
			}
		}
		return
	}
	for _, h := range r.Hosts {
		bare := strings.TrimPrefix(h, "*.")
		if !hostRE.MatchString(bare) || strings.Contains(bare, "*") {
			c.errorf(r.Keys.at("hosts", r.Pos), "target %q: hosts entry %q is not a host name or *.domain", r.Name, h)
			continue
		}
		t.Names = append(t.Names, strings.ToLower(strings.TrimSuffix(h, ".")))
	}
	switch r.TLS {
	case "", TLSIntercept, TLSPassthrough:
	default:
		c.errorf(r.Keys.at("tls", r.Pos), "target %q: tls %q: use intercept or passthrough (or leave it out for plain HTTP)", r.Name, r.TLS)
	}
	if r.UpstreamCA != "" {
		switch {
		case r.TLS != TLSIntercept:
			c.errorf(r.Keys.at("upstream_ca", r.Pos), "target %q: upstream_ca is only used with tls: intercept", r.Name)
		case !filepath.IsAbs(r.UpstreamCA):
			c.errorf(r.Keys.at("upstream_ca", r.Pos), "target %q: upstream_ca %q is not an absolute path", r.Name, r.UpstreamCA)
		}
	}
	t.TLS, t.UpstreamCA = r.TLS, r.UpstreamCA
}

// httpMatch compiles a rule's http: matcher.
func (c *compiler) httpMatch(rule string, r *rawHTTPOp) *httpMatch {
	m := &httpMatch{paths: r.Paths, query: r.Query, awsActions: r.AWSActions}
	for _, h := range r.Hosts {
		bare := strings.TrimPrefix(h, "*.")
		if !hostRE.MatchString(bare) {
			c.errorf(r.Keys.at("hosts", r.Pos), "rule %q: http hosts entry %q is not a host name or *.domain", rule, h)
			continue
		}
		m.hosts = append(m.hosts, strings.ToLower(strings.TrimSuffix(h, ".")))
	}
	for _, meth := range r.Methods {
		m.methods = append(m.methods, strings.ToUpper(meth))
	}
	for _, p := range r.Paths {
		if !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "*") {
			c.errorf(r.Keys.at("paths", r.Pos), "rule %q: http path %q must start with / (or *)", rule, p)
		}
	}
	for _, h := range r.Headers {
		m.headers = append(m.headers, textproto.CanonicalMIMEHeaderKey(h))
	}
	return m
}

// notPassthrough refuses an http: matcher on a rule that names a
// passthrough target: its requests are never decrypted, so the matcher
// would never see one.
func (c *compiler) notPassthrough(pos Pos, rule string, targets []string) {
	for _, name := range targets {
		if t := c.p.targetIndex[name]; t != nil && t.TLS == TLSPassthrough {
			c.errorf(pos, "rule %q: target %q is tls: passthrough, whose requests are not decrypted; decide it without http: (at connect)", rule, name)
		}
	}
}
