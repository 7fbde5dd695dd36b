package rawsock

import (
	"os"
	"sync"
	"syscall"
)

// Watch arranges for ready to be called, on a goroutine of its own, once
// the socket has bytes to read, its peer closed it, or it failed; it
// reports false when it cannot (ready is then never called). A relay
// waiting for a session that went idle hands its wait here and ends its
// goroutine: a parked goroutine costs its stack (4 to 8 KiB) for as long
// as the session stays idle, a watch a few bytes and a kernel entry. One
// watch at a time per socket; Unwatch cancels it.
func (c *rawConn) Watch(ready func()) bool {
	w, err := idleWatcher()
	if err != nil {
		return false
	}
	return w.add(c, ready)
}

// Unwatch cancels the socket's watch before the socket closes, and reports
// whether ready will never be called: false once the watcher has taken the
// socket's event (ready is called, or about to be), or with no watch set.
func (c *rawConn) Unwatch() bool {
	w, err := idleWatcher()
	if err != nil {
		return false
	}
	return w.remove(c)
}

// watcher is the process's one epoll set of watched sockets, its own
// descriptor waited on by the runtime's poller like any socket's: all the
// idle sessions cost one parked goroutine together.
type watcher struct {
	epfd int
	f    *os.File // epfd, for the runtime's poller
	mu   sync.Mutex
	next int32
	// watched maps each watch's token (the epoll event's data) to its
	// socket and callback; the socket's token is in rawConn.watch.
	watched map[int32]watch
}

type watch struct {
	c     *rawConn
	ready func()
}

var (
	watcherOnce sync.Once
	theWatcher  *watcher
	watcherErr  error
)

func idleWatcher() (*watcher, error) {
	watcherOnce.Do(func() { theWatcher, watcherErr = newWatcher() })
	return theWatcher, watcherErr
}

func newWatcher() (*watcher, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Non-blocking, so that os.NewFile hands it to the runtime's poller.
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	w := &watcher{epfd: fd, f: os.NewFile(uintptr(fd), "rawsock-watcher"), watched: map[int32]watch{}}
	rc, err := w.f.SyscallConn()
	if err != nil {
		w.f.Close()
		return nil, err
	}
	go w.run(rc)
	return w, nil
}

// add registers c for one event. The socket stays open meanwhile: the
// registration is made through its descriptor's reference (Control).
func (w *watcher) add(c *rawConn, ready func()) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.watch != 0 {
		return false
	}
	w.next++
	if w.next <= 0 {
		w.next = 1
	}
	tok := w.next
	var errno error
	err := c.rc.Control(func(fd uintptr) {
		// One-shot: the event disables the entry until it is removed, so
		// a socket's input wakes the watcher once, however long it waits
		// for the relay to read it.
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | epollOneShot, Fd: tok}
		errno = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err != nil || errno != nil {
		return false
	}
	c.watch = tok
	w.watched[tok] = watch{c: c, ready: ready}
	return true
}

// epollOneShot is EPOLLONESHOT, which package syscall has only as a
// negative untyped constant.
const epollOneShot = 1 << 30

// remove takes c's entry out, if the watcher has not taken its event.
func (w *watcher) remove(c *rawConn) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	tok := c.watch
	if tok == 0 {
		return false
	}
	w.drop(tok, c)
	return true
}

// drop removes the entry tok of c, with w.mu held. The kernel removes it
// itself if the socket has closed (Control then fails); while the socket
// is open, the descriptor cannot be another's.
func (w *watcher) drop(tok int32, c *rawConn) {
	c.rc.Control(func(fd uintptr) {
		syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
	delete(w.watched, tok)
	c.watch = 0
}

// run takes the set's events for ever, waiting for them in the runtime's
// poller, and calls each one's ready on a goroutine of its own.
func (w *watcher) run(rc syscall.RawConn) {
	events := make([]syscall.EpollEvent, 64)
	for {
		var (
			n     int
			errno error
		)
		err := rc.Read(func(uintptr) bool {
			for {
				n, errno = syscall.EpollWait(w.epfd, events, 0)
				if errno == syscall.EINTR {
					continue
				}
				// Nothing ready: wait for the set's descriptor to be.
				return errno != nil || n > 0
			}
		})
		if err == nil {
			err = errno
		}
		if err != nil {
			// The set is never closed, and its waits have no other way
			// to fail: the sessions it watches would never resume.
			panic("rawsock: waiting for idle sockets: " + err.Error())
		}
		for _, ev := range events[:n] {
			w.mu.Lock()
			wt, ok := w.watched[ev.Fd]
			if ok {
				w.drop(ev.Fd, wt.c)
			}
			w.mu.Unlock()
			if ok {
				go wt.ready()
			}
		}
	}
}
