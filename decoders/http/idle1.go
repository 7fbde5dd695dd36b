package http

import (
	"bufio"
	"crypto/tls"
	"errors"
	"net"
	nethttp "net/http"
	"sync"
	"syscall"
	"time"
)

// idle1 keeps the upstream connections of sessions that ended in step
// with their server (HTTP/1.1, and the HTTP/2 relay's: up2), for the next
// session of the same identity to the same upstream, as a reverse proxy
// keeps its upstream connections alive: a new agent connection then costs
// no TCP and TLS handshake upstream. A connection serves one identity only
// (key), and is verified for the same server name against the same roots
// as the session that takes it would have verified.
type idle1 struct {
	mu    sync.Mutex
	conns map[idleKey][]*idleConn
	n     int // connections kept, all keys
}

// idleKey is what a kept connection may be reused for.
type idleKey struct {
	identity, target, serverName, addr string
	mode                               Mode
	h2                                 bool // the relay's HTTP/2 connections
	// verified is what the connection was verified against (Decoder.upstreamOf):
	// other roots are another key. nil in the clear.
	verified *upstreamSessions
}

type idleConn struct {
	nc    net.Conn
	br    *bufio.Reader // HTTP/1.1
	bw    *bufio.Writer // HTTP/1.1
	h2    *up2          // HTTP/2
	timer *time.Timer
}

// idlePerKey bounds the connections kept for one key and idleMax those
// kept in all, and idleFor is how long one is kept: well under the idle
// timeouts of common servers (nginx 75 s), so most are still open when
// taken.
const (
	idlePerKey = 8
	idleMax    = 256
	idleFor    = 30 * time.Second
)

// put keeps ic for key; the oldest kept connection of the key is closed
// when it has idlePerKey already, and ic itself when idleMax are kept.
func (p *idle1) put(key idleKey, ic *idleConn) {
	nc := ic.nc
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = map[idleKey][]*idleConn{}
	}
	list := p.conns[key]
	switch {
	case len(list) >= idlePerKey:
		list[0].timer.Stop()
		list[0].nc.Close()
		list = list[1:]
	case p.n >= idleMax:
		nc.Close()
		return
	default:
		p.n++
	}
	ic.timer = time.AfterFunc(idleFor, func() {
		if p.remove(key, ic) {
			nc.Close()
		}
	})
	p.conns[key] = append(list, ic)
}

// remove takes ic out of the pool; false if a session took it first.
func (p *idle1) remove(key idleKey, ic *idleConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.conns[key] {
		if x == ic {
			p.drop(key, i)
			ic.timer.Stop()
			return true
		}
	}
	return false
}

// drop takes the i-th kept connection of key out of the pool. The caller
// holds p.mu.
func (p *idle1) drop(key idleKey, i int) {
	list := p.conns[key]
	if list = append(list[:i:i], list[i+1:]...); len(list) == 0 {
		delete(p.conns, key)
	} else {
		p.conns[key] = list
	}
	p.n--
}

// take returns the most recently kept connection of key that is still
// quiet, closing those the server has closed or written to while idle (an
// answer nobody asked for would be read as the next request's); nil if
// there is none. An HTTP/2 connection's reader reads while it is kept:
// whether it still takes streams is its own to say (up2.unpark).
func (p *idle1) take(key idleKey) *idleConn {
	for {
		p.mu.Lock()
		list := p.conns[key]
		if len(list) == 0 {
			p.mu.Unlock()
			return nil
		}
		ic := list[len(list)-1]
		p.drop(key, len(list)-1)
		p.mu.Unlock()
		ic.timer.Stop()
		if ic.h2 != nil || quiet(ic) {
			return ic
		}
		ic.nc.Close()
	}
}

// quiet reports whether nothing arrived on ic while it was idle, not even
// the server's end: the socket under it has nothing to read now (a peek
// that would wait). A connection whose socket cannot be asked is not
// reused.
func quiet(ic *idleConn) bool {
	if ic.br.Buffered() > 0 {
		return false
	}
	nc := ic.nc
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var peek error
	if err := rc.Control(func(fd uintptr) {
		var b [1]byte
		_, _, peek = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	}); err != nil {
		return false
	}
	return errors.Is(peek, syscall.EAGAIN)
}

// transports holds the net/http clients requests go through when neither
// upstream1 nor the HTTP/2 relay can carry them (bodies, most of all, and
// requests a credential is written into), one per idleKey: their idle
// connections then serve the identity's next sessions too, as idle1's do,
// where a client of each session's own opened a TCP and TLS handshake
// upstream for every agent connection that sent one such request.
type transports struct {
	mu sync.Mutex
	m  map[idleKey]*keptTransport
}

type keptTransport struct {
	t    *nethttp.Transport
	used time.Time
}

// get returns key's client, made by newT if there is none. Clients no
// session took for twice idleFor are dropped as others are made, their
// idle connections closed (the Transport closes its own after idleFor).
func (p *transports) get(key idleKey, newT func() *nethttp.Transport) *nethttp.Transport {
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if kt := p.m[key]; kt != nil {
		kt.used = now
		return kt.t
	}
	if p.m == nil {
		p.m = map[idleKey]*keptTransport{}
	}
	for k, kt := range p.m {
		if now.Sub(kt.used) > 2*idleFor {
			kt.t.CloseIdleConnections()
			delete(p.m, k)
		}
	}
	t := newT()
	p.m[key] = &keptTransport{t: t, used: now}
	return t
}
