package proxy

import (
	"context"
	"io"
	"net"
	"net/netip"
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
