// Package rawsock gives relays socket reads and writes that cost no more
// than the system call itself. It depends on the standard library only, so
// the decoders' tests can use it.
package rawsock

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Wrap returns c with Read and Write that enter the kernel with raw system
// calls when c is a plain TCP or Unix socket, and c itself otherwise (TLS,
// pipes in tests). Relays wrap both of their sockets with it.
//
// Why: the runtime's ordinary syscall entry wakes its monitor thread
// (sysmon) whenever it finds it parked, and a session that waits on its
// peers between messages lets it park every time. On a 1-client round trip
// that cost two extra thread switches per transaction, which on a virtual
// machine with expensive switches doubled the latency a relay added. The
// sockets are non-blocking, so a raw read or write never blocks: waiting is
// still done by the runtime's poller (syscall.RawConn), with deadlines and
// Close working as for any net.Conn.
func Wrap(c net.Conn) net.Conn {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return c
	}
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return c
	}
	raw := &rawConn{Conn: c, rc: rc}
	raw.rd.step, raw.rd.waitStep, raw.wr.step = raw.rd.read, raw.rd.serve, raw.wr.write
	return raw
}

type rawConn struct {
	net.Conn
	rc syscall.RawConn
	// watch is the token of the socket's watch (see Watch), 0 for none;
	// guarded by the watcher's mutex.
	watch int32
	// rd and wr hold the read and the write in progress. A closure made
	// for each call escaped to the heap through syscall.RawConn with the
	// variables it shares (three or four allocations a read or write,
	// fifteen a PostgreSQL transaction through a relay); their steps are
	// bound once, here.
	rd readOp
	wr writeOp
}

// readOp is a read's buffer and outcome. Its mutex keeps concurrent
// reads of one socket apart, as the runtime's own read lock would.
type readOp struct {
	mu sync.Mutex
	// b is the buffer, or nil to take one from pool into *bp once there
	// are bytes (ReadPooled).
	b     []byte
	pool  *sync.Pool
	bp    **[]byte
	n     int
	errno syscall.Errno
	err   error // the poller's, for a read a waiter served
	step  func(fd uintptr) bool
	// first is set until a read's first attempt is made; wasted counts
	// the reads in a row whose first attempt found nothing.
	first  bool
	wasted int
	// A socket whose reads keep finding nothing at first is read by a
	// waiter (see waitAhead), when its user allows it (ReadAhead); wmu
	// guards its state.
	wmu     sync.Mutex
	allowed bool // ReadAhead(true)
	ahead   bool // the next read goes to the waiter
	running bool // the waiter's goroutine runs
	pending bool // a read waits for the waiter
	retried bool // the waiter asked the poller again after an error
	// done hands a served read back to the caller; made when the first
	// waiter starts, since most sockets never have one.
	done     chan struct{}
	waitStep func(fd uintptr) bool
}

// aheadAfter is how many reads in a row must find nothing at their first
// attempt before a socket's reads go to a waiter.
const aheadAfter = 2

// attempt is one read(2) into the read's buffer. again reports that
// there was nothing to read (the pooled buffer, if taken, given back).
func (r *readOp) attempt(fd uintptr) (n int, size int, errno syscall.Errno, again bool) {
	for {
		b := r.b
		if b == nil {
			if *r.bp == nil {
				*r.bp = r.pool.Get().(*[]byte)
			}
			b = **r.bp
		}
		m, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if r.b == nil {
				r.pool.Put(*r.bp)
				*r.bp = nil
			}
			return 0, len(b), 0, true
		}
		return int(m), len(b), e, false
	}
}

// read is the step syscall.RawConn.Read runs until it returns true: one
// read(2), or false when there is nothing to read yet.
func (r *readOp) read(fd uintptr) bool {
	n, _, errno, again := r.attempt(fd)
	if r.first {
		r.first = false
		if again {
			r.wasted++
		} else {
			r.wasted = 0
		}
	}
	if again {
		return false
	}
	r.n, r.errno = n, errno
	return true
}

func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r := &c.rd
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b = b
	n, errno, err := c.read()
	r.b = nil
	return c.readResult(n, errno, err)
}

// read makes the read whose buffer r holds, on the caller's goroutine or
// through the waiter.
//
// Why a waiter: the runtime's poller forgets that a socket became
// readable when a read begins (internal/poll's prepareRead), so every
// read starts with a read(2), and a relay that reads again once it has
// passed a message on finds nothing there and then waits: two system
// calls a message, one of them wasted. In a request and answer protocol
// (PostgreSQL's) that is nearly every message: 12 of 26 reads in a
// pgbench tpcb-like transaction, each a kernel entry of 1.4 µs or more on
// a virtual machine. A waiter stays in one syscall.RawConn.Read across
// messages: after a read that left the socket empty (shorter than its
// buffer) it waits at once, and the poller wakes it when the next bytes
// come, for the read the caller will have asked for by then. It never
// blocks inside the step, so Close and deadlines end its wait as any
// read's. Bytes that come before the caller asks (a pipelining peer)
// would have been found by the caller's own read: the socket goes back
// to reading on the caller's goroutine.
//
// What it cannot see is an end the peer signalled together with its last
// bytes (a FIN or a reset in before the waiter ran): the poller's one
// wake-up covered both, the read takes the bytes, and no wake-up comes
// for the end. So the waiter serves only a socket whose user bounds every
// wait by other means (ReadAhead).
func (c *rawConn) read() (int, syscall.Errno, error) {
	r := &c.rd
	r.n, r.errno, r.err = 0, 0, nil
	r.wmu.Lock()
	if r.ahead || r.running {
		r.pending, r.retried = true, false
		start := !r.running
		r.running = true
		if r.done == nil {
			r.done = make(chan struct{}, 1)
		}
		r.wmu.Unlock()
		if start {
			go c.waitAhead()
		}
		<-r.done
		return r.n, r.errno, r.err
	}
	allowed := r.allowed
	r.wmu.Unlock()
	r.first = true
	err := c.rc.Read(r.step)
	if allowed && err == nil && r.wasted >= aheadAfter {
		r.wmu.Lock()
		r.ahead = r.allowed
		r.wmu.Unlock()
	}
	return r.n, r.errno, err
}

// waitAhead is the waiter: it serves the reads asked for (readOp.pending)
// from within one syscall.RawConn.Read for as long as each leaves the
// socket empty and the next is asked for before more bytes come. It ends
// when no read is asked for, with any error of the poller's (a deadline,
// a close) given to the read that waits.
func (c *rawConn) waitAhead() {
	r := &c.rd
	for {
		err := c.rc.Read(r.waitStep)
		r.wmu.Lock()
		switch {
		case !r.pending:
			r.running = false
			r.wmu.Unlock()
			return
		case err != nil && !r.retried:
			// The error may be a deadline that passed before the caller
			// set its own: ask the poller again, once.
			r.retried = true
		case err != nil:
			r.err, r.pending, r.running = err, false, false
			r.wmu.Unlock()
			r.done <- struct{}{}
			return
		}
		// A read asked for after the step ended the wait: serve it.
		r.wmu.Unlock()
	}
}

// serve is the waiter's step: the read asked for, or, when none is, the
// end of the wait (bytes came before the caller asked for them).
func (r *readOp) serve(fd uintptr) bool {
	r.wmu.Lock()
	if !r.pending {
		r.ahead = false
		r.wmu.Unlock()
		return true
	}
	r.wmu.Unlock()
	n, size, errno, again := r.attempt(fd)
	if again {
		return false
	}
	r.n, r.errno = n, errno
	r.wmu.Lock()
	stay := r.ahead && errno == 0 && n > 0 && n < size
	r.pending = false
	r.wmu.Unlock()
	// From here on r belongs to the caller again.
	r.done <- struct{}{}
	return !stay
}

// writeOp is a write's bytes and outcome, kept apart like readOp's.
type writeOp struct {
	mu    sync.Mutex
	b     []byte
	n     int
	errno syscall.Errno
	step  func(fd uintptr) bool
}

// write is the step syscall.RawConn.Write runs until it returns true: one
// send(2), or false when the socket's buffer is full.
func (w *writeOp) write(fd uintptr) bool {
	for {
		// send(2) with MSG_NOSIGNAL: a peer that went away is an EPIPE
		// error here, never a signal.
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&w.b[0])), uintptr(len(w.b)),
			syscall.MSG_NOSIGNAL, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		w.n, w.errno = int(n), e
		return e != syscall.EAGAIN
	}
}

// readResult is Read's answer for a raw read of n bytes that ended with
// errno, or for err from the poller.
func (c *rawConn) readResult(n int, errno syscall.Errno, err error) (int, error) {
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (c *rawConn) Write(b []byte) (int, error) {
	w := &c.wr
	w.mu.Lock()
	defer w.mu.Unlock()
	done := 0
	var err error
	for done < len(b) && err == nil {
		w.b, w.n, w.errno = b[done:], 0, 0
		err = c.rc.Write(w.step)
		if err == nil && w.errno != 0 {
			err = c.opError("write", w.errno)
		}
		if err == nil {
			done += w.n
		}
	}
	// The caller's buffer is not kept past the call.
	w.b = nil
	return done, err
}

func (c *rawConn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(),
		Err: os.NewSyscallError(op, errno)}
}

// ReadAhead allows the socket's reads to go to a waiter once they keep
// finding nothing at first (see read), or stops them from going to one
// (protocol.AheadReader). A caller that allows it must bound its waits
// itself: an end the peer signalled with its last bytes reaches a waiter
// only when something else ends its wait (a deadline, a close).
func (c *rawConn) ReadAhead(on bool) {
	r := &c.rd
	r.wmu.Lock()
	r.allowed = on
	r.ahead = r.ahead && on
	r.wmu.Unlock()
}

// SyscallConn gives the socket itself, as the wrapped connection does.
func (c *rawConn) SyscallConn() (syscall.RawConn, error) { return c.rc, nil }

// CloseWrite shuts down the writing side of the socket (TCP and Unix
// sockets have one), so a relay can pass on one side's end while the other
// still talks.
func (c *rawConn) CloseWrite() error {
	return c.Conn.(interface{ CloseWrite() error }).CloseWrite()
}

// copyBufs are WriteTo's buffers, shared by every relay of the process.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// WriteTo copies from c to w until c ends (io.EOF is no error) or either
// side fails, and returns the bytes written: io.Copy from a wrapped socket
// comes here. It holds a buffer only while bytes are flowing (see
// ReadPooled), so an idle relay holds none and a short connection
// allocates none.
func (c *rawConn) WriteTo(w io.Writer) (int64, error) {
	var bp *[]byte
	defer func() {
		if bp != nil {
			copyBufs.Put(bp)
		}
	}()
	var written int64
	for {
		n, err := c.ReadPooled(&copyBufs, &bp)
		if err == io.EOF {
			return written, nil
		}
		if err != nil {
			return written, err
		}
		m, err := w.Write((*bp)[:n])
		written += int64(m)
		if err != nil {
			return written, err
		}
	}
}

// ReadPooled implements the decoders' pooled read (protocol.ReadPooled):
// it reads into the buffer *bp points to, which may be nil or a buffer the
// caller holds with nothing in it it still needs. The buffer is taken from
// pool only once there are bytes to read, and goes back to pool, leaving
// *bp nil, whenever the read must wait: a connection waiting for its peer
// holds no buffer. When nothing was read, *bp is nil. pool holds *[]byte of
// non-zero length.
func (c *rawConn) ReadPooled(pool *sync.Pool, bp **[]byte) (int, error) {
	r := &c.rd
	r.mu.Lock()
	defer r.mu.Unlock()
	// No buffer of the caller's: the step reads into the pool's.
	r.b, r.pool, r.bp = nil, pool, bp
	n, errno, err := c.read()
	r.pool, r.bp = nil, nil
	if n <= 0 && *bp != nil {
		pool.Put(*bp)
		*bp = nil
	}
	return c.readResult(n, errno, err)
}
