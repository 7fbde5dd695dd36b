package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/decoders/capture"
	"github.com/interlock-dev/interlock/decoders/http"
	"github.com/interlock-dev/interlock/decoders/postgres"
	"github.com/interlock-dev/interlock/policy"
)

// replayPorts maps well-known server ports to the protocol spoken there,
// before the policy's targets and --port-map are applied.
var replayPorts = map[uint16]string{5432: "postgres", 15432: "postgres"}

// knownPorts names the protocols of other well-known ports, so an
// unsupported stream is reported by what it most likely is.
var knownPorts = map[uint16]string{
	22: "ssh", 80: "http", 443: "tls", 3306: "mysql", 6379: "redis", 8080: "http", 27017: "mongodb",
}

// replayDecoders lists the protocols replay can decode.
var replayDecoders = map[string]bool{"postgres": true, "http": true}

// replayOptions are policy replay's flags.
type replayOptions struct {
	file, pcap, session, since, identity, target string
	ports                                        portMap
	json                                         bool
}

func newPolicyReplayCmd(a *cli) *cobra.Command {
	o := replayOptions{ports: portMap{}}
	cmd := &cobra.Command{
		Use:   "replay --policy FILE (--pcap FILE | --session ID | --since DURATION) [--json]",
		Short: "Show what a policy would decide on captured or recorded traffic",
		Long: `replay tries a policy on real traffic before it is enforced.

With --pcap it decodes every request in a pcap or pcapng capture
(PostgreSQL, and HTTP/1.x in clear) and shows the decision the policy would
give it; streams that cannot be decoded are
reported and skipped. A stream's protocol comes from --port-map, the
policy's targets, well-known ports, or its first bytes; its target from
--target or its server address.

With --session or --since it re-decides the requests interlockd recorded
(SQL statements, HTTP requests from their recorded heads, SSH requests)
under FILE and shows what would change: newly denied, newly allowed, newly
held, newly masked.

--json prints one JSON object per line.`,
		Example: `  interlock policy replay --policy new.yaml --pcap capture.pcapng --identity ci-bot
  interlock policy replay --policy new.yaml --pcap capture.pcap --port-map 6432=postgres --json
  interlock policy replay --policy new.yaml --since 7d --identity ci-bot
  interlock policy replay --policy new.yaml --session 01JD2Y8M4XQ6`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(runPolicyReplay(cmd.Context(), a.client(), o, args, a.stdout, a.stderr))
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.file, "policy", "", "policy file to decide with")
	f.StringVar(&o.pcap, "pcap", "", "pcap or pcapng capture to replay")
	f.StringVar(&o.session, "session", "", "recorded session to re-decide")
	f.StringVar(&o.since, "since", "", "re-decide every session started within this duration (e.g. 24h, 7d)")
	f.StringVar(&o.identity, "identity", "", "identity of the caller (capture) or sessions to select (--since)")
	f.StringVar(&o.target, "target", "", "target every captured stream is decided for (default: by address)")
	f.BoolVar(&o.json, "json", false, "print one JSON object per line")
	f.Var(o.ports, "port-map", "PORT=PROTOCOL: decode streams to PORT as PROTOCOL (repeatable)")
	return cmd
}

// runPolicyReplay implements `interlock policy replay`. It returns the exit
// code: 0 when the input was read (undecodable streams are reported, not
// failures), 1 when the policy is invalid or the capture or the daemon's
// records cannot be read, 2 for a usage error.
func runPolicyReplay(ctx context.Context, c *control.Client, o replayOptions, args []string, stdout, stderr io.Writer) int {
	sources := 0
	for _, s := range []string{o.pcap, o.session, o.since} {
		if s != "" {
			sources++
		}
	}
	if len(args) > 0 || o.file == "" || sources != 1 {
		fmt.Fprint(stderr, "interlock policy replay: give --policy and one of --pcap, --session or --since\n")
		return 2
	}
	p, err := policy.Load(ctx, policy.Source{Path: o.file}, policy.Options{})
	if err != nil {
		printLoadError(stderr, err)
		return 1
	}
	if o.pcap != "" {
		return replayCapture(p, o.pcap, captureReplay{identity: o.identity, target: o.target, ports: o.ports, json: o.json}, stdout, stderr)
	}
	if o.target != "" || len(o.ports) > 0 {
		fmt.Fprint(stderr, "interlock policy replay: --target and --port-map apply to --pcap only\n")
		return 2
	}
	q := url.Values{}
	if o.session != "" {
		if o.identity != "" {
			fmt.Fprint(stderr, "interlock policy replay: --identity selects sessions with --since only\n")
			return 2
		}
		q.Set("session", o.session)
	} else {
		dur, err := parseSince(o.since)
		if err != nil {
			fmt.Fprintf(stderr, "interlock policy replay: %v\n", err)
			return 2
		}
		q.Set("since", dur.String())
		if o.identity != "" {
			q.Set("identity", o.identity)
		}
	}
	var recorded []control.SessionDecisions
	if err := c.Call(ctx, "/v1/decisions?"+q.Encode(), nil, &recorded); err != nil {
		fmt.Fprintf(stderr, "interlock policy replay: fetch recorded decisions: %v\n", err)
		return 1
	}
	return replaySessions(p, recorded, o.json, stdout, stderr)
}

// portMap is the --port-map flag: server port to protocol.
type portMap map[uint16]string

func (m portMap) String() string {
	var parts []string
	for port, proto := range m {
		parts = append(parts, fmt.Sprintf("%d=%s", port, proto))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// Type names the value in help.
func (m portMap) Type() string { return "PORT=PROTOCOL" }

func (m portMap) Set(s string) error {
	for _, item := range strings.Split(s, ",") {
		port, proto, ok := strings.Cut(strings.TrimSpace(item), "=")
		n, err := strconv.ParseUint(port, 10, 16)
		if !ok || err != nil || n == 0 || proto == "" {
			return fmt.Errorf("%q is not PORT=PROTOCOL (like 6432=postgres)", item)
		}
		m[uint16(n)] = proto
	}
	return nil
}

type captureReplay struct {
	identity, target string
	ports            portMap
	json             bool
}

// replayedRequest is one decided request of a capture; its JSON form is
// what --json prints for it.
type replayedRequest struct {
	Type     string    `json:"type"` // "request"
	Time     time.Time `json:"time"`
	Stream   string    `json:"stream"`
	Protocol string    `json:"protocol"`
	Identity string    `json:"identity,omitempty"`
	Target   string    `json:"target,omitempty"`
	SQL      string    `json:"sql,omitempty"`
	// HTTP is an HTTP request's method and target.
	HTTP    string `json:"http,omitempty"`
	Action  string `json:"action"`
	Rule    string `json:"rule"`
	Message string `json:"message,omitempty"`
	// Mode is the mode the policy gives the request; Verdict reads the
	// action under it ("would deny" in audit mode).
	Mode    string `json:"mode"`
	Verdict string `json:"verdict"`
}

// replayedStream reports what became of one TCP connection of a capture.
type replayedStream struct {
	Type     string `json:"type"` // "stream"
	Stream   string `json:"stream"`
	Protocol string `json:"protocol,omitempty"`
	// Status is "decoded", "unsupported" (no decoder for the protocol),
	// "encrypted" (TLS or GSSAPI), "malformed" or "empty".
	Status   string `json:"status"`
	Requests int    `json:"requests"`
	Error    string `json:"error,omitempty"`
	// Incomplete is set when the capture missed or dropped bytes.
	Incomplete string `json:"incomplete,omitempty"`
}

func replayCapture(p *policy.Policy, path string, o captureReplay, stdout, stderr io.Writer) int {
	for port, proto := range o.ports {
		if !replayDecoders[proto] {
			fmt.Fprintf(stderr, "warning: --port-map %d=%s: no decoder for %s; those streams are reported as unsupported\n", port, proto, proto)
		}
	}
	var subject *policy.Subject
	if o.identity != "" {
		if p.Identity(o.identity) == nil {
			fmt.Fprintf(stderr, "interlock policy replay: %s has no identity %q\n", p.Name(), o.identity)
			return 1
		}
		subject = &policy.Subject{Tag: o.identity}
	} else {
		subject = &policy.Subject{}
		fmt.Fprint(stderr, "note: no --identity: requests are decided for a caller that matches no tag\n")
	}
	var fixed *policy.Target
	if o.target != "" {
		if fixed = p.Target(o.target); fixed == nil {
			fmt.Fprintf(stderr, "interlock policy replay: %s has no target %q\n", p.Name(), o.target)
			return 1
		}
	}
	streams, err := capture.ReadFile(path, capture.Options{})
	if err != nil {
		fmt.Fprintf(stderr, "interlock policy replay: %v\n", err)
		return 1
	}
	var reqs []replayedRequest
	reports := make([]replayedStream, 0, len(streams))
	for _, s := range streams {
		rs := replayedStream{Type: "stream", Stream: s.Client.String() + " -> " + s.Server.String()}
		switch {
		case s.Gaps && s.Truncated:
			rs.Incomplete = "bytes missing from the capture; stream cut at the size limit"
		case s.Gaps:
			rs.Incomplete = "bytes missing from the capture"
		case s.Truncated:
			rs.Incomplete = "stream cut at the size limit"
		}
		client, server := s.ClientBytes(), s.ServerBytes()
		rs.Protocol = streamProtocol(p, o.ports, s, client)
		if len(client) == 0 {
			rs.Status = "empty"
			reports = append(reports, rs)
			continue
		}
		if !replayDecoders[rs.Protocol] {
			rs.Status = "unsupported"
			if rs.Protocol == "" {
				rs.Error = fmt.Sprintf("unknown protocol on port %d (use --port-map)", s.Server.Port())
			} else {
				rs.Error = "no decoder for " + rs.Protocol
			}
			reports = append(reports, rs)
			continue
		}
		if rs.Protocol == "http" {
			rs.Requests, rs.Status, rs.Error = replayHTTP(p, subject, fixed, s, client, o.identity, rs.Stream, &reqs)
			reports = append(reports, rs)
			continue
		}
		t := fixed
		if t == nil {
			t = targetFor(p, s.Server, rs.Protocol)
		}
		qs, err := postgres.DecodeQueries(client, server)
		for _, q := range qs {
			d, _ := p.DecideSQL(subject, t, q.SQL)
			mode := p.Mode(subject, t)
			r := replayedRequest{Type: "request", Time: s.ClientTime(q.Offset), Stream: rs.Stream, Protocol: rs.Protocol,
				Identity: o.identity, SQL: q.SQL, Action: d.Action.String(), Rule: d.Rule, Message: d.Message,
				Mode: mode.String(), Verdict: mode.Describe(d.Action)}
			if t != nil {
				r.Target = t.Name
			}
			reqs = append(reqs, r)
		}
		rs.Requests = len(qs)
		switch {
		case errors.Is(err, postgres.ErrTLS) || errors.Is(err, postgres.ErrGSSEncryption):
			rs.Status, rs.Error = "encrypted", err.Error()
		case err != nil:
			rs.Status, rs.Error = "malformed", err.Error()
		default:
			rs.Status = "decoded"
		}
		reports = append(reports, rs)
	}
	// Requests of concurrent connections are shown in the order they were
	// sent, as a server would have seen them.
	sort.SliceStable(reqs, func(i, j int) bool { return reqs[i].Time.Before(reqs[j].Time) })
	if o.json {
		enc := json.NewEncoder(stdout)
		for _, r := range reqs {
			enc.Encode(r)
		}
		for _, r := range reports {
			enc.Encode(r)
		}
		return 0
	}
	for _, r := range reqs {
		target := r.Target
		if target == "" {
			target = "no target"
		}
		fmt.Fprintf(stdout, "%s %s [%s] %s by %s: %s\n", r.Time.UTC().Format("15:04:05.000000"), r.Stream, target,
			r.Verdict, r.Rule, oneLine(r.SQL+r.HTTP))
	}
	counts := map[string]int{}
	for _, r := range reqs {
		counts[r.Verdict]++
	}
	fmt.Fprintf(stdout, "%d requests (%s) in %d streams\n", len(reqs), countSummary(counts), len(reports))
	for _, r := range reports {
		if r.Status == "decoded" && r.Incomplete == "" {
			continue
		}
		fmt.Fprintf(stdout, "stream %s: %s", r.Stream, r.Status)
		if r.Protocol != "" {
			fmt.Fprintf(stdout, " (%s)", r.Protocol)
		}
		if r.Error != "" {
			fmt.Fprintf(stdout, ": %s", r.Error)
		}
		if r.Incomplete != "" {
			fmt.Fprintf(stdout, "; %s", r.Incomplete)
		}
		if r.Requests > 0 {
			fmt.Fprintf(stdout, "; %d requests decoded before", r.Requests)
		}
		fmt.Fprintln(stdout)
	}
	return 0
}

// refusedRule names, in a replay, what refused a request before any rule
// of the policy could decide it: interlockd itself.
const refusedRule = "interlockd"

// replayHTTP decides the HTTP/1.x requests of one captured stream, each
// for the target --target names or the one its Host chooses (else its
// server address), appends them to reqs and returns how many there were
// and the stream's status.
func replayHTTP(p *policy.Policy, subject *policy.Subject, fixed *policy.Target, s *capture.Stream, client []byte,
	identity, stream string, reqs *[]replayedRequest) (int, string, string) {
	hs, err := http.DecodeRequests(client)
	for _, h := range hs {
		t := fixed
		if t == nil {
			if t = p.TargetForName(h.Host, s.Server.Port()); t == nil {
				t = targetFor(p, s.Server, "http")
			}
		}
		d := p.DecideHTTP(subject, t, policy.HTTPRequest{Method: h.Method, Host: h.Host, URI: h.URI, Header: h.Header})
		mode := p.Mode(subject, t)
		r := replayedRequest{Type: "request", Time: s.ClientTime(h.Offset), Stream: stream, Protocol: "http",
			Identity: identity, HTTP: h.Method + " " + h.URI, Action: d.Action.String(), Rule: d.Rule, Message: d.Message,
			Mode: mode.String(), Verdict: mode.Describe(d.Action)}
		if h.Refused != "" {
			// interlockd answers it before the policy, in any mode.
			r.Action, r.Rule, r.Message, r.Verdict = policy.Deny.String(), refusedRule, h.Refused, "refused (400)"
		}
		if t != nil {
			r.Target = t.Name
		}
		*reqs = append(*reqs, r)
	}
	switch {
	case errors.Is(err, http.ErrTLS):
		return len(hs), "encrypted", err.Error()
	case errors.Is(err, http.ErrHTTP2):
		return len(hs), "unsupported", err.Error()
	case err != nil:
		return len(hs), "malformed", err.Error()
	}
	return len(hs), "decoded", ""
}

// streamProtocol picks a stream's protocol: --port-map first, then the
// policy's targets that name a port, then well-known ports, then a look at
// the first bytes (a PostgreSQL startup packet is recognisable anywhere).
// It returns the likely protocol of an unsupported stream too, or "". On a
// port it does not know, a stream opening with a PostgreSQL Query message
// is taken for PostgreSQL as well.
func streamProtocol(p *policy.Policy, ports portMap, s *capture.Stream, client []byte) string {
	port := s.Server.Port()
	if proto, ok := ports[port]; ok {
		return proto
	}
	if t := p.TargetFor("", s.Server.Addr(), port); t != nil && t.Port == port && t.Protocol != "tcp" {
		return t.Protocol
	}
	if proto, ok := replayPorts[port]; ok {
		return proto
	}
	if postgres.LooksLikeStartup(client) {
		return "postgres"
	}
	if proto, ok := knownPorts[port]; ok {
		return proto
	}
	if postgres.LooksLikeQuery(client) {
		return "postgres" // a capture that began mid-session
	}
	return ""
}

// targetFor finds the target a captured stream went to: by its server
// address, else the policy's only target of the protocol.
func targetFor(p *policy.Policy, server netip.AddrPort, proto string) *policy.Target {
	if t := p.TargetFor("", server.Addr(), server.Port()); t != nil {
		return t
	}
	var only *policy.Target
	for _, t := range p.Targets() {
		if t.Protocol != proto {
			continue
		}
		if only != nil {
			return nil
		}
		only = t
	}
	return only
}

// oneLine renders SQL on one line: quoted when it holds line breaks or
// other control characters, as is otherwise.
func oneLine(s string) string {
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return strconv.Quote(s)
		}
	}
	return s
}

func countSummary(counts map[string]int) string {
	if len(counts) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, counts[k])
	}
	return strings.Join(parts, ", ")
}

// Kinds of change replaySessions reports.
const (
	newlyDenied  = "newly denied"
	newlyAllowed = "newly allowed"
	newlyHeld    = "newly held"
	newlyMasked  = "newly masked"
)

// changedDecision is one recorded statement whose decision would change;
// its JSON form is what --json prints for it.
type changedDecision struct {
	Change    string    `json:"change"`
	Session   string    `json:"session"`
	Identity  string    `json:"identity"`
	Target    string    `json:"target"`
	Seq       int64     `json:"seq"`
	Time      time.Time `json:"time"`
	Statement string    `json:"statement"`
	// Op is what the statement was decided as, where the protocol names
	// it apart: an HTTP method, an SSH request ("exec", "sftp-read").
	Op        string `json:"op,omitempty"`
	OldAction string `json:"old_action"`
	OldRule   string `json:"old_rule"`
	// OldEnforced is false when the old decision was only audited.
	OldEnforced bool   `json:"old_enforced"`
	NewAction   string `json:"new_action"`
	NewRule     string `json:"new_rule"`
	// NewMode is the mode the new policy gives the statement.
	NewMode string `json:"new_mode"`
}

// changeOf names how a decision changes from old to new, "" when the
// action stays the same.
func changeOf(old string, now policy.Action) string {
	if old == now.String() {
		return ""
	}
	switch now {
	case policy.Deny:
		return newlyDenied
	case policy.Approve:
		return newlyHeld
	case policy.Mask:
		return newlyMasked
	}
	return newlyAllowed
}

// replaySessions re-decides every recorded request under p (SQL
// statements, HTTP requests, SSH requests) and prints the ones whose
// action would change, then a count per kind of change. Decisions that no
// policy made (an untagged cgroup, a connect) are left out: a policy change
// cannot alter them.
func replaySessions(p *policy.Policy, recorded []control.SessionDecisions, asJSON bool, stdout, stderr io.Writer) int {
	var changes []changedDecision
	total, ruleOnly, otherProtocol := 0, 0, 0
	// unknown counts the decisions whose request the records do not keep
	// in full, by why.
	unknown := map[string]int{}
	for i := range recorded {
		sd := &recorded[i]
		sess := &sd.Session
		subject := &policy.Subject{Tag: sess.Identity, UID: sess.UID, PID: int(sess.PID), Exe: sess.Exe, CgroupPath: sess.Cgroup}
		t := p.Target(sess.Target)
		if t == nil {
			if ap, err := netip.ParseAddrPort(sess.UpstreamAddr); err == nil {
				t = p.TargetFor(sess.Identity, ap.Addr(), ap.Port())
			}
		}
		decide := redecider(p, sd, subject, t)
		if decide == nil {
			otherProtocol++
			continue
		}
		for _, d := range sd.Decisions {
			if d.Op == "" && (d.Statement == "" || strings.EqualFold(d.Statement, "connect")) || d.Rule == "identity-revoked" {
				continue
			}
			now, dt, why := decide(&d)
			if why != "" {
				unknown[why]++
				continue
			}
			total++
			change := changeOf(d.Action, now.Action)
			if change == "" {
				if d.Rule != now.Rule {
					ruleOnly++
				}
				continue
			}
			c := changedDecision{Change: change, Session: sess.ID, Identity: sess.Identity, Target: sess.Target,
				Seq: d.Seq, Time: d.Time, Statement: d.Statement, Op: d.Op, OldAction: d.Action, OldRule: d.Rule,
				OldEnforced: d.Enforced, NewAction: now.Action.String(), NewRule: now.Rule, NewMode: p.Mode(subject, dt).String()}
			if dt != nil {
				c.Target = dt.Name
			}
			changes = append(changes, c)
		}
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		for _, c := range changes {
			enc.Encode(c)
		}
		for _, l := range replayNotes(otherProtocol, unknown) {
			fmt.Fprintf(stderr, "note: %s\n", l)
		}
		return 0
	}
	counts := map[string]int{}
	for _, c := range changes {
		counts[c.Change]++
		old := c.OldAction
		if !c.OldEnforced {
			old += " (audit)"
		}
		now := c.NewAction
		if c.NewMode == policy.Audit.String() {
			now += " (audit)"
		}
		req := strings.TrimSpace(c.Op + " " + c.Statement)
		fmt.Fprintf(stdout, "%s: session %s seq %d (%s -> %s): %s by %s -> %s by %s: %s\n", c.Change, c.Session, c.Seq,
			c.Identity, c.Target, old, c.OldRule, now, c.NewRule, oneLine(req))
	}
	fmt.Fprintf(stdout, "%d statements in %d sessions re-decided: %d would change (%s), %d keep their action under another rule\n",
		total, len(recorded)-otherProtocol, len(changes), countSummary(counts), ruleOnly)
	for _, l := range replayNotes(otherProtocol, unknown) {
		fmt.Fprintln(stdout, l)
	}
	return 0
}

// replayNotes says what a replay of recorded sessions left out: sessions
// of protocols it does not decide requests of, and decisions whose request
// the records do not keep in full (by why).
func replayNotes(otherProtocol int, unknown map[string]int) []string {
	var out []string
	if otherProtocol > 0 {
		out = append(out, fmt.Sprintf("%d sessions of other protocols skipped: replay re-decides SQL, HTTP and SSH requests", otherProtocol))
	}
	whys := make([]string, 0, len(unknown))
	for why := range unknown {
		whys = append(whys, why)
	}
	sort.Strings(whys)
	for _, why := range whys {
		out = append(out, fmt.Sprintf("%d requests not re-decided: %s", unknown[why], why))
	}
	return out
}

// redecider returns what decides session sd's recorded requests again
// under p, for subject and t (the session's caller and target): the new
// decision, the target it was made for and "", or a reason the records do
// not keep what deciding the request needs. It returns nil for a protocol
// whose requests replay does not decide.
func redecider(p *policy.Policy, sd *control.SessionDecisions, subject *policy.Subject, t *policy.Target) func(d *control.Decision) (policy.Decision, *policy.Target, string) {
	switch sd.Session.Protocol {
	case "postgresql", "postgres", "":
		return func(d *control.Decision) (policy.Decision, *policy.Target, string) {
			now, _ := p.DecideSQL(subject, t, d.Statement)
			return now, t, ""
		}
	case "ssh":
		return func(d *control.Decision) (policy.Decision, *policy.Target, string) {
			if d.Op == "" {
				return policy.Decision{}, nil, "decided before interlockd kept an SSH request's kind (exec, shell, sftp) with its decision"
			}
			return p.DecideSSH(subject, t, d.Op, d.Statement), t, ""
		}
	case "http":
		reqs := make(map[int64]*control.HTTPRequest, len(sd.Requests))
		for i := range sd.Requests {
			reqs[sd.Requests[i].Seq] = &sd.Requests[i]
		}
		var port uint16
		if ap, err := netip.ParseAddrPort(sd.Session.UpstreamAddr); err == nil {
			port = ap.Port()
		}
		return func(d *control.Decision) (policy.Decision, *policy.Target, string) {
			q := reqs[d.Seq]
			if q == nil {
				if sd.RequestsError != "" {
					return policy.Decision{}, nil, "the recording could not be read: " + sd.RequestsError
				}
				return policy.Decision{}, nil, "the request's head is not in its session's recording"
			}
			// As interlockd chooses an http target: by the name the agent
			// asked for, before the address.
			rt := p.Target(sd.Session.Target)
			if rt == nil {
				rt = p.TargetForName(q.Host, port)
			}
			if rt == nil {
				rt = t
			}
			return p.DecideHTTP(subject, rt, policy.HTTPRequest{Method: q.Method, Host: q.Host, URI: q.URI, Header: q.Header}), rt, ""
		}
	}
	return nil
}
