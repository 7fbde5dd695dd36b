package rawsock

import (
	"testing"
	"time"
)

// watched watches c and returns a channel that gets a value when ready is
// called.
func watched(t *testing.T, c *rawConn) chan struct{} {
	t.Helper()
	fired := make(chan struct{}, 2)
	if !c.Watch(func() { fired <- struct{}{} }) {
		t.Fatal("Watch refused a TCP socket")
	}
	return fired
}

func expectFired(t *testing.T, fired chan struct{}, what string) {
	t.Helper()
	select {
	case <-fired:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: ready was not called", what)
	}
}

func expectQuiet(t *testing.T, fired chan struct{}, what string) {
	t.Helper()
	select {
	case <-fired:
		t.Fatalf("%s: ready was called", what)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestWatchFires: a watch fires once for input that arrives, for input
// already waiting when it is set (none is missed between a relay's last
// read and its watch), and for the peer's close; the socket then reads
// as before.
func TestWatchFires(t *testing.T) {
	raw, peer := tcpPair(t)
	c := raw.(*rawConn)
	fired := watched(t, c)
	expectQuiet(t, fired, "nothing sent")
	peer.Write([]byte("a"))
	expectFired(t, fired, "input")
	peer.Write([]byte("b"))
	expectQuiet(t, fired, "one event per watch")
	if c.Unwatch() {
		t.Fatal("Unwatch after the event reported ready would not be called")
	}
	// "ab" waits unread: a new watch fires at once.
	fired = watched(t, c)
	expectFired(t, fired, "input already there")
	buf := make([]byte, 8)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ab" {
		t.Fatalf("read %q, %v after the watches", buf[:n], err)
	}
	fired = watched(t, c)
	peer.Close()
	expectFired(t, fired, "peer closed")
}

// TestUnwatch: a cancelled watch never fires, and the socket can be
// watched again; a second watch while one is set is refused.
func TestUnwatch(t *testing.T) {
	raw, peer := tcpPair(t)
	c := raw.(*rawConn)
	fired := watched(t, c)
	if c.Watch(func() {}) {
		t.Fatal("a second watch was set")
	}
	if !c.Unwatch() {
		t.Fatal("Unwatch of a pending watch reported ready may be called")
	}
	if c.Unwatch() {
		t.Fatal("Unwatch with no watch reported one cancelled")
	}
	peer.Write([]byte("a"))
	expectQuiet(t, fired, "cancelled watch")
	fired = watched(t, c)
	expectFired(t, fired, "watch set again")
	// The byte that fired it is read, or the next watch (level-triggered)
	// could fire before Unwatch cancels it.
	if n, err := c.Read(make([]byte, 1)); n != 1 || err != nil {
		t.Fatalf("read the byte that fired the watch: %d %v", n, err)
	}
	// Unwatched and closed: the set keeps no entry for a descriptor
	// number the next socket may get.
	fired = watched(t, c)
	if !c.Unwatch() {
		t.Fatal("Unwatch of a pending watch failed")
	}
	c.Close()
	raw2, peer2 := tcpPair(t)
	fired2 := watched(t, raw2.(*rawConn))
	expectQuiet(t, fired, "closed socket")
	peer2.Write([]byte("x"))
	expectFired(t, fired2, "the next socket")
	expectQuiet(t, fired, "closed socket")
}
