package ssh

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// Message types of the recording (see the package comment).
const (
	MsgChannelOpen    = 'o'
	MsgChannelRequest = 'q'
	MsgGlobalRequest  = 'g'
	MsgInterlock      = 'i'
	MsgExit           = 'x'
	MsgStdin          = 'w'
	MsgStdout         = 'd'
	MsgStderr         = 'e'
	MsgBytes          = 'n'
)

// MaxRecordedStream caps, per command and stream (stdin, stdout, stderr),
// the bytes the recording keeps; the counts are always recorded.
const MaxRecordedStream = 64 << 10

// DefaultMaxChannels bounds the session channels one connection may have
// open at once when Decoder.MaxChannels is 0: OpenSSH's MaxSessions.
const DefaultMaxChannels = 10

// overCapHandshake bounds the handshake of a connection refused for its
// identity's session cap.
const overCapHandshake = 2 * time.Second

// deniedStatus is the exit status of a denied command: the shell's "found
// but cannot execute".
const deniedStatus = 126

// Target is what a session's target says about SSH.
type Target struct {
	// HostKey is what interlockd presents to the agent: a host
	// certificate for the names the agent may have dialed.
	HostKey xssh.Signer
	// User, when set, is the login user upstream; otherwise the user the
	// agent asked for.
	User string
	// KnownHosts is the file the server's host key is verified against.
	KnownHosts string
}

// Decoder serves SSH sessions (protocol.Decoder). Safe for concurrent use.
type Decoder struct {
	// Target returns the SSH settings of a session's target.
	Target func(s *protocol.Session) (Target, error)
	// MaxChannels bounds the session channels open at once on one
	// connection (DefaultMaxChannels if 0).
	MaxChannels int
}

// Serve implements protocol.Decoder.
func (d *Decoder) Serve(ctx context.Context, s *protocol.Session) error {
	defer s.Agent.Close()
	t, err := d.Target(s)
	if err != nil {
		return &protocol.RefusedError{Outcome: "target", Err: err}
	}
	timeout := s.Handshake
	if s.Refuse != nil {
		// A connection over its identity's cap is only told so: long
		// enough for a client on this host, too short for half-open
		// connections to pile up.
		timeout = overCapHandshake
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &conn{s: s, t: t, maxChannels: d.MaxChannels}
	if c.maxChannels <= 0 {
		c.maxChannels = DefaultMaxChannels
	}
	login := func(m xssh.ConnMetadata) (*xssh.Permissions, error) { return nil, c.login(hctx, m.User()) }
	cfg := &xssh.ServerConfig{
		NoClientAuth:         true,
		NoClientAuthCallback: login,
		PublicKeyCallback:    func(m xssh.ConnMetadata, _ xssh.PublicKey) (*xssh.Permissions, error) { return login(m) },
		MaxAuthTries:         3,
		ServerVersion:        "SSH-2.0-Interlock",
	}
	cfg.AddHostKey(t.HostKey)
	// A client that stalls anywhere before the session starts (key
	// exchange, authentication) is cut off with the handshake's bound.
	deadline, _ := hctx.Deadline()
	s.Agent.SetDeadline(deadline)
	agent, ciphers, err := peekClientKexInit(s.Agent, cfg.ServerVersion)
	cfg.Ciphers = ciphers
	var (
		sconn *xssh.ServerConn
		chans <-chan xssh.NewChannel
		reqs  <-chan *xssh.Request
	)
	if err == nil {
		sconn, chans, reqs, err = xssh.NewServerConn(agent, cfg)
	}
	if err != nil {
		c.closeUpstream()
		if c.refused != nil {
			return c.refused
		}
		if hctx.Err() != nil {
			err = fmt.Errorf("the SSH handshake took longer than %s: %w", timeout, err)
		}
		return &protocol.RefusedError{Outcome: "handshake", Err: err}
	}
	s.Agent.SetDeadline(time.Time{})
	defer c.closeUpstream()
	defer sconn.Close()
	c.sconn = sconn
	// The session ends with interlockd: closing the connection ends its
	// channels, and they their commands' upstream channels.
	stop := context.AfterFunc(ctx, func() { sconn.Close() })
	defer stop()
	go c.globalRequests(ctx, reqs)
	var wg sync.WaitGroup
	for nc := range chans {
		c.channel(ctx, nc, &wg)
	}
	wg.Wait()
	return c.failure()
}

// conn is one agent connection.
type conn struct {
	s           *protocol.Session
	t           Target
	maxChannels int

	// loginOnce guards the upstream login, which the agent's first
	// authentication attempt makes; later attempts get its outcome.
	loginOnce sync.Once
	loginErr  error
	// refused is what Serve returns when the login was refused.
	refused error
	up      *xssh.Client

	// decide serialises recording a request and deciding it, so the
	// decision is filed with its own request.
	decide sync.Mutex

	mu   sync.Mutex
	open int

	// sconn is the agent's connection once logged in; failed, the defect
	// that ended it (contain).
	sconn  *xssh.ServerConn
	failMu sync.Mutex
	failed error
}

// contain is deferred by every goroutine that serves the connection: a
// panic there ends this connection, with the defect as how it ended,
// instead of interlockd (protocol.Contained).
func (c *conn) contain(where string) {
	if err := protocol.Contained(where, recover()); err != nil {
		c.fail(err)
	}
}

// fail ends the connection with err: its channels end with it, and Serve
// returns err.
func (c *conn) fail(err error) {
	c.failMu.Lock()
	if c.failed == nil {
		c.failed = err
	}
	c.failMu.Unlock()
	c.sconn.Close()
}

func (c *conn) failure() error {
	c.failMu.Lock()
	defer c.failMu.Unlock()
	return c.failed
}

// login authenticates upstream as user (the target's user if it names
// one), with a certificate issued for a key made for this session, and
// starts the recording. A refusal reaches the agent as an authentication
// banner, the only text an SSH client shows before it is logged in.
func (c *conn) login(ctx context.Context, user string) error {
	first := false
	c.loginOnce.Do(func() {
		first = true
		c.loginErr = c.loginUpstream(ctx, user)
	})
	var re *refusal
	if c.loginErr == nil || !errors.As(c.loginErr, &re) {
		return c.loginErr
	}
	if !first {
		return errors.New(re.err.Outcome)
	}
	return &xssh.BannerError{Err: re.err, Message: "interlock: " + re.msg + "\r\n"}
}

// refusal is a login refused, with what the agent is told.
type refusal struct {
	err *protocol.RefusedError
	msg string
}

func (r *refusal) Error() string { return r.err.Error() }

func (c *conn) refuse(outcome, msg string, err error) error {
	if err == nil {
		err = errors.New(msg)
	}
	re := &protocol.RefusedError{Outcome: outcome, Err: err}
	c.refused = re
	return &refusal{err: re, msg: msg}
}

func (c *conn) loginUpstream(ctx context.Context, user string) error {
	s := c.s
	if v := s.Connect; v.Action == protocol.Deny {
		return c.refuse("denied", fmt.Sprintf("connection denied by policy rule %q%s", v.Rule, suffix(v.Message)), nil)
	}
	if s.Refuse != nil {
		// The pipeline audits the limit itself: return it as it came.
		c.refused = s.Refuse
		return &refusal{err: &protocol.RefusedError{Outcome: "session limit", Err: s.Refuse}, msg: "sorry, too many sessions: " + s.Refuse.Msg}
	}
	if err := s.Recorder.Ready(); err != nil {
		// Before the credential and the server's login, which an
		// unrecorded session must not cost.
		return c.refuse(protocol.RecordingUnavailable, protocol.Unrecordable, err)
	}
	if c.t.User != "" {
		user = c.t.User
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return c.refuse("credential not issued", "no key could be made for the session", err)
	}
	signer, err := xssh.NewSignerFromKey(key)
	if err != nil {
		return c.refuse("credential not issued", "no key could be made for the session", err)
	}
	cred, err := s.Upstream.Credential(ctx, protocol.CredentialRequest{PublicKey: xssh.MarshalAuthorizedKey(signer.PublicKey()), User: user})
	if errors.Is(err, protocol.ErrNoCredentialSource) {
		return c.refuse("credential not issued", fmt.Sprintf("no credential source is configured for target %q; interlockd's credentials settings must name one", s.Target), err)
	}
	if err != nil {
		return c.refuse("credential not issued", fmt.Sprintf("the credential for target %q could not be issued; try again later", s.Target), err)
	}
	certSigner, err := loginSigner(cred, signer)
	if err != nil {
		return c.refuse("credential not issued", fmt.Sprintf("the credential for target %q is neither a certificate for the session's key nor a private key", s.Target), err)
	}
	check, err := knownhosts.New(c.t.KnownHosts)
	if err != nil {
		return c.refuse("upstream host key", fmt.Sprintf("the known hosts of target %q cannot be read", s.Target), err)
	}
	cfg := &xssh.ClientConfig{User: user, Auth: []xssh.AuthMethod{xssh.PublicKeys(certSigner)}, HostKeyCallback: check}
	up, err := c.dial(ctx, cfg)
	var ke *knownhosts.KeyError
	if errors.As(err, &ke) && len(ke.Want) > 0 {
		// The server may hold a key of each type and offer first one the
		// file does not list: ask again for the types the file knows.
		for _, k := range ke.Want {
			cfg.HostKeyAlgorithms = append(cfg.HostKeyAlgorithms, algorithms(k.Key.Type())...)
		}
		up, err = c.dial(ctx, cfg)
	}
	switch {
	case errors.As(err, &ke):
		return c.refuse("upstream host key", fmt.Sprintf("the host key of %s is not the one %s holds for it; refusing to log in", s.Upstream.Addr(), c.t.KnownHosts), err)
	case errors.Is(err, errDial):
		return c.refuse("upstream unreachable", fmt.Sprintf("cannot reach %s: %v", s.Target, errors.Unwrap(err)), err)
	case err != nil:
		return c.refuse("upstream login failed", fmt.Sprintf("login to %s as %q failed: %v", s.Target, user, err), err)
	}
	c.up = up
	if err := s.Recorder.Start(ctx); err != nil {
		return c.refuse(protocol.RecordingUnavailable, protocol.Unrecordable, err)
	}
	return nil
}

var errDial = errors.New("dial upstream")

// dial connects and logs in upstream within ctx.
func (c *conn) dial(ctx context.Context, cfg *xssh.ClientConfig) (*xssh.Client, error) {
	nc, err := c.s.Upstream.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errDial, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		nc.SetDeadline(deadline)
	}
	cc, chans, reqs, err := xssh.NewClientConn(nc, c.s.Upstream.Addr(), cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return xssh.NewClient(cc, chans, reqs), nil
}

// loginSigner is what logs in upstream: the session's key under the
// credential's certificate, or a static private key for hosts that trust no
// certificate authority.
func loginSigner(cred protocol.Credential, key xssh.Signer) (xssh.Signer, error) {
	if len(cred.PrivateKey) > 0 {
		return xssh.ParsePrivateKey(cred.PrivateKey)
	}
	return certificateSigner(cred.Certificate, key)
}

// certificateSigner signs with key under the certificate cert (authorized
// keys form), which must certify key.
func certificateSigner(cert []byte, key xssh.Signer) (xssh.Signer, error) {
	pub, _, _, _, err := xssh.ParseAuthorizedKey(cert)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	c, ok := pub.(*xssh.Certificate)
	if !ok {
		return nil, errors.New("parse certificate: not a certificate")
	}
	return xssh.NewCertSigner(c, key)
}

// algorithms lists the host key algorithms that verify with a key of
// type t.
func algorithms(t string) []string {
	if t == xssh.KeyAlgoRSA {
		return []string{xssh.KeyAlgoRSASHA512, xssh.KeyAlgoRSASHA256, xssh.KeyAlgoRSA}
	}
	return []string{t}
}

func (c *conn) closeUpstream() {
	if c.up != nil {
		c.up.Close()
	}
}

// record records a request of the agent and decides it, as one step.
func (c *conn) record(ctx context.Context, typ byte, body string, r protocol.Request) protocol.Verdict {
	c.decide.Lock()
	defer c.decide.Unlock()
	c.s.Recorder.Record(protocol.Message{FromClient: true, Type: typ, Body: []byte(body), Time: time.Now()})
	return c.s.Enforcer.Decide(ctx, r)
}

// globalRequests refuses every global request: port forwarding is decided
// (for the audit trail) and refused; keepalives are answered as a server
// that knows none.
func (c *conn) globalRequests(ctx context.Context, reqs <-chan *xssh.Request) {
	defer c.contain("global requests")
	for r := range reqs {
		switch r.Type {
		case "tcpip-forward", "cancel-tcpip-forward", "streamlocal-forward@openssh.com", "cancel-streamlocal-forward@openssh.com":
			c.record(ctx, MsgGlobalRequest, r.Type, protocol.Request{Operation: r.Type})
		}
		if r.WantReply {
			r.Reply(false, nil)
		}
	}
}

// channel accepts a session channel, within the connection's bound, and
// refuses every other kind.
func (c *conn) channel(ctx context.Context, nc xssh.NewChannel, wg *sync.WaitGroup) {
	if nc.ChannelType() != "session" {
		what := nc.ChannelType()
		var fwd struct {
			Host     string
			Port     uint32
			OrigHost string
			OrigPort uint32
		}
		if xssh.Unmarshal(nc.ExtraData(), &fwd) == nil {
			what += " " + net.JoinHostPort(fwd.Host, fmt.Sprint(fwd.Port))
		}
		c.record(ctx, MsgChannelOpen, what, protocol.Request{Operation: nc.ChannelType(), Text: what})
		nc.Reject(xssh.Prohibited, "interlock: "+nc.ChannelType()+" channels are not allowed")
		return
	}
	c.mu.Lock()
	full := c.open >= c.maxChannels
	if !full {
		c.open++
	}
	c.mu.Unlock()
	if full {
		nc.Reject(xssh.ResourceShortage, fmt.Sprintf("interlock: at most %d channels at once", c.maxChannels))
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		c.release()
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer c.release()
		defer c.contain("session channel")
		c.session(ctx, ch, reqs)
	}()
}

func (c *conn) release() {
	c.mu.Lock()
	c.open--
	c.mu.Unlock()
}

// session serves one session channel: settings until its exec or shell,
// which is decided; then, if allowed, the upstream channel it runs on.
func (c *conn) session(ctx context.Context, ch xssh.Channel, reqs <-chan *xssh.Request) {
	defer ch.Close()
	var pty *xssh.Request
	for r := range reqs {
		switch r.Type {
		case "pty-req":
			// The terminal of the command decided next: it goes upstream
			// with it, if that is allowed. Recorded with its size, which
			// an asciicast of the session needs.
			pty = r
			c.s.Recorder.Record(protocol.Message{FromClient: true, Type: MsgChannelRequest, Body: []byte(ptyBody(r.Payload)), Time: time.Now()})
			r.Reply(true, nil)
			continue
		case "window-change":
			if pty != nil {
				pty = resized(pty, r.Payload)
			}
			continue
		case "exec", "shell":
		case "subsystem":
			if subsystem(r.Payload) != "sftp" {
				c.refuseRequest(ctx, r)
				continue
			}
			// Each sftp operation is decided on its own; the subsystem
			// is only recorded.
			c.s.Recorder.Record(protocol.Message{FromClient: true, Type: MsgChannelRequest, Body: []byte("subsystem sftp"), Time: time.Now()})
			go c.drainRequests(ctx, reqs)
			c.serveSFTP(ctx, ch, r)
			return
		default:
			c.refuseRequest(ctx, r)
			continue
		}
		var exec struct{ Command string }
		body, req := r.Type, protocol.Request{Operation: r.Type}
		if r.Type == "exec" {
			if err := xssh.Unmarshal(r.Payload, &exec); err != nil {
				r.Reply(false, nil)
				continue
			}
			body, req.Text = "exec "+exec.Command, exec.Command
		}
		v := c.record(ctx, MsgChannelRequest, body, req)
		if v.Action == protocol.Hold {
			r.Reply(true, nil)
			c.tell(ch, fmt.Sprintf("held for approval %s (policy rule %q); waiting for a reviewer", v.ApprovalID, v.Rule))
			v = waitApproval(ctx, v)
			if v.Action == protocol.Deny {
				c.deny(ch, v)
				return
			}
			c.run(ctx, ch, reqs, pty, r, false)
			return
		}
		if v.Action == protocol.Deny {
			r.Reply(true, nil)
			c.deny(ch, v)
			return
		}
		c.run(ctx, ch, reqs, pty, r, true)
		return
	}
}

// waitApproval waits for a held request's approval and returns the verdict
// it comes to.
func waitApproval(ctx context.Context, v protocol.Verdict) protocol.Verdict {
	if v.Wait != nil {
		if ok, reason := v.Wait(ctx); ok {
			return protocol.Verdict{Action: protocol.Allow, Rule: v.Rule}
		} else if reason != "" {
			return protocol.Verdict{Action: protocol.Deny, Rule: v.Rule, Message: "not approved: " + reason}
		}
	}
	return protocol.Verdict{Action: protocol.Deny, Rule: v.Rule, Message: "not approved"}
}

// ptyBody is how the recording holds a pty request: "pty-req TERM
// COLSxROWS".
func ptyBody(payload []byte) string {
	var p struct {
		Term             string
		Cols, Rows, W, H uint32
		Modes            string
	}
	if xssh.Unmarshal(payload, &p) != nil {
		return "pty-req"
	}
	return fmt.Sprintf("pty-req %s %dx%d", p.Term, p.Cols, p.Rows)
}

// resized returns the pty request with the size of a window-change.
func resized(pty *xssh.Request, change []byte) *xssh.Request {
	var p struct {
		Term             string
		Cols, Rows, W, H uint32
		Modes            string
	}
	var w struct{ Cols, Rows, W, H uint32 }
	if xssh.Unmarshal(pty.Payload, &p) != nil || xssh.Unmarshal(change, &w) != nil {
		return pty
	}
	p.Cols, p.Rows, p.W, p.H = w.Cols, w.Rows, w.W, w.H
	return &xssh.Request{Type: pty.Type, Payload: xssh.Marshal(&p)}
}

// subsystem returns the name a subsystem request asks for.
func subsystem(payload []byte) string {
	var name struct{ Name string }
	if xssh.Unmarshal(payload, &name) != nil {
		return ""
	}
	return name.Name
}

// drainRequests refuses a channel's further requests once it serves a
// subsystem: a terminal or signal means nothing to one.
func (c *conn) drainRequests(ctx context.Context, reqs <-chan *xssh.Request) {
	defer c.contain("session channel requests")
	for r := range reqs {
		c.refuseRequest(ctx, r)
	}
}

// refuseRequest records, decides (for the audit trail) and refuses a
// channel request this package does not pass on.
func (c *conn) refuseRequest(ctx context.Context, r *xssh.Request) {
	req := protocol.Request{Operation: r.Type}
	switch r.Type {
	case "subsystem", "env":
		var name struct {
			Name string
			Rest []byte `ssh:"rest"`
		}
		if xssh.Unmarshal(r.Payload, &name) == nil {
			req.Text = name.Name
		}
	}
	body := r.Type
	if req.Text != "" {
		body += " " + req.Text
	}
	c.record(ctx, MsgChannelRequest, body, req)
	if r.WantReply {
		r.Reply(false, nil)
	}
}

// tell writes an interlock message on the channel's stderr and records it.
func (c *conn) tell(ch xssh.Channel, msg string) {
	line := "interlock: " + msg + "\n"
	c.s.Recorder.Record(protocol.Message{Type: MsgInterlock, Body: []byte(line), Time: time.Now()})
	ch.Stderr().Write([]byte(line))
}

// deny ends a channel whose request was denied as a shell ends a command
// it cannot execute: the reason on stderr, exit status 126.
func (c *conn) deny(ch xssh.Channel, v protocol.Verdict) {
	c.tell(ch, fmt.Sprintf("denied by policy rule %q%s", v.Rule, suffix(v.Message)))
	c.exit(ch, "exit-status", xssh.Marshal(&struct{ Status uint32 }{deniedStatus}))
	ch.CloseWrite()
}

// exit sends an exit-status or exit-signal to the agent and records it.
func (c *conn) exit(ch xssh.Channel, typ string, payload []byte) {
	body := typ
	var status struct{ Status uint32 }
	var signal struct {
		Signal string
		Rest   []byte `ssh:"rest"`
	}
	switch {
	case typ == "exit-status" && xssh.Unmarshal(payload, &status) == nil:
		body += fmt.Sprintf(" %d", status.Status)
	case typ == "exit-signal" && xssh.Unmarshal(payload, &signal) == nil:
		body += " " + signal.Signal
	}
	c.s.Recorder.Record(protocol.Message{Type: MsgExit, Body: []byte(body), Time: time.Now()})
	ch.SendRequest(typ, false, payload)
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return ": " + msg
}

// run opens the upstream channel for an allowed exec or shell, sends it
// the pty and the request, and relays until the command ends. reply says
// whether the agent still awaits the answer to r (a held request got it).
func (c *conn) run(ctx context.Context, ch xssh.Channel, reqs <-chan *xssh.Request, pty, r *xssh.Request, reply bool) {
	answer := func(ok bool) {
		if reply && r.WantReply {
			r.Reply(ok, nil)
		}
	}
	up, upReqs, err := c.up.OpenChannel("session", nil)
	if err != nil {
		answer(false)
		return
	}
	defer up.Close()
	if pty != nil {
		if ok, err := up.SendRequest(pty.Type, true, pty.Payload); err != nil || !ok {
			answer(false)
			return
		}
	}
	ok, err := up.SendRequest(r.Type, true, r.Payload)
	if err != nil || !ok {
		answer(false)
		if !reply {
			c.tell(ch, "the server refused the "+r.Type+" request")
			c.exit(ch, "exit-status", xssh.Marshal(&struct{ Status uint32 }{255}))
		}
		return
	}
	answer(true)
	relay{c: c, agent: ch, up: up}.run(ctx, reqs, upReqs)
}

// relay carries one allowed command's streams between the agent's channel
// and the server's.
type relay struct {
	c     *conn
	agent xssh.Channel
	up    xssh.Channel
	// in, out and errs count the command's stdin, stdout and stderr.
	in, out, errs *stream
}

// stream is one of a command's byte streams as the recording sees it.
type stream struct {
	typ        byte
	fromClient bool
	n          atomic.Int64
}

func (r relay) run(ctx context.Context, agentReqs, upReqs <-chan *xssh.Request) {
	r.in = &stream{typ: MsgStdin, fromClient: true}
	r.out, r.errs = &stream{typ: MsgStdout}, &stream{typ: MsgStderr}
	var out sync.WaitGroup
	out.Add(2)
	go func() {
		defer out.Done()
		defer r.c.contain("stdout")
		r.copyDown(r.agent, r.up, r.out)
	}()
	go func() {
		defer out.Done()
		defer r.c.contain("stderr")
		r.copyDown(r.agent.Stderr(), r.up.Stderr(), r.errs)
	}()
	go r.copyUp()
	go r.agentRequests(ctx, agentReqs)
	// The server's requests end when its channel closes; how the command
	// ended is told after everything it wrote.
	var exits []*xssh.Request
	for q := range upReqs {
		switch q.Type {
		case "exit-status", "exit-signal":
			exits = append(exits, q)
		}
		if q.WantReply {
			q.Reply(false, nil)
		}
	}
	out.Wait()
	r.c.s.Recorder.Record(protocol.Message{Type: MsgBytes, Time: time.Now(), Body: fmt.Appendf(nil,
		"stdin %d, stdout %d, stderr %d bytes", r.in.n.Load(), r.out.n.Load(), r.errs.n.Load())})
	for _, q := range exits {
		r.c.exit(r.agent, q.Type, q.Payload)
	}
	r.agent.CloseWrite()
}

// keep counts p on s and records what of it falls within
// MaxRecordedStream.
func (r relay) keep(s *stream, p []byte) {
	if kept := s.n.Add(int64(len(p))) - int64(len(p)); kept < MaxRecordedStream {
		m := protocol.Message{FromClient: s.fromClient, Type: s.typ, Body: p[:min(int64(len(p)), MaxRecordedStream-kept)], Time: time.Now()}
		if s.fromClient {
			// The agent's messages are filed in order with its requests.
			r.c.decide.Lock()
			defer r.c.decide.Unlock()
		}
		r.c.s.Recorder.Record(m)
	}
}

// copyDown copies the server's output to the agent; if the agent is gone,
// the server's channel is closed so the command is not left writing.
func (r relay) copyDown(dst interface{ Write([]byte) (int, error) }, src interface{ Read([]byte) (int, error) }, s *stream) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.keep(s, buf[:n])
			if _, werr := dst.Write(buf[:n]); werr != nil {
				r.up.Close()
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// copyUp copies the agent's input to the server, and its end as EOF.
func (r relay) copyUp() {
	defer r.c.contain("stdin")
	buf := make([]byte, 32<<10)
	for {
		n, err := r.agent.Read(buf)
		if n > 0 {
			r.keep(r.in, buf[:n])
			if _, werr := r.up.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			r.up.CloseWrite()
			return
		}
	}
}

// agentRequests passes on the requests that shape a running command's
// terminal and refuses the others.
func (r relay) agentRequests(ctx context.Context, reqs <-chan *xssh.Request) {
	defer r.c.contain("command requests")
	for q := range reqs {
		switch q.Type {
		case "window-change", "signal":
			r.up.SendRequest(q.Type, false, q.Payload)
			if q.WantReply {
				q.Reply(true, nil)
			}
		default:
			r.c.refuseRequest(ctx, q)
		}
	}
	// The agent closed its channel: end the command's.
	r.up.Close()
}
