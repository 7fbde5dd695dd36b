package protocol

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Relay copies bytes both ways between a and b until both directions end,
// and returns the byte counts (a to b, b to a): the plain TCP relay and the
// TLS passthrough. The first direction to end half-closes its destination,
// so protocols that shut down one side keep working; the second closes its
// destination, whose input has already ended: the half-close would be a
// system call more per connection, and most of them failed (ENOTCONN) on a
// peer already gone. An error on either side closes both, since the other
// copy would otherwise wait on a peer that is never told. One direction is
// copied on the calling goroutine.
//
// err is nil however the copies ended, but for a panic in either (a defect
// in a connection's wrapper: recording, raw socket): both connections are
// closed and err is the defect (Contained), for the session to end with.
func Relay(a, b net.Conn) (aToB, bToA int64, err error) {
	var ended atomic.Int32
	down := make(chan error, 1)
	go func() {
		var defect error
		bToA, defect = copyDown(a, b, &ended)
		down <- defect
	}()
	aToB, err = copyUp(b, a, &ended)
	if defect := <-down; err == nil {
		err = defect
	}
	return aToB, bToA, err
}

// copyUp and copyDown are separate functions so stack traces say which way
// a stuck copy was going; each returns only a defect, having closed both
// connections (Recover).
func copyUp(dst, src net.Conn, ended *atomic.Int32) (n int64, defect error) {
	defer Recover("relay, agent to server", &defect, dst, src)
	return copyOne(dst, src, ended), nil
}

func copyDown(dst, src net.Conn, ended *atomic.Int32) (n int64, defect error) {
	defer Recover("relay, server to agent", &defect, dst, src)
	return copyOne(dst, src, ended), nil
}

// copyOne copies src to dst, then ends dst (finish); an error closes both.
func copyOne(dst, src net.Conn, ended *atomic.Int32) int64 {
	n, err := io.Copy(dst, src)
	finish(dst, ended)
	if err != nil {
		dst.Close()
		src.Close()
	}
	return n
}

// finish ends dst once its direction has: a half-close while the other
// direction goes on, a close once both have ended.
func finish(dst net.Conn, ended *atomic.Int32) {
	if ended.Add(1) == 2 {
		dst.Close()
		return
	}
	CloseWrite(dst)
}

// CloseWrite half-closes c when the connection under it can, so its peer
// sees the end while the other direction goes on; otherwise it closes c.
func CloseWrite(c net.Conn) {
	for {
		switch x := c.(type) {
		case interface{ CloseWrite() error }:
			x.CloseWrite()
			return
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		case *ReplayConn:
			c = x.Conn
		default:
			c.Close()
			return
		}
	}
}

// Watcher is a connection whose input can be awaited with no goroutine
// parked on it (agent/rawsock's sockets): a relay whose agent went idle
// hands its wait over and ends its goroutine, which would otherwise hold
// a stack for as long as the session stays idle.
type Watcher interface {
	// Watch arranges for ready to be called, on a goroutine of its own,
	// once the connection has input, an end or an error to report; false
	// when it cannot (ready is then never called).
	Watch(ready func()) bool
	// Unwatch cancels the watch, before the connection closes, and
	// reports whether ready will never be called.
	Unwatch() bool
}

// AheadReader is a connection whose reads can be served by a waiter that
// stays in the runtime's poller across messages (agent/rawsock's
// sockets): in a request and answer protocol it saves the read that finds
// nothing after each message. It can miss an end the peer signalled with
// its last bytes, so only a relay that bounds its waits by other means
// allows it.
type AheadReader interface {
	ReadAhead(on bool)
}

// ReadPooled reads from c, as Read does, into the buffer *bp points to,
// for a reader that may wait long between messages: *bp may be nil, or a
// buffer the caller holds with nothing in it it still needs. A connection
// that can (the pipeline's sockets, see agent/rawsock) takes the buffer
// from pool only once there are bytes to read and gives it back, leaving
// *bp nil, before it waits, so a session waiting for its peer holds no
// buffer; any other (TLS) takes one before its read. When nothing was
// read, *bp is nil. pool holds *[]byte of non-zero length.
func ReadPooled(c net.Conn, pool *sync.Pool, bp **[]byte) (int, error) {
	if pc, ok := c.(interface {
		ReadPooled(*sync.Pool, **[]byte) (int, error)
	}); ok {
		return pc.ReadPooled(pool, bp)
	}
	if *bp == nil {
		*bp = pool.Get().(*[]byte)
	}
	n, err := c.Read(**bp)
	if n == 0 {
		pool.Put(*bp)
		*bp = nil
	}
	return n, err
}
