package proxy

import (
	"context"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
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
