package postgres

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// SQLSTATEs the decoder answers with when it, not the server, refuses.
const (
	codeInsufficientPrivilege = "42501"
	codeTooManyConnections    = "53300"
	codeRejectedConnection    = "08004"
	codeUnableToConnect       = "08001"
	codeConnectionFailure     = "08006"
	codeSystemError           = "58000"
)

// overCapHandshake bounds the handshake of a connection over its identity's
// session cap: long enough for a client on this host to send its startup
// and be told, too short for half-open connections to pile up.
const overCapHandshake = 2 * time.Second

// Decoder serves PostgreSQL sessions (protocol.Decoder). It answers the
// agent's startup itself, logs in upstream with the session's credential
// and relays, asking the session's Enforcer about every statement. It holds
// the cancel keys of every session it serves, so a CancelRequest through
// the proxy reaches the right backend. The zero value is ready to use.
type Decoder struct {
	cancels cancelKeys
}

// Serve implements protocol.Decoder. With s.Finish set, a session whose
// sides both went idle returns protocol.ErrDetached (see
// RelayConfig.Detached).
func (d *Decoder) Serve(ctx context.Context, s *protocol.Session) error {
	// The handshake is a function of its own so that its locals leave the
	// stack before the relay parks on it: the runtime halves an idle
	// goroutine's stack only while it uses less than a quarter, and a
	// session that does not detach keeps this goroutine.
	st, err := d.handshake(ctx, s)
	if st.agent == nil {
		s.Agent.Close()
		return err
	}
	sv := &serving{d: d, s: s, st: st}
	rc := RelayConfig{
		Enforcer: enforcer{s.Enforcer}, Recorder: recorder{s.Recorder},
		MaxBuffered: s.Limits.MaxBuffered, MessageTimeout: s.Limits.MessageTimeout,
		IdleAfter: idleAfter,
	}
	if s.Limits.Budget != nil {
		rc.Budget = s.Limits.Budget
	}
	if st.keeps {
		rc.Parking = func() { sv.park = s.Upstream.Parking(st.park) }
		rc.Keep = func(net.Conn) { sv.kept = true }
	}
	if s.Finish != nil {
		rc.Detached = func(err error) { s.Finish(sv.containedEnd(err)) }
	}
	err = Relay(ctx, st.agent, st.up.Conn, rc)
	if err == protocol.ErrDetached {
		return err
	}
	return sv.end(err)
}

// serving is a session the relay serves: what its end needs.
type serving struct {
	d  *Decoder
	s  *protocol.Session
	st started
	// park, kept: the agent left cleanly and the server's session may be
	// left for the identity's next one (RelayConfig.Parking, Keep).
	park func(io.Closer) bool
	kept bool
}

// end ends a session whose relay returned err, and returns Serve's
// result.
func (sv *serving) end(err error) error {
	defer sv.s.Agent.Close()
	defer sv.d.cancels.remove(sv.st.key)
	if sv.park != nil || sv.kept {
		// The agent has gone; the server's session is left for the
		// identity's next one. (Relay calls Parking before Keep.)
		var reset io.Closer
		if sv.kept && sv.st.up.reset() == nil {
			reset = sv.st.up
		}
		if (sv.park == nil || !sv.park(reset)) && sv.kept {
			sv.st.up.Close()
		}
	}
	var pe *ProtocolError
	var le *LimitError
	switch {
	case errors.As(err, &le):
		return &protocol.LimitError{Limit: le.Limit, Msg: le.Msg}
	case errors.As(err, &pe):
		return &protocol.ViolationError{Msg: pe.Msg}
	}
	return err
}

// containedEnd is end for a detached session, on a goroutine of the
// relay's that no caller of Serve contains: a panic in it (the server
// session's reset reads the server's bytes) closes the server connection,
// kept or not, and is the session's result.
func (sv *serving) containedEnd(relayErr error) (err error) {
	defer protocol.Recover("postgres session's end", &err, sv.st.up)
	return sv.end(relayErr)
}

// idleAfter is how long a session's agent stays silent before its relay's
// client side gives its goroutine back (RelayConfig.IdleAfter): long
// enough that a busy session never pays for it (a watch and a new
// goroutine per idle spell).
const idleAfter = time.Second

// started is a session the handshake started: the agent's connection (TLS
// or not), the logged-in upstream, the cancel key the agent was given,
// registered, and the key the upstream may be parked under when the agent
// leaves, if the target keeps connections (keeps).
type started struct {
	agent net.Conn
	up    *Upstream
	key   CancelKey
	park  string
	keeps bool
}

// handshake answers the agent's startup, logs in upstream (or resumes a
// server session an ended one of the identity parked) and greets the
// agent as the server, then starts the session's recording. Without an
// agent connection the session is over with err (nil for a cancel request
// forwarded): the agent has been told and nothing is left open but
// s.Agent.
func (d *Decoder) handshake(ctx context.Context, s *protocol.Session) (st started, err error) {
	timeout := s.Handshake
	if s.Refuse != nil {
		// A connection over the cap still gets a short handshake: it may be
		// a cancel request, which needs no slot, and a session is told as
		// a full server tells it.
		timeout = overCapHandshake
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// TLS ends here with a leaf for the name the agent dialed; the
	// upstream connection is separate. The configuration is the
	// handshake's: the session keeps only what its TLS connection holds.
	hello, err := AcceptClient(hctx, s.Agent, ClientConfig{TLS: s.TLS})
	if err != nil {
		if pe := (*ProtocolError)(nil); errors.As(err, &pe) {
			return st, &protocol.ViolationError{Msg: pe.Msg}
		}
		return st, &protocol.RefusedError{Outcome: "handshake", Err: err}
	}
	agent := hello.Conn
	if hello.Cancel != nil {
		return st, d.forwardCancel(s.Identity, *hello.Cancel)
	}
	if v := s.Connect; v.Action == protocol.Deny {
		return st, refuse(agent, "denied", codeInsufficientPrivilege,
			fmt.Sprintf("interlock: connection denied by policy rule %q%s", v.Rule, suffix(v.Message)))
	}
	settings, err := startupSettings(hello.Startup.Parameters)
	if err != nil {
		// Not a policy's verdict: these cannot be decided at all.
		return st, refuse(agent, "denied", codeInsufficientPrivilege, "interlock: "+err.Error())
	}
	if s.Refuse != nil {
		refuse(agent, "session limit", codeTooManyConnections, "interlock: sorry, too many sessions: "+s.Refuse.Msg)
		return st, s.Refuse
	}
	for _, name := range settings {
		// A setting in the StartupMessage changes the session as SET would,
		// with no statement to decide later.
		if v := s.Enforcer.Decide(hctx, protocol.Request{Operation: protocol.OpStartup, Text: name}); v.Action == protocol.Deny {
			return st, refuse(agent, "denied", codeInsufficientPrivilege, fmt.Sprintf(
				"interlock: startup parameter %q denied by policy rule %q%s", name, v.Rule, suffix(v.Message)))
		}
	}
	if err := s.Recorder.Ready(); err != nil {
		// Before a server's login, which an unrecorded session must not
		// cost (Start below says the same for a cause found later).
		refuse(agent, protocol.RecordingUnavailable, codeSystemError, "interlock: "+protocol.Unrecordable)
		return st, &protocol.RefusedError{Outcome: protocol.RecordingUnavailable, Err: err}
	}
	park := reuseKey(hello.Startup)
	up, keeps := d.resume(s, park)
	if up == nil {
		if up, err = d.login(hctx, s, agent, hello.Startup); err != nil {
			return st, err
		}
	}
	key := d.cancels.add(cancelTarget{upstream: s.Upstream.Addr(), key: up.Key, identity: s.Identity})
	if err := GreetClient(agent, hello.Startup, up, key); err != nil {
		d.cancels.remove(key)
		up.Conn.Close()
		return st, &protocol.RefusedError{Outcome: "agent gone", Err: err}
	}
	if err := s.Recorder.Start(ctx); err != nil {
		d.cancels.remove(key)
		up.Conn.Close()
		return st, refuse(agent, protocol.RecordingUnavailable, codeSystemError, "interlock: "+protocol.Unrecordable)
	}
	if !keeps {
		// Only a connection to be parked needs what greeted the agent;
		// an idle session should not hold it.
		up.Parameters, up.Notices, park = nil, nil, ""
	}
	return started{agent: agent, up: up, key: key, park: park, keeps: keeps}, nil
}

// resume takes the server session an ended session of the identity parked
// under park, if there is one the server has not ended meanwhile; keeps
// reports whether the target keeps server sessions at all. A dead one is
// closed, and the session logs in with its credential (already the
// session's).
func (d *Decoder) resume(s *protocol.Session, park string) (*Upstream, bool) {
	c, keeps := s.Upstream.Resume(park)
	if c == nil {
		return nil, keeps
	}
	up, ok := c.(*Upstream)
	if !ok || !up.quiet() {
		c.Close()
		return nil, keeps
	}
	return up, keeps
}

// login dials the target and logs in with the session's credential, for
// the database and settings of the agent's startup. On failure the agent
// has been told.
func (d *Decoder) login(ctx context.Context, s *protocol.Session, agent net.Conn, startup *Startup) (*Upstream, error) {
	cred, err := s.Upstream.Credential(ctx, protocol.CredentialRequest{})
	if errors.Is(err, protocol.ErrNoCredentialSource) {
		return nil, refuse(agent, "credential not issued", codeRejectedConnection,
			fmt.Sprintf("interlock: no credential source is configured for target %q; interlockd's credentials settings must name one", s.Target))
	}
	if err != nil {
		return nil, refuse(agent, "credential not issued", codeRejectedConnection,
			fmt.Sprintf("interlock: the credential for target %q could not be issued; try again later", s.Target))
	}
	upConn, err := s.Upstream.Dial(ctx)
	if err != nil {
		return nil, refuse(agent, "upstream unreachable", codeUnableToConnect, fmt.Sprintf("interlock: cannot reach %s: %v", s.Target, err))
	}
	up, err := ConnectUpstream(ctx, upConn, UpstreamConfig{
		User: cred.Username, Password: cred.Password, Database: startup.Database,
		Parameters: startup.ForwardParameters(),
	})
	if err != nil {
		upConn.Close()
		if se := (*ServerError)(nil); errors.As(err, &se) {
			tell(agent, se.Response)
			return nil, &protocol.RefusedError{Outcome: "upstream refused", Err: err}
		}
		return nil, refuse(agent, "upstream login failed", codeConnectionFailure, "interlock: upstream login failed: "+err.Error())
	}
	return up, nil
}

// reuseKey is what a server session serves besides its identity and
// target: the database and the settings of the startup it was opened
// with, which DISCARD ALL returns it to.
func reuseKey(st *Startup) string {
	params := st.ForwardParameters()
	var b strings.Builder
	b.WriteString(st.Database)
	for _, k := range sortedKeys(params) {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(params[k])
	}
	return b.String()
}

// refuse tells the agent, with a FATAL ErrorResponse, why its session
// cannot start, and returns the refusal for the pipeline to audit.
func refuse(agent net.Conn, outcome, code, msg string) error {
	resp := &pgproto3.ErrorResponse{Severity: "FATAL", Code: code, Message: msg}
	tell(agent, resp)
	return &protocol.RefusedError{Outcome: outcome, Err: errors.New(msg)}
}

func tell(agent net.Conn, resp *pgproto3.ErrorResponse) {
	agent.SetWriteDeadline(time.Now().Add(5 * time.Second))
	WriteError(agent, resp)
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

// enforcer adapts the session's Enforcer to the relay's: every statement
// is a protocol.OpQuery request.
type enforcer struct{ e protocol.Enforcer }

func (e enforcer) Query(ctx context.Context, sql string) Verdict {
	v := e.e.Decide(ctx, protocol.Request{Operation: protocol.OpQuery, Text: sql})
	out := Verdict{Action: Forward, Rule: v.Rule, Message: v.Message, ApprovalID: v.ApprovalID, Wait: v.Wait}
	switch v.Action {
	case protocol.Deny:
		out.Action, out.Code, out.Position = Deny, v.Code, int32(v.Position)
	case protocol.Hold:
		out.Action = Hold
	case protocol.Mask:
		if m := v.Mask; m != nil {
			out.Mask = MaskText(func(cols []string) TextMasker {
				if fm := m.Plan(cols); fm != nil {
					return fm
				}
				return nil
			})
		}
	}
	return out
}

// recorder adapts the session's Recorder to the relay's.
type recorder struct{ r protocol.Recorder }

func (r recorder) Record(m *Message) {
	body := m.Body
	if m.FromClient && m.Type == 'p' {
		// The agent's password (or SCRAM proof) never lands in a recording.
		body = nil
	}
	r.r.Record(protocol.Message{FromClient: m.FromClient, Type: m.Type, Body: body, Time: m.Time})
}

// cancelKeys maps the cancel keys interlockd hands agents to the upstream
// backends they stand for, so a CancelRequest through the proxy cancels the
// right query without the agent ever learning the server's secret. The
// agent's key carries the backend's real process ID, which the agent sees
// anyway (pg_backend_pid(), pg_stat_activity), and a secret of interlockd's
// own; two servers may have backends with one PID, so the pair is the key.
type cancelKeys struct {
	mu sync.Mutex
	m  map[cancelID]cancelTarget
}

type cancelID struct {
	pid    uint32
	secret [4]byte
}

type cancelTarget struct {
	upstream string
	key      CancelKey
	identity string
}

// add registers t and returns the key to give the agent: t's process ID
// with a fresh random secret.
func (k *cancelKeys) add(t cancelTarget) CancelKey {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil {
		k.m = map[cancelID]cancelTarget{}
	}
	id := cancelID{pid: t.key.ProcessID}
	for {
		rand.Read(id.secret[:])
		if _, taken := k.m[id]; !taken {
			break
		}
	}
	k.m[id] = t
	return CancelKey{ProcessID: id.pid, SecretKey: append([]byte(nil), id.secret[:]...)}
}

func (k *cancelKeys) remove(key CancelKey) {
	k.mu.Lock()
	delete(k.m, cancelID{pid: key.ProcessID, secret: [4]byte(key.SecretKey)})
	k.mu.Unlock()
}

func (k *cancelKeys) find(key CancelKey) (cancelTarget, bool) {
	if len(key.SecretKey) != 4 {
		return cancelTarget{}, false
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	t, ok := k.m[cancelID{pid: key.ProcessID, secret: [4]byte(key.SecretKey)}]
	return t, ok
}

// cancelDialTimeout bounds the connect of a forwarded cancel request.
const cancelDialTimeout = 10 * time.Second

// forwardCancel sends a CancelRequest upstream for the backend key stands
// for. As a server does, it ignores a key it does not know, or one another
// identity was given.
func (d *Decoder) forwardCancel(identity string, key CancelKey) error {
	t, ok := d.cancels.find(key)
	if !ok || t.identity != identity {
		return nil
	}
	conn, err := net.DialTimeout("tcp", t.upstream, cancelDialTimeout)
	if err != nil {
		return fmt.Errorf("forward cancel: %w", err)
	}
	defer conn.Close()
	return SendCancel(conn, t.key)
}

// startupSettings lists the run-time parameters a StartupMessage sets: its
// parameters other than user and database (protocol options, _pq_.*, are
// the decoder's), and the settings the options parameter gives with
// "-c name=value" or "--name=value". Anything else in options is an error,
// since it could carry a setting in a form not parsed here; so is a
// replication connection, which no statement policy can decide.
func startupSettings(params map[string]string) ([]string, error) {
	names := make([]string, 0, len(params))
	for _, name := range sortedKeys(params) {
		value := params[name]
		switch strings.ToLower(name) {
		case "user", "database":
			continue
		case "replication":
			return nil, fmt.Errorf("replication connections are not allowed through interlock")
		case "options":
			opts, err := optionSettings(value)
			if err != nil {
				return nil, err
			}
			names = append(names, opts...)
			continue
		}
		if strings.HasPrefix(name, "_pq_.") {
			continue
		}
		names = append(names, name)
	}
	return names, nil
}

// sortedKeys is params' names in order, in one allocation: every session's
// start sorts its parameters twice, and slices.Sorted's collection grew
// its slice a few times over for each.
func sortedKeys(params map[string]string) []string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func optionSettings(options string) ([]string, error) {
	var names []string
	f := strings.Fields(options)
	for i := 0; i < len(f); i++ {
		var setting string
		switch {
		case f[i] == "-c" && i+1 < len(f):
			i++
			setting = f[i]
		case strings.HasPrefix(f[i], "-c"):
			setting = f[i][2:]
		case strings.HasPrefix(f[i], "--"):
			setting = f[i][2:]
		default:
			return nil, fmt.Errorf("startup option %q is not allowed through interlock", f[i])
		}
		name, _, ok := strings.Cut(setting, "=")
		if !ok {
			return nil, fmt.Errorf("startup option %q is not allowed through interlock", f[i])
		}
		names = append(names, strings.ReplaceAll(name, "-", "_"))
	}
	return names, nil
}
