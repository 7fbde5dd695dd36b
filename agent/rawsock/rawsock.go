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
	raw.rd.step, raw.wr.step = raw.rd.read, raw.wr.write
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
	step  func(fd uintptr) bool
}

// read is the step syscall.RawConn.Read runs until it returns true: one
// read(2), or false when there is nothing to read yet.
func (r *readOp) read(fd uintptr) bool {
	for {
		b := r.b
		if b == nil {
			if *r.bp == nil {
				*r.bp = r.pool.Get().(*[]byte)
			}
			b = **r.bp
		}
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if r.b == nil {
				r.pool.Put(*r.bp)
				*r.bp = nil
			}
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
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

func (c *rawConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r := &c.rd
	r.mu.Lock()
	defer r.mu.Unlock()
	r.b, r.n, r.errno = b, 0, 0
	err := c.rc.Read(r.step)
	r.b = nil
	return c.readResult(r.n, r.errno, err)
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
	r.b, r.pool, r.bp, r.n, r.errno = nil, pool, bp, 0, 0
	err := c.rc.Read(r.step)
	n, errno := r.n, r.errno
	r.pool, r.bp = nil, nil
	if n <= 0 && *bp != nil {
		pool.Put(*bp)
		*bp = nil
	}
	return c.readResult(n, errno, err)
}
