package postgres

import (
	"errors"
	"io"
	"net"
	"syscall"
)

// endpoint is one side of a relayed session. For a plain TCP or Unix socket
// the relay switches the socket to blocking mode and reads and writes it with
// direct system calls, so the kernel wakes the reading thread itself when a
// message arrives; going through Go's netpoller costs an epoll wake-up and a
// goroutine hand-off per message, which is most of a proxy's added latency on
// a two-core machine. Other connections (TLS) use the net.Conn as is.
type endpoint struct {
	conn net.Conn
	fd   int // -1: use conn
}

func newEndpoint(c net.Conn, raw bool) *endpoint {
	e := &endpoint{conn: c, fd: -1}
	if !raw {
		return e
	}
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return e
	}
	sc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		return e
	}
	sc.Control(func(fd uintptr) {
		if syscall.SetNonblock(int(fd), false) == nil {
			e.fd = int(fd)
		}
	})
	return e
}

func (e *endpoint) Read(p []byte) (int, error) {
	if e.fd < 0 {
		return e.conn.Read(p)
	}
	for {
		n, err := syscall.Read(e.fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (e *endpoint) Write(p []byte) (int, error) {
	if e.fd < 0 {
		return e.conn.Write(p)
	}
	done := 0
	for done < len(p) {
		n, err := syscall.Write(e.fd, p[done:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// shutdown wakes a thread blocked reading or writing the socket; the socket
// is closed only after both relay loops have returned, so its descriptor
// cannot be reused under them.
func (e *endpoint) shutdown() {
	if e.fd >= 0 {
		syscall.Shutdown(e.fd, syscall.SHUT_RDWR)
		return
	}
	e.conn.Close()
}

// isClosed reports errors that mean the connection is gone rather than broken.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
