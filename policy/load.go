package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/interlock-dev/interlock/policy/mask"
	"github.com/interlock-dev/interlock/policy/sqlclass"
	"github.com/interlock-dev/interlock/policy/sshcmd"
)

// rawPolicy mirrors the file; README.md documents every key.
type rawPolicy struct {
	Version       int           `yaml:"version"`
	Mode          string        `yaml:"mode"`
	Identities    []rawIdentity `yaml:"identities"`
	Targets       []rawTarget   `yaml:"targets"`
	Masks         []rawMask     `yaml:"masks"`
	Rules         []rawRule     `yaml:"rules"`
	DenyUnixPaths []string      `yaml:"deny_unix_paths"`
	SQL           rawSQL        `yaml:"sql"`
	Tests         []rawTest     `yaml:"tests"`
	Pos           Pos
	Keys          keyPos
}

type rawSQL struct {
	ReadOnlyFunctions []string `yaml:"readonly_functions"`
	Pos               Pos
}

type rawContainer struct {
	Runtime string            `yaml:"runtime"`
	Image   string            `yaml:"image"`
	Labels  map[string]string `yaml:"labels"`
	Pos     Pos
	Keys    keyPos
}

type rawIdentity struct {
	Name      string   `yaml:"name"`
	Tag       string   `yaml:"tag"`
	Unit      []string `yaml:"unit"`
	UID       []uint32 `yaml:"uid"`
	GID       []uint32 `yaml:"gid"`
	Exe       []string `yaml:"exe"`
	ExeSHA256 []string `yaml:"exe_sha256"`
	Comm      []string `yaml:"comm"`
	// Container narrows the identity to tasks of matching containers.
	Container *rawContainer `yaml:"container"`
	Mode      string        `yaml:"mode"`
	Intercept []rawNetRule  `yaml:"intercept"`
	UDPAllow  []rawNetRule  `yaml:"udp_allow"`
	Listen    []rawListen   `yaml:"listen"`
	// AllowUnixPaths, when given (even empty), is the only unix sockets
	// the identity's tasks may reach.
	AllowUnixPaths []string `yaml:"allow_unix_paths"`
	// DNS decides the identity's look-ups (dns.go).
	DNS  *rawDNS `yaml:"dns"`
	Pos  Pos
	Keys keyPos
}

// rawListen is one entry of an identity's listen: where its tasks may bind
// besides loopback.
type rawListen struct {
	Addresses []string `yaml:"addresses"`
	Ports     string   `yaml:"ports"`
	Pos       Pos
	Keys      keyPos
}

type rawNetRule struct {
	To     []string `yaml:"to"`
	Ports  string   `yaml:"ports"`
	Action string   `yaml:"action"`
	Pos    Pos
	Keys   keyPos
}

type rawTarget struct {
	Name       string         `yaml:"name"`
	Protocol   string         `yaml:"protocol"`
	Addresses  []string       `yaml:"addresses"`
	Port       uint16         `yaml:"port"`
	Upstream   string         `yaml:"upstream"`
	Credential map[string]any `yaml:"credential"`
	Mode       string         `yaml:"mode"`
	Hosts      []string       `yaml:"hosts"`
	KnownHosts string         `yaml:"known_hosts"`
	User       string         `yaml:"user"`
	TLS        string         `yaml:"tls"`
	UpstreamCA string         `yaml:"upstream_ca"`
	Pos        Pos
	Keys       keyPos
}

type rawMask struct {
	Name      string     `yaml:"name"`
	Columns   orderedMap `yaml:"columns"`
	Detectors orderedMap `yaml:"detectors"`
	HashKey   string     `yaml:"hash_key"`
	Pos       Pos
	Keys      keyPos
}

type rawRule struct {
	Name     string      `yaml:"name"`
	Identity []string    `yaml:"identity"`
	Target   []string    `yaml:"target"`
	Protocol []string    `yaml:"protocol"`
	SQL      *rawSQLOp   `yaml:"sql"`
	HTTP     *rawHTTPOp  `yaml:"http"`
	Redis    *rawCmdOp   `yaml:"redis"`
	SSH      *rawSSHOp   `yaml:"ssh"`
	Action   string      `yaml:"action"`
	Message  string      `yaml:"message"`
	Mask     string      `yaml:"mask"`
	Approve  *rawApprove `yaml:"approve"`
	Pos      Pos
	Keys     keyPos
}

type rawSQLOp struct {
	Class       []string `yaml:"class"`
	Command     []string `yaml:"command"`
	Tables      []string `yaml:"tables"`
	OnlyTables  []string `yaml:"only_tables"`
	Functions   []string `yaml:"functions"`
	Destructive *bool    `yaml:"destructive"`
	Lock        *bool    `yaml:"lock"`
	Unknowable  *bool    `yaml:"unknowable"`
	Multi       *bool    `yaml:"multi"`
	Pos         Pos
	Keys        keyPos
}

type rawHTTPOp struct {
	Hosts   []string   `yaml:"hosts"`
	Methods []string   `yaml:"methods"`
	Paths   []string   `yaml:"paths"`
	Query   orderedMap `yaml:"query"`
	Headers []string   `yaml:"headers"`
	// AWSActions are globs of the AWS action a request names in
	// X-Amz-Target ("DynamoDB_20120810.GetItem", "*.Describe*").
	AWSActions []string `yaml:"aws_actions"`
	Pos        Pos
	Keys       keyPos
}

type rawCmdOp struct {
	Command []string `yaml:"command"`
	Pos     Pos
}

type rawSSHOp struct {
	Exec     []string   `yaml:"exec"`
	Shell    bool       `yaml:"shell"`
	SFTP     *rawSFTPOp `yaml:"sftp"`
	GitFetch []string   `yaml:"git_fetch"`
	GitPush  []string   `yaml:"git_push"`
	Pos      Pos
	Keys     keyPos
}

type rawSFTPOp struct {
	Read  []string `yaml:"read"`
	Write []string `yaml:"write"`
	Pos   Pos
	Keys  keyPos
}

type rawApprove struct {
	Reviewers []string      `yaml:"reviewers"`
	Quorum    int           `yaml:"quorum"`
	Timeout   time.Duration `yaml:"timeout"`
	Pos       Pos
	Keys      keyPos
}

type rawTest struct {
	Name     string         `yaml:"name"`
	Identity string         `yaml:"identity"`
	Subject  *rawSubject    `yaml:"subject"`
	Target   string         `yaml:"target"`
	SQL      string         `yaml:"sql"`
	HTTP     *rawHTTPTest   `yaml:"http"`
	Redis    string         `yaml:"redis"`
	SSH      string         `yaml:"ssh"`
	Expect   rawExpectation `yaml:"expect"`
	Pos      Pos
	Keys     keyPos
}

type rawSubject struct {
	Tag       string `yaml:"tag"`
	Unit      string `yaml:"unit"`
	UID       uint32 `yaml:"uid"`
	GID       uint32 `yaml:"gid"`
	Exe       string `yaml:"exe"`
	ExeSHA256 string `yaml:"exe_sha256"`
	Comm      string `yaml:"comm"`
	Pos       Pos
}

type rawHTTPTest struct {
	Method  string              `yaml:"method"`
	Host    string              `yaml:"host"`
	Path    string              `yaml:"path"`
	Headers map[string][]string `yaml:"headers"`
	Pos     Pos
}

type rawExpectation struct {
	Action string `yaml:"action"`
	Rule   string `yaml:"rule"`
	Pos    Pos
}

//go:embed default.yaml
var defaultPolicy []byte

// DefaultName is the name errors, decisions and explain give the embedded
// default policy.
const DefaultName = "<default policy>"

// Default returns the embedded default policy (README.md describes it),
// loaded like any other. It panics only if the embedded file does not load,
// which a test prevents.
func Default() *Policy {
	p, err := Load(context.Background(), Source{}, Options{})
	if err != nil {
		panic(fmt.Sprintf("policy: embedded default policy is invalid: %v", err))
	}
	return p
}

// DefaultSource returns the embedded default policy's YAML text.
func DefaultSource() []byte { return bytes.Clone(defaultPolicy) }

// Source says which policy Load loads. The zero Source is the embedded
// default policy.
type Source struct {
	// Path is a policy file. Test cases in a sibling file named like it
	// with "_test" before the extension (ci.yaml -> ci_test.yaml) are
	// loaded with it.
	Path string
	// Name and Text, when Path is empty and Text is not nil, are a policy
	// that is not read from a file: the text a running interlockd loaded,
	// which `interlock policy explain` asks it for. Name is what positions
	// and Policy.Name report.
	Name string
	Text []byte
}

// Resolver looks up a host name's addresses; *net.Resolver satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// ResolveTimeout bounds one pass over a policy's target host names, at load
// and on every Policy.ResolveTargets.
const ResolveTimeout = 10 * time.Second

// Options tune Load.
type Options struct {
	// Resolver resolves target host names, at load and on every later
	// Policy.ResolveTargets; nil uses net.DefaultResolver.
	Resolver Resolver
}

// Load is the one way a policy is loaded for use: interlockd at start and
// on reload, and every `interlock policy` command, load with it, so a policy
// one accepts the others accept too. It
//
//  1. reads the policy (src);
//  2. compiles it, refusing every mistake with its file:line:col, and
//     refusing targets and rules for a protocol this build has no decoder
//     for (their rules would never fire);
//  3. runs the test cases it ships: one that fails refuses the policy, since
//     a policy that contradicts its own tests is not what its author meant;
//  4. resolves its targets' host names once, with opts.Resolver, within
//     ResolveTimeout.
//
// Errors are an ErrorList of "file:line:col: what is wrong" (a failing test
// at the test), except for a file that cannot be read.
//
// A host name that does not resolve is not an error, at start and at reload
// alike: the policy loads, Warnings names the target and the host, and the
// target matches no address of that host until a later ResolveTargets
// resolves it (interlockd calls it every minute). This fails closed: a
// connection to such an address has no target, so no rule naming the
// target applies, and default-deny refuses it unless a rule without
// targets allows it.
//
// The policy carries its name, its text and that text's SHA-256, so what a
// daemon enforces can be shown and identified exactly.
func Load(ctx context.Context, src Source, opts Options) (*Policy, error) {
	name, text := src.Name, src.Text
	var testsName string
	var tests []byte
	switch {
	case src.Path != "":
		var err error
		if text, err = os.ReadFile(src.Path); err != nil {
			return nil, fmt.Errorf("read policy: %w", err)
		}
		name = src.Path
		ext := filepath.Ext(src.Path)
		testsName = strings.TrimSuffix(src.Path, ext) + "_test" + ext
		if tests, err = os.ReadFile(testsName); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read policy tests: %w", err)
		}
	case src.Text == nil:
		name, text = DefaultName, defaultPolicy
	}
	p, errs := compile(name, text, decoded)
	if errs != nil {
		return nil, errs
	}
	if tests != nil {
		if err := p.addTests(testsName, tests); err != nil {
			return nil, err
		}
	}
	var failed ErrorList
	for _, r := range p.RunTests() {
		if !r.Pass {
			failed = append(failed, &Error{Pos: r.Test.Pos, Msg: fmt.Sprintf("test %q: %s", r.Test.Name, r.mismatch())})
		}
	}
	if failed != nil {
		return nil, failed
	}
	p.text = bytes.Clone(text)
	sum := sha256.Sum256(text)
	p.sha256 = hex.EncodeToString(sum[:])
	if opts.Resolver != nil {
		p.resolver = opts.Resolver
	}
	for _, err := range p.ResolveTargets(ctx) {
		p.warnings = append(p.warnings, err.Error()+" (the target matches no address of this host until it resolves)")
	}
	return p, nil
}

// compile decodes and compiles policy text; name is used in error
// positions. Targets and rules for a protocol not in decoders are errors;
// Load passes the protocols this build decodes, and only the package's own
// tests of the language pass every protocol it knows.
func compile(name string, data []byte, decoders []string) (*Policy, ErrorList) {
	raw, errs := decodeFile[rawPolicy](name, data)
	if errs != nil {
		return nil, errs
	}
	c := &compiler{file: name, decoders: decoders, p: &Policy{
		name:          name,
		identityIndex: map[string]*Identity{},
		targetIndex:   map[string]*Target{},
		masks:         map[string]*mask.Masker{},
		readOnlyFuncs: map[string]bool{},
		resolver:      net.DefaultResolver,

		interceptHosts: map[string]*learned{},
	}}
	c.compile(raw)
	if len(c.errs) > 0 {
		sort.SliceStable(c.errs, func(i, j int) bool {
			if c.errs[i].Pos.Line != c.errs[j].Pos.Line {
				return c.errs[i].Pos.Line < c.errs[j].Pos.Line
			}
			return c.errs[i].Pos.Col < c.errs[j].Pos.Col
		})
		return nil, c.errs
	}
	return c.p, nil
}

// decodeFile parses YAML text into T with positioned, strict decoding.
func decodeFile[T any](name string, data []byte) (*T, ErrorList) {
	out := new(T)
	if errs := decodeInto(name, data, reflect.ValueOf(out).Elem()); errs != nil {
		return nil, errs
	}
	return out, nil
}

// Decode fills v, a pointer to a struct with yaml tags, from YAML text with
// the policy loader's strictness and messages: a syntax error, an unknown
// key (with "did you mean"), a wrong type or a key given twice is an
// ErrorList of "name:line:col: what is wrong". Keys the text does not name
// keep v's values, so v may hold defaults. interlockd.yaml is read with it,
// so every file Interlock reads reports its errors alike.
func Decode(name string, data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("decode %s: need a non-nil pointer, got %T", name, v)
	}
	if errs := decodeInto(name, data, rv.Elem()); errs != nil {
		return errs
	}
	return nil
}

func decodeInto(name string, data []byte, v reflect.Value) ErrorList {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return ErrorList{yamlSyntaxError(name, data, err)}
	}
	if doc.Kind == 0 {
		return nil // empty file
	}
	d := &decoder{file: name}
	d.decode(&doc, v)
	if len(d.errs) > 0 {
		return d.errs
	}
	return nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlSyntaxError turns yaml.v3's "yaml: line N: msg" into a positioned
// error. yaml.v3 gives the line where the enclosing block began (its
// context mark), not the line that broke it: a key indented one space too
// little under a mapping is reported at the mapping's first key, lines
// early. The line that broke the document is the first one at or after
// that whose prefix of the file fails with the same problem; a prefix cut
// inside a quoted or flow scalar fails with another problem and is passed
// over. Prefixes from the broken line on fail alike and shorter ones do
// not, so a binary search finds it in a few parses (a linear scan of a
// 2 000-line policy took seconds). The column is that line's first
// character (yaml.v3 reports none).
func yamlSyntaxError(name string, data []byte, err error) *Error {
	m := yamlLine.FindStringSubmatch(err.Error())
	if m == nil {
		return &Error{Pos: Pos{File: name, Line: 1, Col: 1}, Msg: strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	line, _ := strconv.Atoi(m[1])
	lines := strings.SplitAfter(string(data), "\n")
	breaks := func(k int) bool {
		var n yaml.Node
		perr := yaml.Unmarshal([]byte(strings.Join(lines[:k], "")), &n)
		pm := yamlLine.FindStringSubmatch(fmt.Sprint(perr))
		return pm != nil && pm[2] == m[2]
	}
	lo := max(line, 1)
	if lo <= len(lines) {
		line = lo + sort.Search(len(lines)-lo+1, func(i int) bool { return breaks(lo + i) })
		if line > len(lines) {
			line, _ = strconv.Atoi(m[1])
		}
	}
	col := 1
	if line-1 < len(lines) {
		text := lines[line-1]
		col += len(text) - len(strings.TrimLeft(text, " \t"))
	}
	return &Error{Pos: Pos{File: name, Line: line, Col: col}, Msg: "invalid YAML: " + m[2]}
}

type compiler struct {
	file string
	p    *Policy
	errs ErrorList
	// decoders are the protocols requests are decoded for (see decoded).
	decoders []string
}

func (c *compiler) errorf(pos Pos, format string, args ...any) {
	c.errs = append(c.errs, &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)})
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// protocols are the protocols the language knows: a target may name them
// and rules have matchers for their requests.
var protocols = []string{"postgres", "mysql", "http", "redis", "ssh", "tcp"}

// decoded lists the protocols this build can enforce: http (decoders/http
// decides each request and HTTP/2 stream), postgres (decoders/postgres
// decides each statement), ssh (decoders/ssh decides each exec and shell
// request) and tcp (a plain relay decided at connect). Knowing the others keeps their rules parsing, so the error is
// specific; Load refuses a target or rule that needs one of them until its
// decoder exists and is added here.
var decoded = []string{"http", "postgres", "ssh", "tcp"}

// Decoded returns the protocols this build can enforce. The session
// pipeline's tests hold its decoders to this list.
func Decoded() []string { return slices.Clone(decoded) }

func (c *compiler) compile(raw *rawPolicy) {
	if raw.Version != 0 && raw.Version != 1 {
		c.errorf(raw.Keys.at("version", raw.Pos), "version %d is not supported (use 1)", raw.Version)
	}
	c.p.denyUnix = raw.DenyUnixPaths
	for _, u := range raw.DenyUnixPaths {
		c.unixPath(raw.Keys.at("deny_unix_paths", raw.Pos), "deny_unix_paths", u)
	}
	for _, f := range raw.SQL.ReadOnlyFunctions {
		c.p.readOnlyFuncs[strings.ToLower(f)] = true
	}
	for i := range raw.Identities {
		c.identity(&raw.Identities[i])
	}
	if len(c.p.identities) > maxNamed {
		c.errorf(raw.Pos, "%d identities: at most %d are supported", len(c.p.identities), maxNamed)
	}
	for i := range raw.Targets {
		c.target(&raw.Targets[i])
	}
	if len(c.p.targets) > maxNamed {
		c.errorf(raw.Pos, "%d targets: at most %d are supported", len(c.p.targets), maxNamed)
	}
	c.compileModes(raw)
	for i := range raw.Masks {
		c.mask(&raw.Masks[i])
	}
	names := map[string]Pos{}
	for i := range raw.Rules {
		r := &raw.Rules[i]
		if prev, dup := names[r.Name]; dup && r.Name != "" {
			c.errorf(r.Pos, "rule name %q already used at %s", r.Name, prev)
		}
		names[r.Name] = r.Pos
		c.rule(r)
	}
	c.p.finishDNS()
	for i := range raw.Tests {
		c.test(&raw.Tests[i])
	}
}

func (c *compiler) checkName(pos Pos, what, name string) {
	switch {
	case name == "":
		c.errorf(pos, "%s needs a name", what)
	case !nameRE.MatchString(name):
		c.errorf(pos, "%s name %q: use letters, digits, '.', '_' and '-'", what, name)
	}
}

func (c *compiler) identity(r *rawIdentity) {
	c.checkName(r.Pos, "identity", r.Name)
	if _, dup := c.p.identityIndex[r.Name]; dup {
		c.errorf(r.Pos, "identity %q defined twice", r.Name)
		return
	}
	id := &Identity{Name: r.Name, Tag: r.Tag, Units: r.Unit, UIDs: r.UID, GIDs: r.GID,
		Exes: r.Exe, Comms: r.Comm, index: len(c.p.identities), pos: r.Pos}
	if id.Tag == "" && len(r.Unit)+len(r.UID)+len(r.GID)+len(r.Exe)+len(r.ExeSHA256)+len(r.Comm) == 0 {
		id.Tag = r.Name // no selector at all: the cgroup tag of the same name
	}
	for _, e := range r.Exe {
		if !strings.HasPrefix(e, "/") {
			c.errorf(r.Keys.at("exe", r.Pos), "identity %q: exe %q must be an absolute path or glob", r.Name, e)
		}
	}
	for _, h := range r.ExeSHA256 {
		h = strings.ToLower(h)
		if len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
			c.errorf(r.Keys.at("exe_sha256", r.Pos), "identity %q: exe_sha256 %q is not 64 hex digits", r.Name, h)
		}
		id.ExeSHA256 = append(id.ExeSHA256, h)
	}
	if len(id.ExeSHA256) > 0 {
		c.p.needsHash = true
	}
	if rc := r.Container; rc != nil {
		switch rc.Runtime {
		case "", "docker":
		default:
			c.errorf(rc.Keys.at("runtime", rc.Pos), "identity %q: container runtime %q: this build asks docker only", r.Name, rc.Runtime)
		}
		if rc.Runtime == "" && rc.Image == "" && len(rc.Labels) == 0 {
			c.errorf(rc.Pos, "identity %q: container selects nothing: give runtime, image or labels", r.Name)
		}
		id.Container = &ContainerSelector{Runtime: rc.Runtime, Image: rc.Image, Labels: rc.Labels}
		c.p.needsContainer = true
	}
	id.intercept = c.netRules(r.Name, r.Intercept, true)
	id.udpAllow = c.netRules(r.Name, r.UDPAllow, false)
	id.listen = c.listenRules(r.Name, r.Listen)
	id.dns = c.dnsPolicy(r.Name, r.DNS)
	if _, set := r.Keys["allow_unix_paths"]; set {
		id.allowUnix = append([]string{}, r.AllowUnixPaths...)
		for _, u := range r.AllowUnixPaths {
			c.unixPath(r.Keys.at("allow_unix_paths", r.Pos), fmt.Sprintf("identity %q: allow_unix_paths", r.Name), u)
		}
	}
	c.p.identities = append(c.p.identities, id)
	c.p.identityIndex[id.Name] = id
}

func (c *compiler) netRules(identity string, raw []rawNetRule, tcp bool) []InterceptRule {
	var out []InterceptRule
	for _, r := range raw {
		action := r.Action
		if action == "" {
			action = "redirect"
			if !tcp {
				action = "pass"
			}
		}
		if tcp && action != "redirect" && action != "deny" && action != "pass" {
			c.errorf(r.Keys.at("action", r.Pos), "identity %q: intercept action %q: use redirect, deny or pass", identity, action)
		}
		if !tcp && action != "pass" {
			c.errorf(r.Keys.at("action", r.Pos), "identity %q: udp_allow entries only pass; drop the action", identity)
		}
		lo, hi, err := parsePorts(r.Ports)
		if err != nil {
			c.errorf(r.Keys.at("ports", r.Pos), "identity %q: ports %q: %v", identity, r.Ports, err)
		} else if lo == 53 && hi == 53 {
			// The kernel sends DNS to interlockd before it reads the rules.
			c.errorf(r.Keys.at("ports", r.Pos), "identity %q: port 53 is DNS, which always goes through interlockd: decide it with dns:", identity)
		}
		if len(r.To) == 0 {
			c.errorf(r.Pos, "identity %q: network rule needs to: (a CIDR or address)", identity)
		}
		for _, to := range r.To {
			p, err := parsePrefix(to)
			if err != nil && tcp && isHostPattern(to) {
				// A host name: the addresses relayed answers give it (dns.go).
				out = append(out, InterceptRule{Host: hostPattern(to), PortMin: lo, PortMax: hi, Action: action})
				c.p.interceptHosts[hostPattern(to)] = &learned{}
				continue
			}
			if err != nil {
				c.errorf(r.Keys.at("to", r.Pos), "identity %q: to %q: %v (udp_allow needs literal addresses; intercept takes host names too)", identity, to, err)
				continue
			}
			out = append(out, InterceptRule{Prefix: p, PortMin: lo, PortMax: hi, Action: action})
		}
	}
	return out
}

// maxUnixPath is the longest unix socket path the kernel side compares
// (sun_path less its terminating NUL).
const maxUnixPath = 107

// unixPath checks one unix socket path of a policy: absolute or @abstract,
// short enough, and in the form the kernel compares (no repeated slashes,
// no "." or ".." segments), since any other spelling would never match.
func (c *compiler) unixPath(pos Pos, what, u string) {
	switch {
	case strings.HasPrefix(u, "@"):
		if len(u) < 2 || len(u) > maxUnixPath {
			c.errorf(pos, "%s: abstract name %q is empty or longer than %d bytes", what, u, maxUnixPath-1)
		}
	case !strings.HasPrefix(u, "/"):
		c.errorf(pos, "%s: %q is not an absolute path or @abstract name", what, u)
	case len(u) > maxUnixPath:
		c.errorf(pos, "%s: %q is longer than %d bytes", what, u, maxUnixPath)
	case path.Clean(u) != u:
		c.errorf(pos, "%s: %q would never match; write it as %q", what, u, path.Clean(u))
	}
}

// listenRules compiles an identity's listen entries: literal addresses or
// CIDRs (0.0.0.0 and :: are the wildcards, each its own family) and ports
// (default all).
func (c *compiler) listenRules(identity string, raw []rawListen) []InterceptRule {
	var out []InterceptRule
	for _, r := range raw {
		lo, hi, err := parsePorts(r.Ports)
		if err != nil {
			c.errorf(r.Keys.at("ports", r.Pos), "identity %q: listen ports %q: %v", identity, r.Ports, err)
		}
		if len(r.Addresses) == 0 {
			c.errorf(r.Pos, "identity %q: listen entry needs addresses: (0.0.0.0, ::, an address or CIDR)", identity)
		}
		for _, a := range r.Addresses {
			p, err := parsePrefix(a)
			if err != nil {
				c.errorf(r.Keys.at("addresses", r.Pos), "identity %q: listen address %q: %v", identity, a, err)
				continue
			}
			out = append(out, InterceptRule{Prefix: p, PortMin: lo, PortMax: hi, Action: "pass"})
		}
	}
	return out
}

func parsePorts(s string) (uint16, uint16, error) {
	if s == "" || s == "*" {
		return 1, 65535, nil
	}
	lo, hi, found := strings.Cut(s, "-")
	a, err := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	if err != nil || a == 0 {
		return 0, 0, fmt.Errorf("not a port or range like 5432 or 8000-8099")
	}
	b := a
	if found {
		if b, err = strconv.ParseUint(strings.TrimSpace(hi), 10, 16); err != nil || b < a {
			return 0, 0, fmt.Errorf("not a port range like 8000-8099")
		}
	}
	return uint16(a), uint16(b), nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("not a CIDR")
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("not an IP address")
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

var hostRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$`)

func (c *compiler) target(r *rawTarget) {
	c.checkName(r.Pos, "target", r.Name)
	if _, dup := c.p.targetIndex[r.Name]; dup {
		c.errorf(r.Pos, "target %q defined twice", r.Name)
		return
	}
	switch {
	case !containsString(protocols, r.Protocol):
		c.errorf(r.Keys.at("protocol", r.Pos), "target %q: protocol %q: use one of %s", r.Name, r.Protocol, strings.Join(protocols, ", "))
	case !containsString(c.decoders, r.Protocol):
		c.errorf(r.Keys.at("protocol", r.Pos), "target %q: protocol %q is not supported yet by this interlockd (supported: %s)",
			r.Name, r.Protocol, strings.Join(c.decoders, ", "))
	}
	t := &Target{Name: r.Name, Protocol: r.Protocol, Port: r.Port, Upstream: r.Upstream, index: len(c.p.targets), pos: r.Pos}
	if len(r.Addresses) == 0 && (r.Protocol != "http" || len(r.Hosts) == 0) {
		c.errorf(r.Pos, "target %q needs addresses (IPs, CIDRs or host names)", r.Name)
	}
	for _, a := range r.Addresses {
		if p, err := parsePrefix(a); err == nil {
			t.static = append(t.static, p)
			continue
		}
		if strings.Contains(a, "/") || !hostRE.MatchString(a) {
			c.errorf(r.Keys.at("addresses", r.Pos), "target %q: address %q is not an IP, a CIDR or a host name", r.Name, a)
			continue
		}
		t.Hosts = append(t.Hosts, strings.TrimSuffix(a, "."))
	}
	if r.Upstream != "" {
		if _, _, err := net.SplitHostPort(r.Upstream); err != nil {
			c.errorf(r.Keys.at("upstream", r.Pos), "target %q: upstream %q is not host:port", r.Name, r.Upstream)
		}
	}
	c.sshTarget(r, t)
	c.httpTarget(r, t)
	c.httpCredential(r, t)
	if r.Credential != nil {
		t.Credential.Params = r.Credential
		t.Credential.Source, _ = r.Credential["source"].(string)
		t.Credential.Role, _ = r.Credential["role"].(string)
		t.Credential.Path, _ = r.Credential["path"].(string)
		if t.Credential.Source == "" {
			c.errorf(r.Keys.at("credential", r.Pos), "target %q: credential needs a source (vault, embedded, static ...)", r.Name)
		}
	}
	c.p.targets = append(c.p.targets, t)
	c.p.targetIndex[t.Name] = t
}

// sshTarget checks the keys only SSH targets have: hosts (the names agents
// use, which interlockd's host certificate names), known_hosts (required:
// the upstream host key is always verified) and user.
func (c *compiler) sshTarget(r *rawTarget, t *Target) {
	if r.Protocol != "ssh" {
		for _, k := range []struct {
			key, only string
			set       bool
		}{{"hosts", "ssh and http", r.Hosts != nil && r.Protocol != "http"}, {"known_hosts", "ssh", r.KnownHosts != ""}, {"user", "ssh", r.User != ""}} {
			if k.set {
				c.errorf(r.Keys.at(k.key, r.Pos), "target %q: %s is only for %s targets", r.Name, k.key, k.only)
			}
		}
		return
	}
	for _, h := range r.Hosts {
		if !hostRE.MatchString(h) {
			c.errorf(r.Keys.at("hosts", r.Pos), "target %q: hosts entry %q is not a host name", r.Name, h)
			continue
		}
		t.Names = append(t.Names, strings.ToLower(strings.TrimSuffix(h, ".")))
	}
	switch {
	case r.KnownHosts == "":
		c.errorf(r.Pos, "target %q: an ssh target needs known_hosts: (a file with the server's host key)", r.Name)
	case !filepath.IsAbs(r.KnownHosts):
		c.errorf(r.Keys.at("known_hosts", r.Pos), "target %q: known_hosts %q is not an absolute path", r.Name, r.KnownHosts)
	}
	t.KnownHosts, t.User = r.KnownHosts, r.User
}

func (c *compiler) mask(r *rawMask) {
	c.checkName(r.Pos, "mask", r.Name)
	if _, dup := c.p.masks[r.Name]; dup {
		c.errorf(r.Pos, "mask %q defined twice", r.Name)
		return
	}
	var cols []mask.ColumnRule
	for _, e := range r.Columns {
		m, ok := mask.ParseMethod(e.Value)
		if !ok {
			c.errorf(e.Pos, "mask %q: column %q: method %q: use redact, partial or hash", r.Name, e.Key, e.Value)
			continue
		}
		if _, err := path.Match(strings.ToLower(e.Key), ""); err != nil {
			c.errorf(e.Pos, "mask %q: column pattern %q is not a valid glob", r.Name, e.Key)
			continue
		}
		cols = append(cols, mask.ColumnRule{Pattern: e.Key, Method: m})
	}
	var dets []mask.DetectorRule
	for _, e := range r.Detectors {
		m, ok := mask.ParseMethod(e.Value)
		if !ok {
			c.errorf(e.Pos, "mask %q: detector %q: method %q: use redact, partial or hash", r.Name, e.Key, e.Value)
			continue
		}
		if !containsString(mask.DetectorNames(), e.Key) {
			c.errorf(e.Pos, "mask %q: unknown detector %q%s", r.Name, e.Key, suggest(e.Key, mask.DetectorNames()))
			continue
		}
		dets = append(dets, mask.DetectorRule{Detector: e.Key, Method: m})
	}
	if len(r.Columns)+len(r.Detectors) == 0 {
		c.errorf(r.Pos, "mask %q masks nothing: give columns or detectors", r.Name)
	}
	m, err := mask.New(r.Name, cols, dets, []byte(r.HashKey))
	if err != nil {
		c.errorf(r.Pos, "mask %q: %v", r.Name, err)
		return
	}
	c.p.masks[r.Name] = m
}

// refs resolves names against known ones, reporting each unknown name.
func refs[T any](c *compiler, pos Pos, rule, what string, names []string, known map[string]T) []T {
	var out []T
	for _, n := range names {
		v, ok := known[n]
		if !ok {
			var k []string
			for name := range known {
				k = append(k, name)
			}
			c.errorf(pos, "rule %q: unknown %s %q%s", rule, what, n, suggest(n, k))
			continue
		}
		out = append(out, v)
	}
	return out
}

func (c *compiler) rule(r *rawRule) {
	c.checkName(r.Pos, "rule", r.Name)
	cr := &rule{name: r.Name, pos: r.Pos}
	for _, id := range refs(c, r.Keys.at("identity", r.Pos), r.Name, "identity", r.Identity, c.p.identityIndex) {
		cr.identities.set(id.index)
	}
	cr.anyIdentity = len(r.Identity) == 0
	for _, t := range refs(c, r.Keys.at("target", r.Pos), r.Name, "target", r.Target, c.p.targetIndex) {
		cr.targets.set(t.index)
	}
	cr.anyTarget = len(r.Target) == 0
	for _, p := range r.Protocol {
		switch {
		case !containsString(protocols, p):
			c.errorf(r.Keys.at("protocol", r.Pos), "rule %q: protocol %q: use one of %s", r.Name, p, strings.Join(protocols, ", "))
		case !containsString(c.decoders, p):
			c.errorf(r.Keys.at("protocol", r.Pos), "rule %q: protocol %q is not supported yet by this interlockd (supported: %s)",
				r.Name, p, strings.Join(c.decoders, ", "))
		}
	}
	cr.protocols = r.Protocol
	ops := 0
	if r.SQL != nil {
		ops++
		cr.kind = OpSQL
		cr.sql = c.sqlMatch(r.Name, r.SQL)
	}
	if r.HTTP != nil {
		ops++
		c.needDecoder(r.Keys.at("http", r.Pos), r.Name, "http")
		cr.kind = OpHTTP
		cr.http = c.httpMatch(r.Name, r.HTTP)
		c.notPassthrough(r.Keys.at("http", r.Pos), r.Name, r.Target)
	}
	if r.Redis != nil {
		ops++
		c.needDecoder(r.Keys.at("redis", r.Pos), r.Name, "redis")
		cr.kind = OpRedis
		for _, m := range r.Redis.Command {
			cr.patterns = append(cr.patterns, strings.ToUpper(m))
		}
	}
	if r.SSH != nil {
		ops++
		c.needDecoder(r.Keys.at("ssh", r.Pos), r.Name, "ssh")
		cr.kind = OpSSH
		cr.ssh = c.sshMatch(r.Name, r.SSH)
	}
	if ops > 1 {
		c.errorf(r.Pos, "rule %q: give at most one of sql, http, redis, ssh (make one rule per protocol)", r.Name)
	}
	cr.any = ops == 0
	action, ok := parseAction(r.Action)
	if !ok {
		c.errorf(r.Keys.at("action", r.Pos), "rule %q: action %q: use allow, deny, mask or approve", r.Name, r.Action)
	}
	cr.decision = Decision{Action: action, Rule: r.Name}
	switch action {
	case Deny:
		cr.decision.Message = r.Message
		if cr.decision.Message == "" {
			cr.decision.Message = "denied by policy rule " + r.Name
		}
	case Mask:
		if r.Mask == "" {
			c.errorf(r.Keys.at("action", r.Pos), "rule %q: action mask needs mask: <name of a masks entry>", r.Name)
		} else if m, ok := c.p.masks[r.Mask]; ok {
			cr.decision.Mask = m
		} else {
			var k []string
			for n := range c.p.masks {
				k = append(k, n)
			}
			c.errorf(r.Keys.at("mask", r.Pos), "rule %q: unknown mask %q%s", r.Name, r.Mask, suggest(r.Mask, k))
		}
	case Approve:
		a := r.Approve
		if a == nil || len(a.Reviewers) == 0 {
			c.errorf(r.Keys.at("action", r.Pos), "rule %q: action approve needs approve: {reviewers: [...]}", r.Name)
			break
		}
		spec := &ApprovalSpec{Reviewers: a.Reviewers, Quorum: a.Quorum, Timeout: a.Timeout}
		if spec.Quorum == 0 {
			spec.Quorum = 1
		}
		if spec.Quorum < 1 || spec.Quorum > len(spec.Reviewers) {
			c.errorf(a.Keys.at("quorum", a.Pos), "rule %q: quorum %d: must be between 1 and the %d reviewers", r.Name, spec.Quorum, len(spec.Reviewers))
		}
		if spec.Timeout == 0 {
			spec.Timeout = 5 * time.Minute
		}
		cr.decision.Approval = spec
	}
	if action != Deny && r.Message != "" {
		c.errorf(r.Keys.at("message", r.Pos), "rule %q: message is only shown for deny", r.Name)
	}
	if action != Mask && r.Mask != "" {
		c.errorf(r.Keys.at("mask", r.Pos), "rule %q: mask is only used with action mask", r.Name)
	}
	if action != Approve && r.Approve != nil {
		c.errorf(r.Keys.at("approve", r.Pos), "rule %q: approve is only used with action approve", r.Name)
	}
	cr.index = len(c.p.rules)
	c.p.rules = append(c.p.rules, cr)
}

// needDecoder refuses a rule's operation matcher that only requests of
// protocol can fill when this build has no decoder for protocol: no target
// could be of that protocol, so the rule would never match. (SQL matchers
// need no check: postgres is always decoded.)
func (c *compiler) needDecoder(pos Pos, rule, protocol string) {
	if !containsString(c.decoders, protocol) {
		c.errorf(pos, "rule %q: %s requests are not decoded by this interlockd yet, so the rule would never match (supported: %s)",
			rule, protocol, strings.Join(c.decoders, ", "))
	}
}

// sshMatch compiles a rule's ssh: matcher: exec patterns (see
// sshcmd.ParsePattern) and whether it matches interactive shells.
func (c *compiler) sshMatch(rule string, r *rawSSHOp) *sshMatch {
	m := &sshMatch{shell: r.Shell}
	for _, e := range r.Exec {
		p, err := sshcmd.ParsePattern(e)
		if err != nil {
			c.errorf(r.Keys.at("exec", r.Pos), "rule %q: ssh exec pattern %q: %v", rule, e, err)
			continue
		}
		m.exec = append(m.exec, p)
	}
	if r.SFTP != nil {
		m.sftpRead = c.sftpPaths(rule, "read", r.SFTP.Read, r.SFTP.Keys.at("read", r.SFTP.Pos))
		m.sftpWrite = c.sftpPaths(rule, "write", r.SFTP.Write, r.SFTP.Keys.at("write", r.SFTP.Pos))
		if len(r.SFTP.Read)+len(r.SFTP.Write) == 0 {
			c.errorf(r.SFTP.Pos, "rule %q: sftp needs read: or write: [path globs]", rule)
		}
	}
	m.gitFetch = c.repoPatterns(rule, "git_fetch", r.GitFetch, r.Keys.at("git_fetch", r.Pos))
	m.gitPush = c.repoPatterns(rule, "git_push", r.GitPush, r.Keys.at("git_push", r.Pos))
	if len(r.Exec) == 0 && !r.Shell && r.SFTP == nil && len(r.GitFetch)+len(r.GitPush) == 0 {
		c.errorf(r.Pos, "rule %q: ssh needs exec: [patterns], shell: true, sftp: {read, write}, git_fetch: or git_push: [repositories]", rule)
	}
	return m
}

func (c *compiler) sqlMatch(rule string, r *rawSQLOp) *sqlMatch {
	m := &sqlMatch{destructive: tri(r.Destructive), lock: tri(r.Lock), unknowable: tri(r.Unknowable), multi: tri(r.Multi)}
	for _, cl := range r.Class {
		k, ok := sqlclass.ParseClass(cl)
		if !ok {
			c.errorf(r.Keys.at("class", r.Pos), "rule %q: sql class %q: use %s", rule, cl, strings.Join(sqlclass.ClassNames(), ", "))
			continue
		}
		m.classes |= 1 << k
	}
	for _, cmd := range r.Command {
		m.commands = append(m.commands, strings.ToUpper(cmd))
	}
	m.tables = compileNamePatterns(r.Tables)
	m.onlyTables = compileNamePatterns(r.OnlyTables)
	m.hasOnly = r.OnlyTables != nil
	m.functions = compileNamePatterns(r.Functions)
	return m
}

func tri(b *bool) int8 {
	switch {
	case b == nil:
		return 0
	case *b:
		return 1
	}
	return -1
}

func (c *compiler) test(r *rawTest) {
	t := &Test{Name: r.Name, Pos: r.Pos, SQL: r.SQL, Redis: r.Redis, SSH: r.SSH}
	if t.Name == "" {
		t.Name = fmt.Sprintf("test at line %d", r.Pos.Line)
	}
	switch {
	case r.Identity != "" && r.Subject != nil:
		c.errorf(r.Pos, "test %q: give identity or subject, not both", t.Name)
	case r.Identity != "":
		if _, ok := c.p.identityIndex[r.Identity]; !ok {
			c.errorf(r.Keys.at("identity", r.Pos), "test %q: unknown identity %q", t.Name, r.Identity)
		}
		t.Identity = r.Identity
	case r.Subject != nil:
		s := r.Subject
		t.Subject = &Subject{Tag: s.Tag, Unit: s.Unit, UID: s.UID, GID: s.GID, Exe: s.Exe, ExeSHA256: strings.ToLower(s.ExeSHA256), Comm: s.Comm}
	default:
		c.errorf(r.Pos, "test %q: needs identity or subject", t.Name)
	}
	if r.Target != "" {
		if _, ok := c.p.targetIndex[r.Target]; !ok {
			c.errorf(r.Keys.at("target", r.Pos), "test %q: unknown target %q", t.Name, r.Target)
		}
	}
	t.Target = r.Target
	if r.HTTP != nil {
		t.HTTPMethod, t.HTTPPath = strings.ToUpper(r.HTTP.Method), r.HTTP.Path
		t.HTTPHost, t.HTTPHeader = r.HTTP.Host, r.HTTP.Headers
	}
	n := 0
	for _, set := range []bool{r.SQL != "", r.HTTP != nil, r.Redis != "", r.SSH != ""} {
		if set {
			n++
		}
	}
	if n > 1 {
		c.errorf(r.Pos, "test %q: give one of sql, http, redis, ssh", t.Name)
	}
	a, ok := parseAction(r.Expect.Action)
	if !ok {
		c.errorf(r.Expect.Pos, "test %q: expect.action %q: use allow, deny, mask or approve", t.Name, r.Expect.Action)
	}
	t.WantAction, t.WantRule = a, r.Expect.Rule
	c.p.tests = append(c.p.tests, t)
}

// addTests compiles tests from a sibling file against p.
func (p *Policy) addTests(name string, data []byte) error {
	raw, errs := decodeFile[struct {
		Tests []rawTest `yaml:"tests"`
	}](name, data)
	if errs != nil {
		return errs
	}
	c := &compiler{file: name, p: p}
	for i := range raw.Tests {
		c.test(&raw.Tests[i])
	}
	if len(c.errs) > 0 {
		return c.errs
	}
	return nil
}
