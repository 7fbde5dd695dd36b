package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/agent/daemontest"
)

// sockopt reads an integer option of c's socket.
func sockopt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

// TestListenConnections: an accepted agent connection has Nagle off (small
// protocol messages go at once) and no keepalive, which a local peer does not
// need and which cost four system calls per connection.
func TestListenConnections(t *testing.T) {
	l, err := Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := l.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if v := sockopt(t, a, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v != 0 {
		t.Errorf("accepted connection has SO_KEEPALIVE %d", v)
	}
	if v := sockopt(t, a, unix.IPPROTO_TCP, unix.TCP_NODELAY); v == 0 {
		t.Error("accepted connection has Nagle's algorithm on")
	}
}

// panicky identifies callers and serves them, panicking at its nth call of
// each as a defect would.
type panicky struct{ identified, served atomic.Int32 }

func (p *panicky) Identify(peer, local netip.AddrPort) (Identity, netip.AddrPort, error) {
	if p.identified.Add(1) == 1 {
		panic("identify defect")
	}
	return Identity{Name: "ci"}, local, nil
}

func (p *panicky) Handle(_ context.Context, c *Conn) {
	defer c.Client.Close()
	if p.served.Add(1) == 1 {
		panic("handler defect")
	}
	c.Client.Write([]byte("served"))
}

// TestPanicEndsOneConnection: a panic identifying a caller, or one its
// handler did not contain, ends that connection, logged with its stack;
// the next is served, and none is left tracked.
func TestPanicEndsOneConnection(t *testing.T) {
	l, err := Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logged daemontest.Buffer
	p := &panicky{}
	s := NewServer(p, p, zerolog.New(&logged))
	go s.Serve(l)
	defer l.Close()
	for i, want := range []string{"", "", "served"} {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if string(got) != want || err != nil {
			t.Errorf("connection %d: read %q, %v; want %q and its end", i, got, err, want)
		}
	}
	// The handler's own deferred close reaches the agent before the panic
	// reaches serveConn's recover, which logs it: wait for the lines.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && strings.Count(logged.String(), "ended by an internal error") < 2; {
		time.Sleep(10 * time.Millisecond)
	}
	for _, defect := range []string{`"panic":"identify defect"`, `"panic":"handler defect"`} {
		if !strings.Contains(logged.String(), defect) {
			t.Errorf("the log lacks %s:\n%s", defect, logged.String())
		}
	}
	for _, frame := range []string{"(*panicky).Identify", "(*panicky).Handle"} {
		if !strings.Contains(logged.String(), frame) {
			t.Errorf("the log's stacks lack %s:\n%s", frame, logged.String())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v (a connection left tracked)", err)
	}
}

// greeter identifies every caller and greets it.
type greeter struct{}

func (greeter) Identify(peer, local netip.AddrPort) (Identity, netip.AddrPort, error) {
	return Identity{Name: "ci"}, local, nil
}

func (greeter) Handle(_ context.Context, c *Conn) {
	defer c.Client.Close()
	c.Client.Write([]byte("served"))
}

// exhaustDescriptors lowers this process's descriptor limit to what it has
// open and fills what is left, so that the next accept fails with EMFILE;
// release gives back the descriptors and the limit.
func exhaustDescriptors(t *testing.T) (release func()) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(open) + 16)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fillers []int
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fillers = append(fillers, fd)
	}
	released := false
	release = func() {
		if released {
			return
		}
		released = true
		for _, fd := range fillers {
			unix.Close(fd)
		}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(release)
	return release
}

// paused is a server that ran out of descriptors with a connection
// waiting to be accepted.
type paused struct {
	l       net.Listener
	s       *Server
	c       net.Conn // the waiting connection's client end
	logged  *daemontest.Buffer
	served  chan error // Serve's return
	release func()     // of the descriptors
}

// pausedServer starts a server on a listener with a connection waiting,
// this process's descriptors exhausted, and returns once it has logged
// its pause.
func pausedServer(t *testing.T) *paused {
	t.Helper()
	l, err := Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	p := &paused{l: l, logged: &daemontest.Buffer{}, served: make(chan error, 1)}
	p.s = NewServer(greeter{}, greeter{}, zerolog.New(p.logged))
	if p.c, err = net.Dial("tcp4", l.Addr().String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.c.Close() })
	p.release = exhaustDescriptors(t)
	go func() { p.served <- p.s.Serve(l) }()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(p.logged.String(), "accepting paused"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no pause logged:\n%s", p.logged.String())
		}
	}
	return p
}

// TestAcceptPausesWhileOutOfDescriptors: with interlockd out of
// descriptors a connection waits in the listen queue, accepting pauses
// (logged, not spinning) and resumes once descriptors are back; the
// connection that waited is then served. Before, the accept's EMFILE
// ended the listener's loop: nothing was accepted again.
func TestAcceptPausesWhileOutOfDescriptors(t *testing.T) {
	p := pausedServer(t)
	s, c, logged, release := p.s, p.c, p.logged, p.release
	// Paused for a while, it has retried a few times, not thousands.
	time.Sleep(300 * time.Millisecond)
	c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if n, err := c.Read(make([]byte, 8)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes, %v while interlockd had no descriptor for the connection", n, err)
	}
	release()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := io.ReadAll(c); string(got) != "served" || err != nil {
		t.Fatalf("read %q, %v; want the connection served once descriptors are back", got, err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logged.String(), "accepting again"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no end of the pause logged:\n%s", logged.String())
		}
	}
	var resumed struct {
		Failed int `json:"failed_accepts"`
	}
	for _, line := range strings.Split(logged.String(), "\n") {
		if strings.Contains(line, "accepting again") {
			json.Unmarshal([]byte(line), &resumed)
		}
	}
	if resumed.Failed < 2 || resumed.Failed > 20 {
		t.Errorf("%d accepts failed in the pause, want a few (5 ms doubling to a second)", resumed.Failed)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	p.l.Close()
	if err := <-p.served; err != nil {
		t.Errorf("serve: %v", err)
	}
}

// TestShutdownEndsAPause: a listener paused for want of descriptors stops
// at shutdown, without waiting for them.
func TestShutdownEndsAPause(t *testing.T) {
	p := pausedServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.s.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	select {
	case err := <-p.served:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the paused listener's loop did not end at shutdown")
	}
}

// TestPausesLogRarely: a listener that keeps running out logs a pause, and
// its end, at most once every pauseLogEvery, counting the others; each
// pause is counted for the metric.
func TestPausesLogRarely(t *testing.T) {
	var logged daemontest.Buffer
	log := zerolog.New(&logged)
	counted := 0
	p := pauses{log: &log, listener: "127.0.0.1:15001", count: func() { counted++ }}
	emfile := &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	for i := range 3 {
		if wait := p.failed(emfile); wait != 5*time.Millisecond {
			t.Fatalf("pause %d: first wait %v, want 5ms", i, wait)
		}
		if wait := p.failed(emfile); wait != 10*time.Millisecond {
			t.Fatalf("pause %d: second wait %v, want 10ms", i, wait)
		}
		p.waited()
		p.accepted()
	}
	if n := strings.Count(logged.String(), "accepting paused"); n != 1 {
		t.Errorf("%d pauses logged in three within %v, want 1:\n%s", n, pauseLogEvery, logged.String())
	}
	if n := strings.Count(logged.String(), "accepting again"); n != 1 {
		t.Errorf("%d ends of pauses logged, want 1 (the logged pause's):\n%s", n, logged.String())
	}
	p.logged = p.logged.Add(-pauseLogEvery)
	p.failed(emfile)
	if !strings.Contains(logged.String(), `"pauses_unlogged":2`) {
		t.Errorf("the next logged pause does not count the two unlogged:\n%s", logged.String())
	}
	for i := 0; i < 12; i++ {
		p.failed(emfile)
	}
	if p.wait != time.Second {
		t.Errorf("wait after many failures %v, want a second at most", p.wait)
	}
	// The metric counts every pause, logged or not, and no retry.
	if counted != 4 {
		t.Errorf("%d pauses counted, want 4", counted)
	}
}

// TestAcceptErrors: which accept errors pause, which are the dequeued
// connection's own, and which end the listener's loop.
func TestAcceptErrors(t *testing.T) {
	for _, tc := range []struct {
		errno            syscall.Errno
		exhausted, their bool
	}{
		{syscall.EMFILE, true, false}, {syscall.ENFILE, true, false}, {syscall.ENOBUFS, true, false}, {syscall.ENOMEM, true, false},
		{syscall.EPROTO, false, true}, {syscall.ENETUNREACH, false, true}, {syscall.EHOSTUNREACH, false, true},
		{syscall.EPERM, false, false}, {syscall.EINVAL, false, false}, {syscall.EBADF, false, false},
	} {
		err := &net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", tc.errno)}
		if got := exhausted(err); got != tc.exhausted {
			t.Errorf("exhausted(%v) = %v", tc.errno, got)
		}
		if got := pendingError(err); got != tc.their {
			t.Errorf("pendingError(%v) = %v", tc.errno, got)
		}
	}
}
