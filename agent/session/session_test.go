package session

import (
	"bytes"
	"context"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/config"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
)

const testPolicy = `version: 1
identities:
  - name: ci
  - name: admin
  - name: reviewed
targets:
  - name: db
    protocol: postgres
    addresses: [127.0.0.1]
    port: 5432
    credential: {source: app}
  - name: web
    protocol: tcp
    addresses: [127.0.0.2]
    port: 80
  - name: forge
    protocol: http
    hosts: [api.test]
    port: 443
    tls: intercept
rules:
  - name: forge-read
    identity: ci
    target: forge
    http: {methods: [GET]}
    action: allow
  - name: reads
    identity: ci
    target: db
    sql: {class: [read, session]}
    action: allow
  - name: admin-bot-all
    identity: admin
    target: db
    sql: {class: [read, session, transaction, admin]}
    action: allow
  - name: reviewed-admin
    identity: reviewed
    target: db
    sql: {class: admin}
    action: approve
    approve: {reviewers: [root], timeout: 1m}
`

// eventLog is the event log: written by the pipeline's goroutines.
type eventLog struct{ daemontest.Buffer }

func (l *eventLog) lines() []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(l.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// tags is a tag table where every cgroup carries one identity.
type tags struct{ identity string }

func (t tags) Origin(peer, local netip.AddrPort) (datapath.Origin, string, error) {
	return datapath.Origin{}, t.identity, nil
}
func (t tags) IdentityOf(uint64, string) string   { return t.identity }
func (t tags) Generation() uint64                 { return 0 }
func (t tags) SettledAt(time.Time) (uint64, bool) { return 0, false }

// fakeDecoder plays a protocol: it runs script with the session it is
// handed and returns what script returns.
type fakeDecoder struct {
	script func(ctx context.Context, s *protocol.Session) error
}

func (f fakeDecoder) Serve(ctx context.Context, s *protocol.Session) error {
	defer s.Agent.Close()
	return f.script(ctx, s)
}

type env struct {
	p     *Pipeline
	st    *store.Store
	db    string // the store's SQLite file
	trail *audit.Log
	log   *eventLog
	// daemon is interlockd's own log, beside the audit's event log.
	daemon *eventLog
}

func newEnv(t *testing.T, decoder protocol.Decoder) *env {
	t.Helper()
	dir := t.TempDir()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(dir, "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logBuf, daemonLog := &eventLog{}, &eventLog{}
	trail := audit.New(st, "host-a", audit.WithEventLog(zerolog.New(logBuf).Level(zerolog.DebugLevel)))
	t.Cleanup(func() { trail.Close() })
	rec, err := recording.NewRecorder(st, filepath.Join(dir, "recordings"), "host-a", recording.WithAudit(trail))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	nop := zerolog.Nop()
	appr, err := approvals.New(approvals.Config{Store: st, Audit: trail, Host: "host-a", Logger: &nop})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { appr.Close(context.Background()) })
	os.WriteFile(filepath.Join(dir, "pw"), []byte("secret\n"), 0o600)
	creds, err := credentials.NewManager(credentials.Config{Static: map[string]credentials.StaticConfig{
		"app": {Username: "app", PasswordFile: filepath.Join(dir, "pw")}}}, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { creds.Close() })
	pol, err := policy.Load(context.Background(), policy.Source{Name: "test.yaml", Text: []byte(testPolicy)}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := New(Config{
		Policy: policy.NewEngine(pol), Credentials: creds, Recorder: rec, Approvals: appr, Audit: trail,
		Metrics: metrics.New("test", "", nil), Tags: tags{"ci"}, Limits: config.Limits{Sessions: 1},
		TLS: func(netip.Addr) *tls.Config { return nil }, Log: zerolog.New(daemonLog),
	})
	p.decoders["postgres"] = decoder
	return &env{p: p, st: st, db: filepath.Join(dir, "interlock.db"), trail: trail, log: logBuf, daemon: daemonLog}
}

// serve runs one connection to dst through the pipeline and returns the
// agent's end of it.
func (e *env) serve(t *testing.T, id string, dst string) (agent net.Conn, done chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	agent, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	done = make(chan struct{})
	go func() {
		defer close(done)
		e.p.Handle(context.Background(), &proxy.Conn{ID: id, Identity: proxy.Identity{Name: "ci", PID: uint32(os.Getpid())},
			Dst: netip.MustParseAddrPort(dst), Client: server.(*net.TCPConn), Accepted: time.Now()})
	}()
	return agent, done
}

// outcomes returns the outcomes of the connection_close events logged, in
// order.
func (e *env) outcomes() []string {
	var out []string
	for _, l := range e.log.lines() {
		if l["event"] == "connection_close" {
			out = append(out, fmt.Sprint(l["outcome"]))
		}
	}
	return out
}

// chain returns the kinds of the chain's records, in order, after checking
// that it verifies.
func (e *env) chain(t *testing.T) []map[string]any {
	t.Helper()
	ctx := context.Background()
	if err := e.trail.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := audit.Verify(ctx, e.st, "host-a"); err != nil || res.Broken != nil {
		t.Fatalf("audit verify: %+v, %v", res, err)
	}
	var buf bytes.Buffer
	if err := audit.Export(ctx, e.st, "host-a", &buf); err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("export line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// logName is the event log's name for each chained kind.
var logName = map[string]string{
	"connection.opened": "connection_open", "connection.closed": "connection_close", "decision": "decision",
	"credential.issued": "credential_issued", "credential.revoked": "credential_revoked",
	"recording.sealed": "recording_sealed", "protocol.error": "protocol_violation", "limit.exceeded": "limit_exceeded",
	"approval.requested": "approval_requested", "approval.decided": "approval_decided",
}

// sameEvents checks that the event log and the chain hold the same events:
// every chained record once in the log, and every logged event in the
// chain but for the enforced allows, which only the log and the sealed
// recording hold.
func sameEvents(t *testing.T, e *env) (chain []string) {
	t.Helper()
	recs := e.chain(t)
	logged := map[string]int{}
	for _, l := range e.log.lines() {
		if l["event"] == "decision" && l["action"] == "allow" && l["mode"] == "enforce" {
			continue
		}
		logged[l["event"].(string)]++
	}
	chained := map[string]int{}
	for _, r := range recs {
		kind := r["kind"].(string)
		chain = append(chain, kind)
		name, ok := logName[kind]
		if !ok {
			t.Fatalf("chain kind %q has no log name in the test", kind)
		}
		chained[name]++
	}
	for name, n := range chained {
		if logged[name] != n {
			t.Errorf("%s: %d in the chain, %d in the log", name, n, logged[name])
		}
	}
	for name, n := range logged {
		if chained[name] != n {
			t.Errorf("%s: %d in the log, %d in the chain", name, n, chained[name])
		}
	}
	return chain
}

func TestPipelineRecordsEachEventOnceInLogAndChain(t *testing.T) {
	var verdicts []protocol.Verdict
	e := newEnv(t, fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
		if s.Connect.Action != protocol.Allow || s.Refuse != nil {
			t.Errorf("connect %+v, refuse %v; want allowed", s.Connect, s.Refuse)
		}
		cred, err := s.Upstream.Credential(ctx, protocol.CredentialRequest{})
		if err != nil || cred.Username != "app" || cred.Password != "secret" {
			t.Errorf("credential %+v, %v", cred, err)
		}
		if err := s.Recorder.Start(ctx); err != nil {
			return err
		}
		for _, sql := range []string{"SELECT 1", "DROP TABLE patients", "SELECT * FROM t WHERE ssn = '123-45-6789'"} {
			s.Recorder.Record(protocol.Message{FromClient: true, Type: 'Q', Body: []byte(sql + "\x00")})
			verdicts = append(verdicts, s.Enforcer.Decide(ctx, protocol.Request{Operation: protocol.OpQuery, Text: sql}))
		}
		// A request the policy language cannot express is refused.
		verdicts = append(verdicts, s.Enforcer.Decide(ctx, protocol.Request{Operation: "FROBNICATE", Text: "x"}))
		return nil
	}})
	_, done := e.serve(t, "s1", "127.0.0.1:5432")
	<-done
	want := []protocol.Action{protocol.Allow, protocol.Deny, protocol.Allow, protocol.Deny}
	for i, v := range verdicts {
		if v.Action != want[i] {
			t.Errorf("verdict %d: %+v, want action %d", i, v, want[i])
		}
	}
	chain := sameEvents(t, e)
	if got := strings.Join(chain, " "); got != "connection.opened credential.issued decision decision recording.sealed credential.revoked connection.closed" {
		t.Errorf("chain: %s", got)
	}
	var buf bytes.Buffer
	audit.Export(context.Background(), e.st, "host-a", &buf)
	if strings.Contains(buf.String(), "123-45-6789") || strings.Contains(buf.String(), "secret") {
		t.Errorf("a literal or the credential reached the chain:\n%s", buf.String())
	}
	for _, l := range e.log.lines() {
		if strings.Contains(fmt.Sprint(l), "123-45-6789") || strings.Contains(fmt.Sprint(l), "secret") {
			t.Errorf("a literal or the credential reached the log: %v", l)
		}
	}
}

// TestPipelineEndings: each way a decoder's session can end is audited once,
// in the log and the chain, with the outcome an operator reads.
func TestPipelineEndings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		begin   bool
		outcome string
		chain   string
	}{
		{"violation", &protocol.ViolationError{Msg: "message type 0x00"}, true, "protocol violation",
			"connection.opened recording.sealed protocol.error connection.closed"},
		{"handshake violation", &protocol.ViolationError{Msg: "startup packet too long"}, false, "handshake",
			"connection.opened protocol.error connection.closed"},
		{"limit", &protocol.LimitError{Limit: "message_buffer", Msg: "message of 9 MiB over the 8 MiB cap"}, true, "limit exceeded",
			"connection.opened recording.sealed limit.exceeded connection.closed"},
		{"refused", &protocol.RefusedError{Outcome: "upstream unreachable", Err: errors.New("connection refused")}, false, "upstream unreachable",
			"connection.opened connection.closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
				if tc.begin {
					if err := s.Recorder.Start(ctx); err != nil {
						return err
					}
				}
				return tc.err
			}})
			_, done := e.serve(t, "s-"+strings.ReplaceAll(tc.name, " ", "-"), "127.0.0.1:5432")
			<-done
			if got := strings.Join(sameEvents(t, e), " "); got != tc.chain {
				t.Errorf("chain: %s, want %s", got, tc.chain)
			}
			var closed map[string]any
			for _, l := range e.log.lines() {
				if l["event"] == "connection_close" {
					closed = l
				}
			}
			if closed["outcome"] != tc.outcome {
				t.Errorf("connection_close %v, want outcome %q", closed, tc.outcome)
			}
		})
	}
}

// TestPipelineContainsDecoderPanic: a decoder that panics ends its own
// session, audited as an internal error with the stack in the log; the
// session's slot is free and the next session is served.
func TestPipelineContainsDecoderPanic(t *testing.T) {
	e := newEnv(t, fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
		if err := s.Recorder.Start(ctx); err != nil {
			return err
		}
		if s.ID == "s-defect" {
			var m map[string]int
			m["reached"]++ // a nil map: the defect
		}
		return nil
	}})
	for _, id := range []string{"s-defect", "s-after"} {
		_, done := e.serve(t, id, "127.0.0.1:5432")
		<-done
	}
	if got := strings.Join(sameEvents(t, e), " "); got != "connection.opened recording.sealed connection.closed connection.opened recording.sealed connection.closed" {
		t.Errorf("chain: %s", got)
	}
	outcomes := e.outcomes()
	logged := false
	for _, l := range e.daemon.lines() {
		if l["message"] == "ended by an internal error" {
			stack, _ := l["stack"].(string)
			logged = l["level"] == "error" && l["conn"] == "s-defect" && strings.Contains(fmt.Sprint(l["panic"]), "nil map") &&
				strings.Contains(stack, "TestPipelineContainsDecoderPanic")
		}
	}
	if fmt.Sprint(outcomes) != "[internal error closed]" {
		t.Errorf("outcomes %v, want the defect's session ended by an internal error, the next closed", outcomes)
	}
	if !logged {
		t.Errorf("no error logged with the panic and its stack:\n%v", e.daemon.lines())
	}
	if n := e.p.limits.held(sessionSlot, "ci"); n != 0 {
		t.Errorf("identity ci holds %d session slots after both ended", n)
	}
}

// TestPipelineContainsDetachedEndPanic: a session its decoder detached
// ends on a goroutine of the decoder's (protocol.Session.Finish); a defect
// reached there (here an error whose Error panics) is logged with its
// stack, the agent's connection is closed, and the next session is served
// in the identity's one slot.
func TestPipelineContainsDetachedEndPanic(t *testing.T) {
	e := newEnv(t, fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
		if err := s.Recorder.Start(ctx); err != nil {
			return err
		}
		if s.ID == "s-defect" {
			go s.Finish(defectiveError{})
			return protocol.ErrDetached
		}
		return nil
	}})
	agent, done := e.serve(t, "s-defect", "127.0.0.1:5432")
	<-done
	agent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(agent); err != nil || len(b) != 0 {
		t.Errorf("the detached session's agent read %q, %v: want its connection closed", b, err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		logged := false
		for _, l := range e.daemon.lines() {
			stack, _ := l["stack"].(string)
			logged = logged || l["message"] == "ended by an internal error" && l["where"] == "session end" &&
				l["conn"] == "s-defect" && l["panic"] == "error defect" && strings.Contains(stack, "defectiveError")
		}
		if logged {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the defect was not logged:\n%v", e.daemon.lines())
		}
	}
	_, done = e.serve(t, "s-after", "127.0.0.1:5432")
	<-done
	outcomes := e.outcomes()
	if fmt.Sprint(outcomes) != "[closed]" {
		t.Errorf("outcomes %v, want the session after the defect's closed", outcomes)
	}
}

// defectiveError is an error whose Error panics, as a defect would.
type defectiveError struct{}

func (defectiveError) Error() string { panic("error defect") }

// TestPipelineEndsSessionWhoseRowIsRefused: a session goes on while its
// row is written; a store that refuses the row ends it, and the sessions
// after wait for their rows, so a store that keeps refusing refuses them.
func TestPipelineEndsSessionWhoseRowIsRefused(t *testing.T) {
	var cut, second error
	e := newEnv(t, fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
		if err := s.Recorder.Start(ctx); err != nil {
			second = err
			return err
		}
		select {
		case <-ctx.Done():
			cut = context.Cause(ctx)
		case <-time.After(10 * time.Second):
			t.Error("the session went on after the store refused its row")
		}
		return nil
	}})
	if _, err := e.st.DB().Exec(`CREATE TRIGGER refuse_sessions BEFORE INSERT ON sessions
		BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END`); err != nil {
		t.Fatal(err)
	}
	_, done := e.serve(t, "s-refused", "127.0.0.1:5432")
	<-done
	if cut == nil || !strings.Contains(cut.Error(), "disk quota exceeded") {
		t.Errorf("session ended by %v, want the store's refusal", cut)
	}
	_, done = e.serve(t, "s-after", "127.0.0.1:5432")
	<-done
	if second == nil || !strings.Contains(second.Error(), "disk quota exceeded") {
		t.Errorf("the next session's Start: %v, want the store's refusal", second)
	}
	outcomes := e.outcomes()
	if fmt.Sprint(outcomes) != "[recording unavailable recording unavailable]" {
		t.Errorf("outcomes %v, want both recording unavailable", outcomes)
	}
}

// TestPipelineSessionCap: a session over its identity's cap reaches its
// decoder with Refuse set, and the refusal is audited as the limit.
func TestPipelineSessionCap(t *testing.T) {
	hold, held := make(chan struct{}), make(chan struct{})
	var refused *protocol.LimitError
	e := newEnv(t, fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
		if s.Refuse != nil {
			refused = s.Refuse
			return s.Refuse
		}
		close(held)
		<-hold
		return nil
	}})
	_, first := e.serve(t, "s1", "127.0.0.1:5432")
	// The second starts once the first holds its slot: started together,
	// either could be the one over the cap.
	<-held
	_, second := e.serve(t, "s2", "127.0.0.1:5432")
	<-second
	close(hold)
	<-first
	if refused == nil || refused.Limit != "sessions" {
		t.Fatalf("second session: refuse %+v, want the sessions limit", refused)
	}
	if got := strings.Join(sameEvents(t, e), " "); !strings.Contains(got, "limit.exceeded") {
		t.Errorf("chain lacks the limit: %s", got)
	}
}

// TestPipelineRelayDenied: a destination with no decoder and no rule gets
// the plain relay's refusal, a reset, with the reason in the audit.
func TestPipelineRelayDenied(t *testing.T) {
	e := newEnv(t, fakeDecoder{func(context.Context, *protocol.Session) error {
		t.Error("the decoder was called for a tcp target")
		return nil
	}})
	agent, done := e.serve(t, "s1", "127.0.0.2:80")
	<-done
	agent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := agent.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "reset") {
		t.Errorf("agent read: %v, want a reset", err)
	}
	if got := strings.Join(sameEvents(t, e), " "); got != "connection.opened decision connection.closed" {
		t.Errorf("chain: %s", got)
	}
	for _, l := range e.log.lines() {
		if l["event"] == "connection_close" && (l["outcome"] != "denied" || !strings.Contains(fmt.Sprint(l["reason"]), "default-deny")) {
			t.Errorf("connection_close %v, want denied by default-deny", l)
		}
	}
}

// TestDecideStartup: a startup parameter gets the decision of the SET it
// stands for (issue 12: search_path was refused "as admin" under a policy
// allowing admin).
func TestDecideStartup(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		identity string
		names    []string
		want     string // rule and action of each refused or decided name, in order
	}{
		{"ci", []string{"application_name", "client_encoding", "statement_timeout"}, ""},
		{"ci", []string{"search_path"}, "search_path:default-deny:1"},
		{"admin", []string{"search_path", "standard_conforming_strings"}, "search_path:admin-bot-all:0 standard_conforming_strings:admin-bot-all:0"},
		{"admin", []string{"role"}, "role:default-deny:1"},
		// A connection cannot wait for an approval: it is refused instead.
		{"reviewed", []string{"search_path"}, "search_path:reviewed-admin:1"},
	} {
		pol := e.p.cfg.Policy.Current()
		c := &conn{id: "s", identity: &proxy.Identity{Name: tc.identity}, target: pol.Target("db"),
			subject: policy.Subject{Tag: tc.identity}}
		en := &enforcer{p: e.p, c: c, rec: &recorder{p: e.p, c: c}}
		var got []string
		for _, name := range tc.names {
			v := en.Decide(context.Background(), protocol.Request{Operation: protocol.OpStartup, Text: name})
			if v.Rule != "" {
				got = append(got, fmt.Sprintf("%s:%s:%d", name, v.Rule, v.Action))
			}
		}
		if s := strings.Join(got, " "); s != tc.want {
			t.Errorf("%s %v: %q, want %q", tc.identity, tc.names, s, tc.want)
		}
	}
}

// TestDecisionsCounted: each decision counts under its own action, rule
// and mode, however a session's decisions alternate between rules (the
// enforcer keeps the last decision's counter).
func TestDecisionsCounted(t *testing.T) {
	e := newEnv(t, nil)
	pol := e.p.cfg.Policy.Current()
	c := &conn{id: "s", identity: &proxy.Identity{Name: "ci"}, target: pol.Target("db"), subject: policy.Subject{Tag: "ci"}}
	en := &enforcer{p: e.p, c: c, rec: &recorder{p: e.p, c: c}}
	read := protocol.Request{Operation: protocol.OpQuery, Text: "SELECT 1"}
	write := protocol.Request{Operation: protocol.OpQuery, Text: "DELETE FROM t"}
	garbled := protocol.Request{Operation: protocol.OpQuery, Text: "SELEC 1"}
	for _, r := range []protocol.Request{read, read, write, read, write, garbled, write, garbled, read} {
		en.Decide(context.Background(), r)
	}
	for _, tc := range []struct {
		action, rule string
		want         float64
	}{{"allow", "reads", 4}, {"deny", "default-deny", 3}, {"deny", "unparseable", 2}} {
		var m dto.Metric
		e.p.cfg.Metrics.Decisions.WithLabelValues(tc.action, tc.rule, "enforce").Write(&m)
		if got := m.GetCounter().GetValue(); got != tc.want {
			t.Errorf("%s by %s: %v decisions counted, want %v", tc.action, tc.rule, got, tc.want)
		}
	}
}

// TestDecodersMatchPolicy: the policy accepts targets of exactly the
// protocols the pipeline serves, so no rule can silently never fire.
func TestDecodersMatchPolicy(t *testing.T) {
	p := New(Config{})
	if got, want := slices.Sorted(slices.Values(p.Protocols())), slices.Sorted(slices.Values(policy.Decoded())); !slices.Equal(got, want) {
		t.Fatalf("pipeline serves %v, policy accepts %v", got, want)
	}
}

// BenchmarkDecide is what the pipeline adds to each statement of a session
// beyond the policy's own decision: identity check, metrics, the audit
// event (an enforced allow goes to the log at debug level only) and the
// recording's verdict.
func BenchmarkDecide(b *testing.B) {
	t := &testing.T{}
	e := newEnv(t, nil)
	e.p.cfg.Audit = audit.New(e.st, "host-b", audit.WithEventLog(zerolog.New(io.Discard).Level(zerolog.InfoLevel)))
	pc := &proxy.Conn{ID: "bench", Identity: proxy.Identity{Name: "ci"}, Dst: netip.MustParseAddrPort("127.0.0.1:5432")}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	client, _ := net.Dial("tcp", ln.Addr().String())
	defer client.Close()
	server, _ := ln.Accept()
	pc.Client = server.(*net.TCPConn)
	c, err := newConn(pc, e.p.cfg.Policy.Current())
	if err != nil {
		b.Fatal(err)
	}
	rec := &recorder{p: e.p, c: c}
	if err := rec.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer rec.finish("closed")
	en := &enforcer{p: e.p, c: c, rec: rec}
	req := protocol.Request{Operation: protocol.OpQuery, Text: "SELECT id, name FROM customers WHERE id = 42"}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if v := en.Decide(ctx, req); v.Action != protocol.Allow {
			b.Fatalf("verdict %+v", v)
		}
	}
}

// TestDialUpstreamKeepalive: an upstream socket has keepalive on with the
// host's timers, and Nagle off.
func TestDialUpstreamKeepalive(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := dialUpstream(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	host, err := os.ReadFile("/proc/sys/net/ipv4/tcp_keepalive_time")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var keepalive, idle, nodelay int
	rc.Control(func(fd uintptr) {
		keepalive, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		nodelay, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY)
	})
	if keepalive == 0 || strconv.Itoa(idle) != strings.TrimSpace(string(host)) || nodelay == 0 {
		t.Errorf("upstream socket: SO_KEEPALIVE %d, TCP_KEEPIDLE %d (host: %s), TCP_NODELAY %d; want keepalive on the host's timers, no Nagle",
			keepalive, idle, strings.TrimSpace(string(host)), nodelay)
	}
}

// TestSessionSlotFreedAtClose: an identity's session slot is free once its
// connection closes, not once its end is stored, which waits for a commit:
// with a limit of one and the database locked by another connection, an agent
// whose connection ended is let in again.
func TestSessionSlotFreedAtClose(t *testing.T) {
	e := newEnv(t, fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
		if s.Refuse != nil {
			s.Agent.Write([]byte(s.Refuse.Error()))
			return s.Refuse
		}
		if err := s.Recorder.Start(ctx); err != nil {
			return err
		}
		s.Agent.Write([]byte("bye\n"))
		return nil
	}})
	ctx := context.Background()
	db, err := sql.Open("sqlite", e.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lock, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	unlock := sync.OnceFunc(func() { lock.ExecContext(ctx, "ROLLBACK"); lock.Close() })
	defer unlock()
	var dones []chan struct{}
	for i := range 2 {
		agent, done := e.serve(t, fmt.Sprintf("s%d", i), "127.0.0.1:5432")
		dones = append(dones, done)
		if got, _ := io.ReadAll(agent); string(got) != "bye\n" {
			t.Fatalf("session %d: the agent read %q, want the session's own bye", i, got)
		}
		// The slot is given back just after the close the agent saw.
		for deadline := time.Now().Add(5 * time.Second); e.p.limits.held(sessionSlot, "ci") > 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("session %d: its slot still taken 5 s after its connection closed", i)
			}
		}
		select {
		case <-done:
			t.Fatalf("session %d: its end was stored with the database locked", i)
		default:
		}
	}
	unlock()
	for _, done := range dones {
		<-done
	}
}

// held is how many slots of kind identity holds.
func (l *sessionLimits) held(kind slotKind, identity string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open[slotKey{kind, identity}]
}

// TestDialUpstream: the upstream dial, which starts its connect before the
// runtime's (connectEarly), connects over IPv4 and IPv6 and reports a
// refused connect as the runtime would.
func TestDialUpstream(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte("hi"))
				c.Close()
			}
		}()
		c, err := dialUpstream(context.Background(), ln.Addr().String())
		if err != nil {
			t.Fatalf("dial %s: %v", ln.Addr(), err)
		}
		if b, err := io.ReadAll(c); err != nil || string(b) != "hi" {
			t.Fatalf("read from %s: %q, %v", ln.Addr(), b, err)
		}
		c.Close()
		ln.Close()
		if _, err := dialUpstream(context.Background(), ln.Addr().String()); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial to a closed port %s: %v, want connection refused", ln.Addr(), err)
		}
	}
}
