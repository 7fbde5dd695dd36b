package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// tcpPair returns the two ends of a loopback TCP connection, the first
// wrapped by Wrap.
func tcpPair(t *testing.T) (raw net.Conn, peer net.Conn) {
	t.Helper()
	c, peer := testenv.TCPPair(t)
	raw = Wrap(c)
	if _, ok := raw.(*rawConn); !ok {
		t.Fatalf("Wrap(%T) did not wrap it", c)
	}
	return raw, peer
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

// TestReadWriteAllocateNothing: a relay reads and writes for every message
// it passes on; a closure made per call escaped to the heap with the
// variables it shared (three or four allocations each).
func TestReadWriteAllocateNothing(t *testing.T) {
	raw, peer := tcpPair(t)
	msg, buf := []byte("query"), make([]byte, 64)
	pool := sync.Pool{New: func() any { b := make([]byte, 64); return &b }}
	var bp *[]byte
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := raw.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(peer, buf[:len(msg)]); err != nil {
			t.Fatal(err)
		}
		peer.Write(msg)
		if n, err := raw.Read(buf); err != nil || n != len(msg) {
			t.Fatalf("read = %d, %v", n, err)
		}
		peer.Write(msg)
		if n, err := raw.(*rawConn).ReadPooled(&pool, &bp); err != nil || n != len(msg) {
			t.Fatalf("pooled read = %d, %v", n, err)
		}
	})
	// The peer's side is a plain net.Conn: its reads and writes allocate
	// nothing either.
	if allocs != 0 {
		t.Fatalf("%.1f allocations a round of a write and two reads, want 0", allocs)
	}
}
