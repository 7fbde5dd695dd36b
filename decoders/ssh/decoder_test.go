package ssh

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
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
	"testing"
	"time"

	"github.com/pkg/sftp"
	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/cpu"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

func newSigner(t testing.TB) xssh.Signer {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := xssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// server is an SSH server standing in for sshd: it trusts certificates of
// userCA for principal "deploy" and runs a few commands of its own.
type server struct {
	addr   string
	root   string // the sftp subsystem's working directory
	hostPK xssh.PublicKey
	mu     sync.Mutex
	certs  []*xssh.Certificate // the certificates it accepted
}

func startServer(t testing.TB, userCA xssh.PublicKey) *server {
	host := newSigner(t)
	srv := &server{hostPK: host.PublicKey(), root: t.TempDir()}
	checker := &xssh.CertChecker{IsUserAuthority: func(k xssh.PublicKey) bool { return bytes.Equal(k.Marshal(), userCA.Marshal()) }}
	cfg := &xssh.ServerConfig{PublicKeyCallback: func(m xssh.ConnMetadata, k xssh.PublicKey) (*xssh.Permissions, error) {
		p, err := checker.Authenticate(m, k)
		if err == nil {
			srv.mu.Lock()
			srv.certs = append(srv.certs, k.(*xssh.Certificate))
			srv.mu.Unlock()
		}
		return p, err
	}}
	cfg.AddHostKey(host)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	srv.addr = l.Addr().String()
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go srv.serve(nc, cfg)
		}
	}()
	return srv
}

func (srv *server) serve(nc net.Conn, cfg *xssh.ServerConfig) {
	defer nc.Close()
	sc, chans, reqs, err := xssh.NewServerConn(nc, cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go xssh.DiscardRequests(reqs)
	for ch := range chans {
		if ch.ChannelType() != "session" {
			ch.Reject(xssh.Prohibited, "no")
			continue
		}
		c, creqs, err := ch.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer c.Close()
			for r := range creqs {
				switch r.Type {
				case "pty-req":
					r.Reply(true, nil)
				case "exec":
					var e struct{ Command string }
					xssh.Unmarshal(r.Payload, &e)
					r.Reply(true, nil)
					status := run(c, e.Command)
					c.SendRequest("exit-status", false, xssh.Marshal(&struct{ Status uint32 }{status}))
					return
				case "subsystem":
					// sftp on the local file system, paths relative to
					// the server's root.
					r.Reply(true, nil)
					go xssh.DiscardRequests(creqs)
					if s, err := sftp.NewServer(c, sftp.WithServerWorkingDirectory(srv.root)); err == nil {
						s.Serve()
					}
					return
				case "shell":
					r.Reply(true, nil)
					io.WriteString(c, "shell\n")
					c.SendRequest("exit-status", false, xssh.Marshal(&struct{ Status uint32 }{0}))
					return
				default:
					r.Reply(false, nil)
				}
			}
		}()
	}
}

// run runs one of the server's commands: echo, cat (stdin to stdout), big N
// (N bytes), stderr TEXT, exit N.
func run(c xssh.Channel, command string) uint32 {
	f := strings.Fields(command)
	switch f[0] {
	case "echo":
		io.WriteString(c, strings.Join(f[1:], " ")+"\n")
	case "cat":
		io.Copy(c, c)
	case "big":
		n, _ := strconv.Atoi(f[1])
		c.Write(bytes.Repeat([]byte("x"), n))
	case "stderr":
		io.WriteString(c.Stderr(), strings.Join(f[1:], " ")+"\n")
	case "exit":
		n, _ := strconv.Atoi(f[1])
		return uint32(n)
	}
	return 0
}

// fixture is a decoder in front of a server, with fakes for the pipeline.
type fixture struct {
	t        testing.TB
	srv      *server
	userCA   xssh.Signer
	hostCA   xssh.Signer
	dec      *Decoder
	session  func(*protocol.Session)
	rec      *recorder
	enforcer *enforcer
	known    string
	issued   int
	// credErr, when set, is what Credential fails with.
	credErr error
	// ciphers, when set, are the agent's, in its order of preference.
	ciphers []string
}

func newFixture(t testing.TB) *fixture {
	f := &fixture{t: t, userCA: newSigner(t), hostCA: newSigner(t), rec: &recorder{}, enforcer: &enforcer{}}
	f.srv = startServer(t, f.userCA.PublicKey())
	f.known = filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(f.known, []byte(knownhosts.Line([]string{f.srv.addr}, f.srv.hostPK)+"\n"), 0o644)
	f.dec = &Decoder{Target: func(s *protocol.Session) (Target, error) {
		return Target{HostKey: hostCert(t, f.hostCA, "web-1", s.Dst.Addr().String()), KnownHosts: f.known}, nil
	}}
	return f
}

func hostCert(t testing.TB, ca xssh.Signer, principals ...string) xssh.Signer {
	key := newSigner(t)
	cert := &xssh.Certificate{Key: key.PublicKey(), CertType: xssh.HostCert, ValidPrincipals: principals,
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	s, err := xssh.NewCertSigner(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serve starts the decoder on one agent connection and returns the
// agent's end and the channel Serve's result arrives on.
func (f *fixture) serve() (net.Conn, chan error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.t.Fatal(err)
	}
	defer l.Close()
	agentSide, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		f.t.Fatal(err)
	}
	proxySide, err := l.Accept()
	if err != nil {
		f.t.Fatal(err)
	}
	s := &protocol.Session{
		ID: "s1", Identity: "ci", Agent: proxySide, Target: "web-1", Dst: netip.MustParseAddrPort("127.0.0.1:22"),
		Connect: protocol.Verdict{Action: protocol.Allow}, Handshake: 5 * time.Second,
		Upstream: &upstream{f: f}, Enforcer: f.enforcer, Recorder: f.rec,
	}
	if f.session != nil {
		f.session(s)
	}
	done, finished := make(chan error, 1), make(chan struct{})
	go func() { done <- f.dec.Serve(context.Background(), s); close(finished) }()
	f.t.Cleanup(func() { agentSide.Close(); <-finished })
	return agentSide, done
}

// connect logs the agent in as user through the decoder.
func (f *fixture) connect(user string) (*xssh.Client, chan error) {
	nc, done := f.serve()
	c, err := f.dial(nc, user, nil)
	if err != nil {
		f.t.Fatalf("agent login: %v", err)
	}
	f.t.Cleanup(func() { c.Close() })
	return c, done
}

func (f *fixture) dial(nc net.Conn, user string, banner *string) (*xssh.Client, error) {
	checker := &xssh.CertChecker{IsHostAuthority: func(k xssh.PublicKey, _ string) bool {
		return bytes.Equal(k.Marshal(), f.hostCA.PublicKey().Marshal())
	}}
	cfg := &xssh.ClientConfig{User: user, HostKeyCallback: checker.CheckHostKey, Timeout: 5 * time.Second,
		BannerCallback: func(msg string) error {
			if banner != nil {
				*banner += msg
			}
			return nil
		}}
	cfg.Ciphers = f.ciphers
	cc, chans, reqs, err := xssh.NewClientConn(nc, "web-1:22", cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return xssh.NewClient(cc, chans, reqs), nil
}

type upstream struct{ f *fixture }

func (u *upstream) Addr() string { return u.f.srv.addr }

// The decoder keeps no server connections between sessions.
func (*upstream) Resume(string) (io.Closer, bool) { return nil, false }
func (*upstream) Parking(string) func(io.Closer) bool {
	return func(io.Closer) bool { return false }
}

func (u *upstream) Dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", u.f.srv.addr)
}

func (u *upstream) Credential(_ context.Context, r protocol.CredentialRequest) (protocol.Credential, error) {
	u.f.issued++
	if u.f.credErr != nil {
		return protocol.Credential{}, u.f.credErr
	}
	pub, _, _, _, err := xssh.ParseAuthorizedKey(r.PublicKey)
	if err != nil {
		return protocol.Credential{}, err
	}
	cert := &xssh.Certificate{Key: pub, CertType: xssh.UserCert, KeyId: "session-s1", ValidPrincipals: []string{"deploy"},
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
	if err := cert.SignCert(rand.Reader, u.f.userCA); err != nil {
		return protocol.Credential{}, err
	}
	return protocol.Credential{Certificate: xssh.MarshalAuthorizedKey(cert)}, nil
}

// enforcer denies exec lines that start with "rm" (rule no-rm), holds
// those that start with "deploy", and allows the rest.
type enforcer struct {
	mu   sync.Mutex
	seen []protocol.Request
	wait func(context.Context) (bool, string)
}

func (e *enforcer) Decide(_ context.Context, r protocol.Request) protocol.Verdict {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seen = append(e.seen, r)
	if strings.HasSuffix(r.Text, "defect") {
		// A defect reached by what the agent sent (TestDefectEndsOnlyItsConnection).
		panic("enforcer defect")
	}
	switch {
	case r.Operation == "exec" && strings.HasPrefix(r.Text, "rm"):
		return protocol.Verdict{Action: protocol.Deny, Rule: "no-rm", Message: "no removing"}
	case r.Operation == "exec" && strings.HasPrefix(r.Text, "deploy"):
		return protocol.Verdict{Action: protocol.Hold, Rule: "deploys", ApprovalID: "a-1", Wait: e.wait}
	case r.Operation == "exec", r.Operation == "shell":
		return protocol.Verdict{Action: protocol.Allow, Rule: "ok"}
	case r.Operation == OpSFTPWrite && !strings.Contains(r.Text, "/up/"):
		return protocol.Verdict{Action: protocol.Deny, Rule: "uploads-only"}
	case r.Operation == OpSFTPRead, r.Operation == OpSFTPStat, r.Operation == OpSFTPWrite:
		return protocol.Verdict{Action: protocol.Allow, Rule: "files"}
	}
	return protocol.Verdict{Action: protocol.Deny, Rule: "unsupported-operation"}
}

func (e *enforcer) ops() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, r := range e.seen {
		out = append(out, strings.TrimSpace(r.Operation+" "+r.Text))
	}
	return out
}

type recorder struct {
	mu      sync.Mutex
	started bool
	msgs    []protocol.Message
}

func (r *recorder) Start(context.Context) error {
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
	return nil
}

func (r *recorder) Record(m protocol.Message) {
	r.mu.Lock()
	m.Body = bytes.Clone(m.Body)
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func (r *recorder) Ready() error { return nil }

// Relayed is never called: SSH sessions record what crosses them.
func (r *recorder) Relayed(int64, int64) {}

func (r *recorder) has(typ byte, body string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m.Type == typ && string(m.Body) == body {
			return true
		}
	}
	return false
}

// bytes returns how many bytes of type typ were recorded.
func (r *recorder) bytes(typ byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m.Type == typ {
			n += len(m.Body)
		}
	}
	return n
}

// exec runs command on a new session of c with stdin and returns stdout,
// stderr and the exit status.
func exec(t *testing.T, c *xssh.Client, command, stdin string) (string, string, int) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("new session: %v", err)
	}
	defer s.Close()
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr, s.Stdin = &out, &errb, strings.NewReader(stdin)
	err = s.Run(command)
	status := 0
	var ee *xssh.ExitError
	switch {
	case errors.As(err, &ee):
		status = ee.ExitStatus()
	case err != nil:
		t.Fatalf("run %q: %v", command, err)
	}
	return out.String(), errb.String(), status
}

func TestExec(t *testing.T) {
	f := newFixture(t)
	c, _ := f.connect("deploy")
	if out, _, st := exec(t, c, "echo hello world", ""); out != "hello world\n" || st != 0 {
		t.Errorf("echo: %q, status %d", out, st)
	}
	in := strings.Repeat("stdin line\n", 10000)
	if out, _, st := exec(t, c, "cat", in); out != in || st != 0 {
		t.Errorf("cat: %d bytes back of %d, status %d", len(out), len(in), st)
	}
	if out, _, st := exec(t, c, "big 3000000", ""); len(out) != 3000000 || st != 0 {
		t.Errorf("big: %d bytes, status %d", len(out), st)
	}
	if _, errOut, st := exec(t, c, "stderr oops", ""); errOut != "oops\n" || st != 0 {
		t.Errorf("stderr: %q, status %d", errOut, st)
	}
	if _, _, st := exec(t, c, "exit 3", ""); st != 3 {
		t.Errorf("exit 3: status %d", st)
	}
	// A denial ends its channel with 126 and the rule; the connection goes
	// on and the next command runs.
	out, errOut, st := exec(t, c, "rm -rf /tmp/x", "")
	if st != 126 || out != "" || !strings.Contains(errOut, `denied by policy rule "no-rm": no removing`) {
		t.Errorf("rm: status %d, stdout %q, stderr %q", st, out, errOut)
	}
	if out, _, st := exec(t, c, "echo still here", ""); out != "still here\n" || st != 0 {
		t.Errorf("after a denial: %q, status %d", out, st)
	}
	if f.issued != 1 {
		t.Errorf("credentials issued: %d, want one for the connection", f.issued)
	}
	f.srv.mu.Lock()
	certs := f.srv.certs
	f.srv.mu.Unlock()
	if len(certs) != 1 || certs[0].KeyId != "session-s1" {
		t.Errorf("the server accepted %d certificates, want the session's one", len(certs))
	}
	for _, want := range []string{"exec echo hello world", "exec rm -rf /tmp/x"} {
		if !f.rec.has(MsgChannelRequest, want) {
			t.Errorf("recording lacks request %q", want)
		}
	}
	if !f.rec.has(MsgExit, "exit-status 3") || !f.rec.has(MsgExit, "exit-status 126") {
		t.Error("recording lacks the exit statuses")
	}
	// Output is recorded up to the cap, and counted whole.
	if !f.rec.has(MsgStdout, "hello world\n") || !f.rec.has(MsgStderr, "oops\n") || !f.rec.has(MsgBytes, "stdin 0, stdout 3000000, stderr 0 bytes") {
		t.Error("recording lacks the commands' output or counts")
	}
	if got := f.rec.bytes(MsgStdout); got != 12+MaxRecordedStream+MaxRecordedStream+len("still here\n") {
		t.Errorf("recorded %d bytes of stdout", got)
	}
}

func TestShellAndPty(t *testing.T) {
	f := newFixture(t)
	c, _ := f.connect("deploy")
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	s.Stdout = &out
	if err := s.RequestPty("xterm", 24, 80, xssh.TerminalModes{}); err != nil {
		t.Fatalf("pty: %v", err)
	}
	if err := s.Shell(); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(); err != nil || out.String() != "shell\n" {
		t.Errorf("shell: %v, %q", err, out.String())
	}
}

// TestRefused: what the decoder cannot police is refused, decided for the
// audit trail and recorded, and never reaches the server.
func TestRefused(t *testing.T) {
	f := newFixture(t)
	c, _ := f.connect("deploy")
	if _, err := c.Dial("tcp", "127.0.0.1:5432"); err == nil {
		t.Error("direct-tcpip: allowed")
	}
	if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("tcpip-forward: allowed")
	}
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.RequestAgentForwarding(s); err == nil {
		t.Error("agent forwarding: allowed")
	}
	if ok, err := s.SendRequest("x11-req", true, xssh.Marshal(&struct {
		Single        bool
		Proto, Cookie string
		Screen        uint32
	}{false, "MIT-MAGIC-COOKIE-1", "00", 0})); ok || err != nil {
		t.Errorf("x11: %v %v", ok, err)
	}
	if err := s.Setenv("LD_PRELOAD", "/tmp/x.so"); err == nil {
		t.Error("env: allowed")
	}
	if err := s.RequestSubsystem("netconf"); err == nil {
		t.Error("netconf: allowed")
	}
	s.Close()
	want := []string{"direct-tcpip direct-tcpip 127.0.0.1:5432", "tcpip-forward", "auth-agent-req@openssh.com", "x11-req", "env LD_PRELOAD", "subsystem netconf"}
	if got := f.enforcer.ops(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("decided %q, want %q", got, want)
	}
	// The connection still serves what is allowed.
	if out, _, _ := exec(t, c, "echo ok", ""); out != "ok\n" {
		t.Errorf("after refusals: %q", out)
	}
}

func TestHold(t *testing.T) {
	f := newFixture(t)
	approved := make(chan bool, 1)
	f.enforcer.wait = func(context.Context) (bool, string) {
		ok := <-approved
		return ok, "alice said no"
	}
	c, _ := f.connect("deploy")
	approved <- true
	out, errOut, st := exec(t, c, "deploy now", "")
	if st != 0 || !strings.Contains(errOut, "held for approval a-1") {
		t.Errorf("approved: %q %q %d", out, errOut, st)
	}
	approved <- false
	_, errOut, st = exec(t, c, "deploy again", "")
	if st != 126 || !strings.Contains(errOut, "not approved: alice said no") {
		t.Errorf("refused: %q %d", errOut, st)
	}
}

// TestHostKeyMismatch: a server whose key is not the one known_hosts holds
// is never logged in to; the agent is told why.
func TestHostKeyMismatch(t *testing.T) {
	f := newFixture(t)
	os.WriteFile(f.known, []byte(knownhosts.Line([]string{f.srv.addr}, newSigner(t).PublicKey())+"\n"), 0o644)
	nc, done := f.serve()
	var banner string
	if _, err := f.dial(nc, "deploy", &banner); err == nil {
		t.Fatal("login through a server with the wrong host key")
	}
	err := <-done
	var re *protocol.RefusedError
	if !errors.As(err, &re) || re.Outcome != "upstream host key" {
		t.Errorf("Serve: %v", err)
	}
	if !strings.Contains(banner, "is not the one "+f.known+" holds") {
		t.Errorf("banner: %q", banner)
	}
	if len(f.srv.certs) != 0 {
		t.Error("the certificate was presented to the wrong server")
	}
}

func TestConnectDenied(t *testing.T) {
	f := newFixture(t)
	f.session = func(s *protocol.Session) {
		s.Connect = protocol.Verdict{Action: protocol.Deny, Rule: "no-ssh"}
	}
	nc, done := f.serve()
	var banner string
	if _, err := f.dial(nc, "deploy", &banner); err == nil {
		t.Fatal("login allowed")
	}
	var re *protocol.RefusedError
	if err := <-done; !errors.As(err, &re) || re.Outcome != "denied" || !strings.Contains(banner, `policy rule "no-ssh"`) {
		t.Errorf("Serve: %v, banner %q", err, banner)
	}
	if f.issued != 0 {
		t.Error("a credential was issued for a denied connection")
	}
}

// TestStalledHandshake: a client that never speaks is cut off.
func TestStalledHandshake(t *testing.T) {
	f := newFixture(t)
	f.session = func(s *protocol.Session) { s.Handshake = 200 * time.Millisecond }
	_, done := f.serve()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Serve returned nil for a stalled client")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stalled client held the session past its handshake bound")
	}
}

func TestChannelBound(t *testing.T) {
	f := newFixture(t)
	f.dec.MaxChannels = 2
	c, _ := f.connect("deploy")
	var sessions []*xssh.Session
	for i := range 3 {
		s, err := c.NewSession()
		if i < 2 && err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if i == 2 {
			if err == nil {
				t.Fatal("a third channel was opened")
			}
			break
		}
		sessions = append(sessions, s)
	}
	sessions[0].Close()
	// Once one is closed, a new one fits.
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, err := c.NewSession()
		if err == nil {
			s.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(fmt.Errorf("no channel after closing one: %w", err))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUserFromTarget: the target's user replaces the agent's.
func TestUserFromTarget(t *testing.T) {
	f := newFixture(t)
	target := f.dec.Target
	f.dec.Target = func(s *protocol.Session) (Target, error) {
		tg, err := target(s)
		tg.User = "deploy"
		return tg, err
	}
	c, _ := f.connect("root")
	if out, _, _ := exec(t, c, "echo as deploy", ""); out != "as deploy\n" {
		t.Errorf("%q", out)
	}
}

// TestSessionLimit: a connection over its identity's cap is told so and
// gets the limit back as its outcome, with nothing issued.
func TestSessionLimit(t *testing.T) {
	f := newFixture(t)
	limit := &protocol.LimitError{Limit: "sessions", Msg: "identity \"ci\" already has 2 sessions open, its limit"}
	f.session = func(s *protocol.Session) { s.Refuse = limit }
	nc, done := f.serve()
	var banner string
	if _, err := f.dial(nc, "deploy", &banner); err == nil {
		t.Fatal("login allowed over the cap")
	}
	if err := <-done; err != limit || !strings.Contains(banner, "too many sessions") {
		t.Errorf("Serve: %v, banner %q", err, banner)
	}
	if f.issued != 0 {
		t.Error("a credential was issued over the cap")
	}
}

// TestNoCredentialSource: with no credential source for the target the
// agent is told so, not to try again later.
func TestNoCredentialSource(t *testing.T) {
	f := newFixture(t)
	f.credErr = fmt.Errorf("%w: none named, and no default", protocol.ErrNoCredentialSource)
	nc, done := f.serve()
	var banner string
	if _, err := f.dial(nc, "deploy", &banner); err == nil {
		t.Fatal("login allowed without a credential")
	}
	<-done
	if !strings.Contains(banner, `no credential source is configured for target`) || strings.Contains(banner, "try again later") {
		t.Errorf("banner %q", banner)
	}
}

// TestSFTP: the agent's sftp requests are decided on their paths, resolved
// against the server's working directory, and carried out upstream.
func TestSFTP(t *testing.T) {
	f := newFixture(t)
	root := f.srv.root
	for _, d := range []string{"up", "docs"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "docs", "a.txt"), []byte("doc a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, _ := f.connect("deploy")
	sc, stderr := openSFTP(t, c)
	if wd, err := sc.Getwd(); err != nil || wd != root {
		t.Errorf("working directory %q, %v; want the server's %q", wd, err, root)
	}
	// A relative path is the server's: up/b.txt is root/up/b.txt.
	w, err := sc.Create("up/b.txt")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("upload b\n")); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if b, err := os.ReadFile(filepath.Join(root, "up", "b.txt")); err != nil || string(b) != "upload b\n" {
		t.Errorf("uploaded %q, %v", b, err)
	}
	if err := sc.Rename("up/b.txt", "up/c.txt"); err != nil {
		t.Errorf("rename within up/: %v", err)
	}
	r, err := sc.Open("docs/a.txt")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(r); err != nil || string(b) != "doc a\n" {
		t.Errorf("read %q, %v", b, err)
	}
	r.Close()
	if fis, err := sc.ReadDir("docs"); err != nil || len(fis) != 1 || fis[0].Name() != "a.txt" {
		t.Errorf("list docs: %v, %v", fis, err)
	}
	// Denied operations fail with permission denied, naming the rule; the
	// session goes on.
	for name, op := range map[string]func() error{
		"create docs/x":      func() error { _, err := sc.Create("docs/x"); return err },
		"remove docs/a.txt":  func() error { return sc.Remove("docs/a.txt") },
		"rename out of up/":  func() error { return sc.Rename("up/c.txt", "docs/c.txt") },
		"mkdir docs/d":       func() error { return sc.Mkdir("docs/d") },
		"chmod docs/a.txt":   func() error { return sc.Chmod("docs/a.txt", 0o777) },
		"symlink into docs/": func() error { return sc.Symlink("../docs/a.txt", "up/link") },
	} {
		if err := op(); !errors.Is(err, os.ErrPermission) {
			t.Errorf("%s: %v, want permission denied", name, err)
		}
	}
	// Six denials, seven lines: pkg/sftp's Remove tries rmdir after remove.
	waitUntil(t, func() bool { return strings.Count(stderr.String(), `denied by policy rule "uploads-only"`) == 7 }, stderr)
	if !strings.Contains(stderr.String(), "interlock: remove "+root+"/docs/a.txt: denied by policy rule \"uploads-only\"\n") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(root, "docs", "a.txt")); err != nil {
		t.Errorf("a denied remove removed: %v", err)
	}
	if _, err := sc.Stat("up/c.txt"); err != nil {
		t.Errorf("stat after denials: %v", err)
	}
	for _, body := range []string{"open-write " + root + "/up/b.txt", "rename " + root + "/up/b.txt -> " + root + "/up/c.txt",
		"open-read " + root + "/docs/a.txt", "remove " + root + "/docs/a.txt", "list " + root + "/docs"} {
		if !f.rec.has(MsgSFTP, body) {
			t.Errorf("the recording lacks %q", body)
		}
	}
	if !f.rec.has(MsgInterlock, "interlock: mkdir "+root+"/docs/d: denied by policy rule \"uploads-only\"\n") {
		t.Error("the recording lacks the denials")
	}
}

// A defect that panics on one of a connection's goroutines (a channel's,
// or one of pkg/sftp's, which recover nothing) ends that connection with
// the defect, not the process; the SFTP request that reached it is
// answered with a failure status.
func TestDefectEndsOnlyItsConnection(t *testing.T) {
	f := newFixture(t)
	c, done := f.connect("deploy")
	sc, _ := openSFTP(t, c)
	if _, err := sc.Stat("defect"); err == nil || errors.Is(err, os.ErrPermission) || errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of the path that reaches the defect: %v, want a failure status", err)
	}
	assertContained(t, done, "sftp Stat")

	// The same from a session channel's goroutine: an exec decided.
	c, done = f.connect("deploy")
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run("defect"); err == nil {
		t.Error("the command that reached the defect ran")
	}
	assertContained(t, done, "session channel")

	// Connections after them are served.
	c, _ = f.connect("deploy")
	if out, _, status := exec(t, c, "echo after", ""); out != "after\n" || status != 0 {
		t.Errorf("exec after the defects: %q, status %d", out, status)
	}
}

func assertContained(t *testing.T, done chan error, where string) {
	t.Helper()
	select {
	case err := <-done:
		var ie *protocol.InternalError
		if !errors.As(err, &ie) || ie.Where != where || ie.Value != "enforcer defect" || !bytes.Contains(ie.Stack, []byte("(*enforcer).Decide")) {
			t.Errorf("Serve returned %v, want the defect in %s with its stack", err, where)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the connection whose %s panicked did not end", where)
	}
}

// openSFTP starts an SFTP client on a session of c, with what interlockd
// says on the session's stderr; the client closes with the test.
func openSFTP(t *testing.T, c *xssh.Client) (*sftp.Client, *safeBuffer) {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &safeBuffer{}
	errPipe, _ := s.StderrPipe()
	go io.Copy(stderr, errPipe)
	in, _ := s.StdinPipe()
	out, _ := s.StdoutPipe()
	if err := s.RequestSubsystem("sftp"); err != nil {
		t.Fatal(err)
	}
	sc, err := sftp.NewClientPipe(out, in)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return sc, stderr
}

// safeBuffer is a bytes.Buffer written by one goroutine and read by another.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitUntil polls cond for up to 5 s.
func waitUntil(t *testing.T, cond func() bool, b *safeBuffer) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out:\n%s", b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAgentCiphers: the agent is offered the cheapest cipher it accepts,
// whatever its order (OpenSSH's puts chacha20 and CTR first), and a client
// that accepts one cipher only still gets in.
func TestAgentCiphers(t *testing.T) {
	f := newFixture(t)
	aesni := cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ
	openssh := []string{xssh.CipherChaCha20Poly1305, xssh.CipherAES128CTR, xssh.CipherAES192CTR, xssh.CipherAES256CTR, xssh.CipherAES128GCM, xssh.CipherAES256GCM}
	for _, c := range []struct {
		ciphers []string
		want    string
	}{
		{openssh, map[bool]string{true: xssh.CipherAES128GCM, false: xssh.CipherChaCha20Poly1305}[aesni]},
		{[]string{xssh.CipherAES256CTR, xssh.CipherAES128CTR}, xssh.CipherAES128CTR},
		{[]string{xssh.CipherChaCha20Poly1305}, xssh.CipherChaCha20Poly1305},
		{[]string{xssh.CipherAES256GCM}, xssh.CipherAES256GCM},
	} {
		if got := cipherFor(c.ciphers, c.ciphers); !slices.Equal(got, []string{c.want}) {
			t.Errorf("client offering %v is offered %v, want %s", c.ciphers, got, c.want)
		}
		f.ciphers = c.ciphers
		nc, _ := f.serve()
		cl, err := f.dial(nc, "deploy", nil)
		if err != nil {
			t.Errorf("agent offering %v: %v", c.ciphers, err)
			continue
		}
		// The session works past the handshake over the replayed bytes.
		if out, _, st := exec(t, cl, "echo hello", ""); out != "hello\n" || st != 0 {
			t.Errorf("agent offering %v: exec: %q, status %d", c.ciphers, out, st)
		}
		cl.Close()
	}
	// A cipher the client accepts one way only is not chosen.
	if got := cipherFor([]string{xssh.CipherAES128GCM, xssh.CipherAES128CTR}, []string{xssh.CipherAES128CTR}); !slices.Equal(got, []string{xssh.CipherAES128CTR}) {
		t.Errorf("asymmetric offer: %v", got)
	}
	// None in common: the whole list, and the library refuses.
	if got := cipherFor([]string{"3des-cbc"}, []string{"3des-cbc"}); !slices.Equal(got, agentCiphers) {
		t.Errorf("no cipher in common: %v", got)
	}
}

// TestPeekClientKexInit: what is read before the library's handshake is
// replayed byte for byte, and input that is not a client's SSH start gets
// a clear error or is left to the library, never a guess.
func TestPeekClientKexInit(t *testing.T) {
	kexinit := func(ciphers ...string) []byte {
		p := xssh.Marshal(&clientKexInit{KexAlgos: []string{"curve25519-sha256"}, HostKeyAlgos: []string{"ssh-ed25519"},
			CiphersToSrv: ciphers, CiphersToCli: ciphers, MACsToSrv: []string{"hmac-sha2-256"}, MACsToCli: []string{"hmac-sha2-256"},
			CompToSrv: []string{"none"}, CompToCli: []string{"none"}})
		pad := 8 - (len(p)+5)%8 + 8
		pkt := binary.BigEndian.AppendUint32(nil, uint32(len(p)+pad+1))
		pkt = append(pkt, byte(pad))
		pkt = append(pkt, p...)
		return append(pkt, make([]byte, pad)...)
	}
	hello := []byte("SSH-2.0-OpenSSH_9.2p1\r\n")
	for _, c := range []struct {
		name    string
		in      []byte
		ciphers []string
		err     string
	}{
		{"openssh", slices.Concat(hello, kexinit(xssh.CipherChaCha20Poly1305, xssh.CipherAES128CTR, xssh.CipherAES128GCM), []byte("next")), []string{agentCiphers[0]}, ""},
		{"not ssh", []byte("GET / HTTP/1.1\r\n\r\n"), agentCiphers, ""},
		{"not a kexinit", slices.Concat(hello, []byte{0, 0, 0, 12, 4, 21, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0}), agentCiphers, ""},
		{"huge packet", slices.Concat(hello, []byte{0x7f, 0, 0, 0, 4}), nil, "claims"},
		{"padding past the end", slices.Concat(hello, []byte{0, 0, 0, 4, 9}), nil, "claims"},
		{"cut short", slices.Concat(hello, kexinit(xssh.CipherAES128GCM)[:40]), nil, "key exchange"},
		{"no version", []byte("SSH-2.0-x"), nil, "version"},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, cli := net.Pipe()
			defer cli.Close()
			go func() {
				io.Copy(io.Discard, cli)
			}()
			w := &peekConn{Conn: srv, r: bytes.NewReader(c.in)}
			conn, ciphers, err := peekClientKexInit(w, "SSH-2.0-Interlock")
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one saying %q", err, c.err)
				}
				return
			}
			if err != nil || !slices.Equal(ciphers, c.ciphers) {
				t.Fatalf("%v %v, want %v", ciphers, err, c.ciphers)
			}
			if !bytes.Equal(w.written.Bytes(), []byte("SSH-2.0-Interlock\r\n")) {
				t.Errorf("the agent was sent %q", w.written.Bytes())
			}
			conn.Write([]byte("SSH-2.0-Interlock\r\n"))
			conn.Write([]byte("kex"))
			if got := w.written.String(); got != "SSH-2.0-Interlock\r\nkex" {
				t.Errorf("after the library's writes the agent has %q", got)
			}
			replayed, _ := io.ReadAll(conn)
			if !bytes.Equal(replayed, c.in) {
				t.Errorf("replayed %q, want %q", replayed, c.in)
			}
		})
	}
}

// peekConn is a connection that reads r to its end and keeps what is
// written to it.
type peekConn struct {
	net.Conn
	r       io.Reader
	written bytes.Buffer
}

func (c *peekConn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *peekConn) Write(p []byte) (int, error) { return c.written.Write(p) }
