package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// answered passes n messages from peer to raw as a request and answer
// protocol does: the next one is sent only once raw has read the last
// (and a moment later, the answer's round trip), so raw's read after each
// message finds nothing at first. It returns how
// many read system calls the process made meanwhile (the peer only
// writes).
func answered(t *testing.T, raw, peer net.Conn, n int, read func() ([]byte, error)) int {
	t.Helper()
	next := make(chan struct{})
	go func() {
		for range next {
			// A spin, not a sleep: the runtime's timer wake-up is a read
			// of its own (the poller's eventfd), which the count would take.
			for start := time.Now(); time.Since(start) < 300*time.Microsecond; {
			}
			peer.Write([]byte("SELECT 1"))
		}
	}()
	defer close(next)
	before := readCalls(t)
	for i := 0; i < n; i++ {
		next <- struct{}{}
		got, err := read()
		if err != nil || string(got) != "SELECT 1" {
			t.Fatalf("message %d: %q, %v", i, got, err)
		}
	}
	return readCalls(t) - before
}

// readCalls is the process's read system calls so far.
func readCalls(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscr: "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatal("no syscr in /proc/self/io")
	return 0
}

// TestAnsweredMessagesReadOnce: in a request and answer protocol each
// read found nothing at first and waited, two read(2) a message; the
// waiter makes one, where its user allows it, and only there.
func TestAnsweredMessagesReadOnce(t *testing.T) {
	const n = 300
	raw, peer := tcpPair(t)
	buf := make([]byte, 64)
	without := answered(t, raw, peer, n, func() ([]byte, error) {
		m, err := raw.Read(buf)
		return buf[:m], err
	})
	if without < n*7/4 {
		t.Fatalf("%d read system calls for %d messages without ReadAhead, want two each", without, n)
	}
	raw.(*rawConn).ReadAhead(true)
	calls := answered(t, raw, peer, n, func() ([]byte, error) {
		m, err := raw.Read(buf)
		return buf[:m], err
	})
	if calls > n*3/2 {
		t.Fatalf("%d read system calls for %d messages (%d without ReadAhead), want about one each", calls, n, without)
	}
	pool := sync.Pool{New: func() any { b := make([]byte, 64); return &b }}
	var bp *[]byte
	calls = answered(t, raw, peer, n, func() ([]byte, error) {
		m, err := raw.(*rawConn).ReadPooled(&pool, &bp)
		if m == 0 {
			return nil, err
		}
		return (*bp)[:m], err
	})
	if calls > n*3/2 {
		t.Fatalf("pooled: %d read system calls for %d messages, want about one each", calls, n)
	}
}

// ahead brings raw's reads to the waiter and leaves it waiting, with no
// read asked for. A busy machine may deliver a message before its read
// is asked for, which sends the reads back to the caller: it tries again.
func ahead(t *testing.T, raw, peer net.Conn) {
	t.Helper()
	raw.(*rawConn).ReadAhead(true)
	buf := make([]byte, 64)
	r := &raw.(*rawConn).rd
	for range 50 {
		answered(t, raw, peer, 2*aheadAfter+2, func() ([]byte, error) {
			m, err := raw.Read(buf)
			return buf[:m], err
		})
		r.wmu.Lock()
		on := r.ahead && r.running
		r.wmu.Unlock()
		if on {
			return
		}
	}
	t.Fatal("reads never went to the waiter")
}

// TestWaiterEndsAtClose: Close waits for every read in progress to end;
// the waiter's wait, with no read asked for, must end at once.
func TestWaiterEndsAtClose(t *testing.T) {
	raw, peer := tcpPair(t)
	before := runtime.NumGoroutine()
	ahead(t, raw, peer)
	closed := make(chan error, 1)
	go func() { closed <- raw.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited on the waiter")
	}
	if _, err := raw.Read(make([]byte, 8)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
	waitGoroutines(t, before)
}

// TestWaiterKeepsDeadlines: a deadline ends a read the waiter serves; one
// that passed while no read was asked for does not end the next read,
// made after the deadline was cleared; and the waiter's goroutine ends
// when its wait does (a session gone idle keeps none).
func TestWaiterKeepsDeadlines(t *testing.T) {
	raw, peer := tcpPair(t)
	before := runtime.NumGoroutine()
	ahead(t, raw, peer)
	buf := make([]byte, 64)
	raw.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := raw.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	waitGoroutines(t, before)

	raw.SetReadDeadline(time.Time{})
	ahead(t, raw, peer)
	raw.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	time.Sleep(80 * time.Millisecond) // passes while nothing reads
	raw.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(30 * time.Millisecond)
		peer.Write([]byte("after"))
	}()
	if n, err := raw.Read(buf); err != nil || string(buf[:n]) != "after" {
		t.Fatalf("read after a cleared deadline = %q, %v", buf[:n], err)
	}
}

// TestWaiterPassesPipelinedBytes: bytes that come before they are asked
// for take the socket's reads back from the waiter, and nothing is lost
// or reordered either way.
func TestWaiterPassesPipelinedBytes(t *testing.T) {
	raw, peer := tcpPair(t)
	ahead(t, raw, peer)
	var want bytes.Buffer
	for i := 0; i < 2000; i++ {
		want.WriteString("message " + strconv.Itoa(i) + ";")
	}
	go func() {
		// A burst, then pauses: both ways of reading are taken.
		b := want.Bytes()
		for len(b) > 0 {
			k := min(len(b), 700)
			peer.Write(b[:k])
			b = b[k:]
			if len(b)%7 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		peer.Close()
	}()
	got, err := io.ReadAll(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("read %d bytes, want %d, or in another order", len(got), want.Len())
	}
}

// waitGoroutines waits until no more goroutines run than want.
func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, want %d: the waiter did not end", runtime.NumGoroutine(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWaiterMissesAnEndThatCameWithTheLastBytes is why the waiter serves
// only a socket whose user bounds its waits (ReadAhead): bytes and the
// peer's end that arrive together wake it once; it reads the bytes, waits,
// and nothing wakes it for the end until a deadline does. Then the end is
// read, as it would have been at once without the waiter.
func TestWaiterMissesAnEndThatCameWithTheLastBytes(t *testing.T) {
	raw, peer := tcpPair(t)
	ahead(t, raw, peer)
	buf := make([]byte, 64)
	// The last bytes and the end, both in before the waiter runs: it is
	// parked, and the two arrive within one wake-up's latency.
	peer.Write([]byte("last"))
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close()
	time.Sleep(20 * time.Millisecond)
	n, err := raw.Read(buf)
	if err != nil || string(buf[:n]) != "last" {
		t.Fatalf("read = %q, %v", buf[:n], err)
	}
	raw.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	start := time.Now()
	_, err = raw.Read(buf)
	if err == nil {
		t.Fatal("read after the peer's reset succeeded")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline ended the lost wait: the next read finds the end.
		raw.SetReadDeadline(time.Time{})
		_, err = raw.Read(buf)
	}
	if !errors.Is(err, syscall.ECONNRESET) && err != io.EOF {
		t.Fatalf("read after the peer's reset = %v (after %v)", err, time.Since(start))
	}
}
