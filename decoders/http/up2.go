package http

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// up2 is an upstream HTTP/2 connection of the relay (relay2): its writer,
// the goroutine reading its frames, and its settings and stream IDs.
//
// When an agent's connection ends in step with it, it is kept (idle1) for
// the identity's next HTTP/2 connection to the same upstream, as HTTP/1.1
// upstream connections are: most HTTP/2 agents (curl, a Go program, a
// command of a CI step) open a connection per run, and each would
// otherwise cost a TCP and a TLS handshake upstream before its first
// request. While kept, its reader answers what the server sends an idle
// connection (SETTINGS, PING) and drops it at a GOAWAY or an error.
//
// The lock that guards its state is its owner's: the relay's mu while a
// relay serves it, park while it is kept. The reader finds which (lock).
type up2 struct {
	d    *Decoder
	conn net.Conn
	w    frameWriter
	idle time.Duration // how long a write may wait

	next  uint32 // the next stream ID
	limit uint32 // the server's MAX_CONCURRENT_STREAMS
	frame uint32 // the server's largest frame
	recv  window // the server's DATA on the connection
	gone  error  // why the connection takes no new streams
	dead  bool   // the connection failed or was closed

	owner atomic.Pointer[relay2] // nil while kept; set under both locks
	park  sync.Mutex
	key   idleKey   // while kept
	kept  *idleConn // while in the pool
}

// newUp2 starts the relay's side of an HTTP/2 connection over nc: its
// preface, its settings and window, and its reader.
func newUp2(c *conn, nc net.Conn) *up2 {
	u := &up2{d: c.d, conn: nc, w: newFrameWriter(nc), idle: orDefault(c.d.IdleTimeout, DefaultIdleTimeout),
		next: 1, limit: 100, frame: 16384, recv: window{left: relayConnWindow}}
	u.w.note(nil)
	u.w.bw.WriteString(http2.ClientPreface)
	u.w.note(u.w.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: relayStreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.maxHeader)}))
	u.w.note(u.w.fr.WriteWindowUpdate(0, relayConnWindow-65535))
	u.w.flush(u.idle)
	ur, br := newFrameReader(&dryReader{conn: nc, onDry: u.dry, early: true}, c.maxHeader)
	go func() {
		defer putFrameReader(br)
		u.read(ur)
	}()
	return u
}

// dialRelay returns the upstream connection an HTTP/2 agent is relayed
// over: one the identity kept, or a new one, TLS configured as the
// Transport's, offering HTTP/2 and HTTP/1.1. It returns nil when the
// upstream does not speak HTTP/2 (the target is then remembered as such)
// or cannot be reached: the Transport's path serves the agent, and
// answers the failure as it does.
func (c *conn) dialRelay(ctx context.Context) *up2 {
	us := c.d.upstreamOf(c.target, c.t.RootCAs)
	if us.noH2.Load() {
		return nil
	}
	key := c.idleKey(true)
	for {
		ic := c.d.idle.take(key)
		if ic == nil {
			break
		}
		if u := ic.h2; u.unpark() {
			return u
		}
	}
	nc, err := c.s.Upstream.Dial(ctx)
	if err != nil {
		return nil
	}
	cfg := c.upTLS.Clone()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	tc := tls.Client(nc, cfg)
	hctx, cancel := context.WithTimeout(ctx, c.s.Handshake)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil
	}
	if tc.ConnectionState().NegotiatedProtocol != "h2" {
		us.noH2.Store(true)
		tc.Close()
		return nil
	}
	return newUp2(c, tc)
}

// frameReaders are the buffers the relay reads frames through, put back
// once their reader ended: a new HTTP/2 connection allocated 16 KiB for
// its agent's otherwise, a sixth of all it allocated.
var frameReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// newFrameReader reads HTTP/2 frames through d, header blocks decoded and
// bounded by maxHeader, and returns the buffer it reads through (from
// frameReaders, for the caller to put back once it reads no more).
func newFrameReader(d *dryReader, maxHeader int) (*http2.Framer, *bufio.Reader) {
	br := frameReaders.Get().(*bufio.Reader)
	br.Reset(d)
	fr := http2.NewFramer(nil, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = uint32(maxHeader)
	// The frame size the relay advertises, HTTP/2's default: the framer
	// would otherwise take frames of 16 MiB, and buffer them.
	fr.SetMaxReadFrameSize(16 << 10)
	// Every frame is done with before the next is read.
	fr.SetReuseFrames()
	return fr, br
}

// putFrameReader puts br back in frameReaders, holding no connection.
func putFrameReader(br *bufio.Reader) {
	br.Reset(nil)
	frameReaders.Put(br)
}

// lock takes the lock of u's state, its owner's or park, and returns the
// owner (nil: kept). The owner changes only under both its own lock and
// park (attach, release), so it is checked again once locked.
func (u *up2) lock() *relay2 {
	for {
		r := u.owner.Load()
		if r == nil {
			u.park.Lock()
		} else {
			r.mu.Lock()
		}
		if u.owner.Load() == r {
			return r
		}
		u.unlock(r)
	}
}

func (u *up2) unlock(r *relay2) {
	if r == nil {
		u.park.Unlock()
	} else {
		r.mu.Unlock()
	}
}

// attach makes r the connection's owner; the caller holds r.mu.
func (u *up2) attach(r *relay2) {
	u.park.Lock()
	u.owner.Store(r)
	u.park.Unlock()
}

// release ends its owner's use of the connection, which is kept for key
// when keep and the connection is in step with its server (no stream
// under way, nothing failed, new streams still taken), else closed. The
// caller holds the owner's mu, if it has one.
func (u *up2) release(keep bool, key idleKey) {
	u.park.Lock()
	defer u.park.Unlock()
	u.owner.Store(nil)
	if !keep || u.dead || u.gone != nil || u.w.err != nil {
		u.drop()
		return
	}
	// What the server sent that the agent never took (it went away with
	// answers still queued) counts as taken: credited with the rest, as
	// its half window fills.
	u.recv.give(relayConnWindow-u.recv.left-u.recv.unsent, relayConnWindow, &u.w, 0)
	if u.w.flush(u.idle) != nil {
		u.drop()
		return
	}
	u.key, u.kept = key, &idleConn{nc: u.conn, h2: u}
	u.d.idle.put(key, u.kept)
}

// unpark takes a kept connection out for a new owner, and reports whether
// it still takes streams; one that does not is closed.
func (u *up2) unpark() bool {
	u.park.Lock()
	defer u.park.Unlock()
	u.kept = nil
	if u.dead || u.gone != nil {
		u.drop()
		return false
	}
	return true
}

// drop closes the connection, and takes it out of the pool if it is
// kept; the caller holds u's lock.
func (u *up2) drop() {
	u.dead = true
	if u.kept != nil {
		u.d.idle.remove(u.key, u.kept)
		u.kept = nil
	}
	u.conn.Close()
}

// dry flushes what was written for the connection, and its owner's
// agent's: the reader found no more input at hand.
func (u *up2) dry() {
	r := u.lock()
	if r != nil {
		r.flush()
	} else if !u.dead {
		u.w.flush(u.idle)
	}
	u.unlock(r)
}

// read reads the server's frames until the connection ends: its owner's
// to handle while it has one, the kept connection's own otherwise.
func (u *up2) read(ur *http2.Framer) {
	for {
		f, err := ur.ReadFrame()
		r := u.lock()
		ok := u.handle(r, f, err)
		if !ok {
			u.dead = true
			u.conn.Close()
		}
		u.unlock(r)
		if !ok {
			return
		}
	}
}

// handle hands a frame (or the error read instead) to the connection's
// owner r, or handles it while the connection is kept; false: the
// connection ends. A panic there, a defect a server's frame reached, ends
// the connection and its owner's session with the defect
// (protocol.Contained); it is recovered while read still holds the lock it
// took, which read then releases as ever.
func (u *up2) handle(r *relay2, f http2.Frame, err error) (ok bool) {
	defer func() {
		if ie := protocol.Contained("http/2 upstream connection", recover()); ie != nil {
			ok = false
			if r != nil {
				r.c.fail(ie)
			}
		}
	}()
	if r != nil {
		return r.upFrame(f, err)
	}
	return u.keptFrame(f, err)
}

// keptFrame handles a frame (or the error read instead) of a kept
// connection, or one between owners; false: the connection ends.
func (u *up2) keptFrame(f http2.Frame, err error) bool {
	if err != nil {
		var se http2.StreamError
		if errors.As(err, &se) {
			// A stream the relay gave up on.
			return true
		}
		u.drop()
		return false
	}
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if err := u.settings(f); err != nil {
			u.drop()
			return false
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			u.w.note(u.w.fr.WritePing(true, f.Data))
		}
	case *http2.DataFrame:
		// Of a stream the relay reset: the connection's window is credited.
		n := int32(f.Length)
		if u.recv.left -= n; u.recv.left < 0 {
			u.drop()
			return false
		}
		u.recv.give(n, relayConnWindow, &u.w, 0)
	case *http2.GoAwayFrame, *http2.PushPromiseFrame:
		u.drop()
		return false
	}
	return true
}

// settings applies the server's settings and acknowledges them.
func (u *up2) settings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			u.limit = s.Val
		case http2.SettingMaxFrameSize:
			u.frame = s.Val
		case http2.SettingHeaderTableSize:
			u.w.encoder().SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	if err != nil {
		return err
	}
	u.w.note(u.w.fr.WriteSettingsAck())
	return nil
}
