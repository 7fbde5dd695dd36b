// Package policy is Interlock's policy language: it loads a YAML policy
// file, validates it with file:line:col errors, compiles it once, and then
// decides every request an agent makes (allow, deny, mask, or hold for
// approval) in microseconds. Every decision names the rule that made it; a
// request no rule matches is denied by "default-deny".
//
// The package is pure: it never logs, never touches the kernel or Vault, and
// its only I/O is reading the policy file and resolving target host names
// through a pluggable [Resolver]. The schema is documented in README.md
// beside this file.
//
// A compiled [Policy] is immutable and safe for concurrent use; an [Engine]
// holds the current one and swaps it atomically on reload.
package policy

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/interlock-dev/interlock/policy/mask"
	"github.com/interlock-dev/interlock/policy/sqlclass"
)

// Subject is the caller as the kernel attests it: the tag of the tagged
// cgroup it runs in and the attributes the daemon resolved at accept.
type Subject struct {
	// Tag is the identity tag of the tagged cgroup (or ancestor).
	Tag string
	// Unit is the systemd unit owning the cgroup, if any.
	Unit string
	// UID and GID are the process's credentials at connect.
	UID, GID uint32
	PID      int
	// Comm is the kernel's task name; Exe the resolved executable path.
	Comm, Exe string
	// ExeSHA256 is the hex SHA-256 of the executable, filled only when the
	// policy asks for it (see Policy.NeedsExeHash).
	ExeSHA256 string
	// CgroupPath is the cgroup v2 path relative to the mount.
	CgroupPath string
	// Container is what the container runtime says of the container the
	// cgroup belongs to; nil when the policy does not ask (NeedsContainer),
	// the cgroup is no container's, or the runtime could not say.
	Container *Container
}

// Container is a container as its runtime describes it.
type Container struct {
	// Runtime names the runtime that answered, e.g. "docker".
	Runtime string `json:"runtime"`
	// ID is the runtime's full container id.
	ID string `json:"id"`
	// Image is the image the container was created from, as given
	// (ghcr.io/acme/build:1); ImageID its digest (sha256:...).
	Image   string `json:"image"`
	ImageID string `json:"image_id,omitempty"`
	// Labels are the container's labels, the image's included.
	Labels map[string]string `json:"labels,omitempty"`
}

// ContainerSelector selects subjects by their container: all fields given
// must match. Image and label values are globs; a label named must be set.
type ContainerSelector struct {
	Runtime string
	Image   string
	Labels  map[string]string
}

func (cs *ContainerSelector) matches(c *Container) bool {
	if c == nil {
		return false
	}
	if cs.Runtime != "" && c.Runtime != cs.Runtime {
		return false
	}
	if cs.Image != "" && !globMatch(cs.Image, c.Image) {
		return false
	}
	for k, g := range cs.Labels {
		v, ok := c.Labels[k]
		if !ok || !globMatch(g, v) {
			return false
		}
	}
	return true
}

// Action is what a decision does with a request.
type Action uint8

// Actions. The zero value is Deny so a forgotten field fails closed.
const (
	// Deny refuses the request with a message; the session goes on.
	Deny Action = iota
	// Allow lets the request through unchanged.
	Allow
	// Mask lets the request through and rewrites sensitive result fields.
	Mask
	// Approve holds the request until reviewers decide or the timeout
	// passes; a timeout denies.
	Approve
)

var actionNames = [...]string{"deny", "allow", "mask", "approve"}

// String returns the policy-file name of a.
func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return "unknown"
}

// parseAction maps a policy-file name to an Action.
func parseAction(s string) (Action, bool) {
	for i, n := range actionNames {
		if n == s {
			return Action(i), true
		}
	}
	return 0, false
}

// ApprovalSpec says who must approve a held request and for how long to
// wait. The approvals service enforces it; policy only carries it.
type ApprovalSpec struct {
	// Reviewers are user or group names allowed to decide.
	Reviewers []string
	// Quorum is how many reviewers must approve (at least 1).
	Quorum int
	// Timeout is how long to hold the request; when it passes the request
	// is denied.
	Timeout time.Duration
}

// Decision is the outcome for one request. It is returned by value and
// refers only to data compiled into the policy, so deciding allocates
// nothing.
type Decision struct {
	Action Action
	// Rule names the rule that decided: a rule's name, "default-deny"
	// when none matched, "unparseable" when the SQL did not parse,
	// "empty-query" for an empty query.
	Rule string
	// Message is shown to the agent for Deny (and in audit records).
	Message string
	// Mask is set for Mask decisions.
	Mask *mask.Masker
	// Approval is set for Approve decisions.
	Approval *ApprovalSpec
}

// OpKind says which kind of operation an Input carries.
type OpKind uint8

// Operation kinds.
const (
	// OpConnect is a connection with no decoded request (plain TCP
	// targets, or the decision at connect before any request).
	OpConnect OpKind = iota
	// OpSQL is one SQL statement.
	OpSQL
	// OpHTTP is one HTTP request.
	OpHTTP
	// OpRedis is one Redis command.
	OpRedis
	// OpSSH is one simple command of an SSH exec request, or a shell
	// request.
	OpSSH
)

// Operation is the request being decided.
type Operation struct {
	Kind OpKind
	// SQL is the classified statement for OpSQL.
	SQL *sqlclass.Statement
	// HTTP is the request for OpHTTP.
	HTTP *HTTPRequest
	// Command is the Redis command name.
	Command string
	// SSH is the SSH request for OpSSH ("exec", "shell"); Args are the
	// words of one simple command of an exec request's line.
	SSH  string
	Args []string
}

// Input is one request to decide.
type Input struct {
	Subject *Subject
	// Target is the destination, nil when it is not a known target.
	Target *Target
	// Protocol is the decoded protocol ("postgres", "http", ...); empty
	// means the target's.
	Protocol string
	Op       Operation
}

// CredentialRef tells the credential service how to get the upstream
// credential for a target. Policy does not interpret it beyond Source.
type CredentialRef struct {
	// Source is "vault", "embedded", "static" or another issuer name.
	Source string
	// Role and Path are the common parameters (Vault role, secret path).
	Role, Path string
	// Params holds every key of the credential mapping as written.
	Params map[string]any
}

// Target is a destination the policy knows: where it is, what protocol it
// speaks and where its credentials come from.
type Target struct {
	Name     string
	Protocol string
	// Port is the destination port; 0 matches any port.
	Port uint16
	// Upstream, if set, is the host:port interlockd connects to instead
	// of the original destination.
	Upstream   string
	Credential CredentialRef
	// Inject, for an http target with a credential, is the header the
	// credential is written into (nil for aws keys, which re-sign).
	Inject *Inject
	// Names are the host names agents use (hosts:), lower case. An ssh
	// target's host certificate is issued for them; an http target is
	// chosen by them (see TargetForName), and "*.example.com" matches one
	// label under example.com.
	Names []string
	// KnownHosts is the file the upstream SSH host key is verified
	// against; User, when set, is the SSH login user upstream.
	KnownHosts, User string
	// TLS is an http target's TLS handling: TLSIntercept, TLSPassthrough,
	// or "" for plain HTTP. UpstreamCA, when set, is the PEM file the
	// upstream's certificate is verified against instead of the system
	// roots.
	TLS, UpstreamCA string
	// Hosts are the host names to resolve; static are the literal
	// addresses and prefixes.
	Hosts  []string
	static []netip.Prefix
	// resolved holds the host names' addresses, swapped on refresh.
	resolved atomic.Pointer[[]netip.Prefix]
	index    int
	pos      Pos

	// learned holds the addresses DNS answers gave its host names, per
	// identity (Learn).
	learned learned
}

// Pos is where the target is defined in its policy file.
func (t *Target) Pos() Pos { return t.pos }

// Prefixes returns the target's literal prefixes, its host names'
// addresses as last resolved, and those DNS answers to the identity tagged
// tag gave them (Learn).
func (t *Target) Prefixes(tag string) []netip.Prefix {
	out := append([]netip.Prefix(nil), t.static...)
	if r := t.resolved.Load(); r != nil {
		out = append(out, *r...)
	}
	for _, a := range t.learnedAddrs(tag) {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

func (t *Target) contains(tag string, a netip.Addr) bool {
	for _, p := range t.static {
		if p.Contains(a) {
			return true
		}
	}
	if r := t.resolved.Load(); r != nil {
		for _, p := range *r {
			if p.Contains(a) {
				return true
			}
		}
	}
	return t.hasLearned(tag, a)
}

// InterceptRule is a kernel-enforced network rule for a tagged cgroup:
// connections to Prefix within [PortMin, PortMax] get Action, one of
// "redirect" (through interlockd), "deny" (EPERM at connect) or "pass"
// (direct, not inspected).
type InterceptRule struct {
	Prefix netip.Prefix
	// Host, on an identity's intercept entry by name (Prefix invalid), is
	// the host name or *.domain pattern; Intercept gives one rule per
	// address relayed answers gave it (Learn).
	Host             string
	PortMin, PortMax uint16
	Action           string
	// Reason is set on the deny rules Intercept derives from the policy's
	// rules (RefuseNoRule, RefuseUnknownIdentity), so a kernel refusal can
	// be told from one an intercept entry wrote (Reason empty).
	Reason string
}

// Why a deny rule Intercept derived refuses a connect.
const (
	// RefuseNoRule: no rule could allow any request of the identity to
	// the destination; interlockd would refuse it by default-deny.
	RefuseNoRule = "no-rule-allows"
	// RefuseUnknownIdentity: no identity of the policy can match the tag,
	// and no rule for every identity allows the destination.
	RefuseUnknownIdentity = "unknown-identity"
)

// Identity is a named set of selectors over a Subject. All selectors given
// must match (lists match any of their values).
type Identity struct {
	Name       string
	Tag        string
	Units      []string
	UIDs, GIDs []uint32
	Exes       []string // globs
	ExeSHA256  []string
	Comms      []string
	// Container, when set, admits only tasks of a container its runtime
	// describes so; a task the runtime says nothing of does not match.
	Container *ContainerSelector
	intercept []InterceptRule
	udpAllow  []InterceptRule
	listen    []InterceptRule
	allowUnix []string // nil: no allow-list
	dns       *dnsPolicy
	index     int
	pos       Pos
}

func (id *Identity) matches(s *Subject) bool {
	if id.Tag != "" && s.Tag != id.Tag {
		return false
	}
	if len(id.Units) > 0 && !containsString(id.Units, s.Unit) {
		return false
	}
	if len(id.UIDs) > 0 && !containsU32(id.UIDs, s.UID) {
		return false
	}
	if len(id.GIDs) > 0 && !containsU32(id.GIDs, s.GID) {
		return false
	}
	if len(id.Comms) > 0 && !containsString(id.Comms, s.Comm) {
		return false
	}
	if len(id.Exes) > 0 {
		ok := false
		for _, g := range id.Exes {
			if globMatch(g, s.Exe) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(id.ExeSHA256) > 0 && (s.ExeSHA256 == "" || !containsString(id.ExeSHA256, s.ExeSHA256)) {
		return false
	}
	if id.Container != nil && !id.Container.matches(s.Container) {
		return false
	}
	return true
}

func containsString(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func containsU32(l []uint32, v uint32) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

// maxNamed bounds identities and targets so their sets fit a fixed bitset
// and deciding needs no allocation.
const maxNamed = 256

type bitset [maxNamed / 64]uint64

func (b *bitset) set(i int)      { b[i/64] |= 1 << (i % 64) }
func (b *bitset) has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }
func (b *bitset) intersects(o *bitset) bool {
	for i := range b {
		if b[i]&o[i] != 0 {
			return true
		}
	}
	return false
}

// globMatch matches s against a pattern where '*' matches any run of bytes
// (including '/') and '?' one byte. It does not allocate.
func globMatch(pattern, s string) bool {
	px, sx := 0, 0
	nextPx, nextSx := -1, -1
	for px < len(pattern) || sx < len(s) {
		if px < len(pattern) {
			switch c := pattern[px]; c {
			case '*':
				nextPx, nextSx = px, sx+1
				px++
				continue
			case '?':
				if sx < len(s) {
					px++
					sx++
					continue
				}
			default:
				if sx < len(s) && s[sx] == c {
					px++
					sx++
					continue
				}
			}
		}
		if nextSx > 0 && nextSx <= len(s) {
			px, sx = nextPx, nextSx
			continue
		}
		return false
	}
	return true
}
