package rawsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection, the first
// wrapped by Wrap. Its waits are bounded: a handshake that does not
// complete fails the test with the kernel's view of the port rather than
// holding the package until its timeout (CI once saw an accept wait 40
// minutes here: a test interlockd of another package had been given the
// port's connections; see testenv.ProxyPort).
func tcpPair(t *testing.T) (raw net.Conn, peer net.Conn) {
	t.Helper()
	const wait = 10 * time.Second
	// Plain TCP, as interlockd's listeners are: net.Listen's would be MPTCP
	// where the kernel has it, and this machine's does.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
	type accept struct {
		c   net.Conn
		err error
	}
	accepted := make(chan accept, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- accept{c, err}
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), wait)
	if err != nil {
		t.Fatalf("dial %s: %v\n%s", ln.Addr(), err, sockets(ln.Addr()))
	}
	a := <-accepted
	if a.err != nil {
		c.Close()
		t.Fatalf("accept on %s, dialled from %s: %v\n%s", ln.Addr(), c.LocalAddr(), a.err, sockets(ln.Addr()))
	}
	p := a.c
	if p.RemoteAddr().String() != c.LocalAddr().String() {
		c.Close()
		p.Close()
		t.Fatalf("accepted %s, but dialled from %s", p.RemoteAddr(), c.LocalAddr())
	}
	raw = Wrap(c)
	if _, ok := raw.(*rawConn); !ok {
		t.Fatalf("Wrap(%T) did not wrap it", c)
	}
	t.Cleanup(func() { raw.Close(); p.Close() })
	return raw, p
}

// sockets is what ss(8) shows of the sockets on addr's port, for a failure
// message.
func sockets(addr net.Addr) string {
	port := addr.(*net.TCPAddr).Port
	out, err := exec.Command("ss", "-tanoie", fmt.Sprintf("( sport = :%d or dport = :%d )", port, port)).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ss: %v\n%s", err, out)
	}
	return string(out)
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Fatal("a net.Pipe was wrapped")
	}
}

func TestWrapCopiesBothWays(t *testing.T) {
	raw, peer := tcpPair(t)
	// Larger than the socket buffers, so writes meet EAGAIN and wait for
	// the poller, and reads come back in pieces.
	want := bytes.Repeat([]byte("interlock-"), 1<<20)
	errc := make(chan error, 1)
	go func() {
		_, err := raw.Write(want)
		errc <- err
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bytes differ after the raw write")
	}
	go func() {
		_, err := peer.Write(want)
		peer.Close()
		errc <- err
	}()
	back, err := io.ReadAll(raw)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, want) {
		t.Fatal("bytes differ after the raw read")
	}
	// The peer has closed: the next read is EOF again.
	if n, err := raw.Read(make([]byte, 8)); n != 0 || err != io.EOF {
		t.Fatalf("read after EOF = %d, %v", n, err)
	}
}

func TestWrapDeadlineAndClose(t *testing.T) {
	raw, _ := tcpPair(t)
	raw.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := raw.Read(make([]byte, 8)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	raw.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, err := raw.Read(make([]byte, 8))
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	raw.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed conn: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a blocked Read")
	}
}

func TestWrapWriteToGonePeerIsAnError(t *testing.T) {
	raw, peer := tcpPair(t)
	// Unread data makes close send a reset.
	raw.Write([]byte("unread"))
	time.Sleep(10 * time.Millisecond)
	peer.Close()
	time.Sleep(10 * time.Millisecond)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = raw.Write(make([]byte, 4096))
	}
	if !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write to a reset connection: %v", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("error is not a write OpError: %#v", err)
	}
}
