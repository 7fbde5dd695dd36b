package postgres

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/decoders/protocol"
)

// suspendAfter is the tests' RelayConfig.IdleAfter.
const suspendAfter = 50 * time.Millisecond

// idleSession is one relayed session over loopback sockets, the agent's
// wrapped as interlockd's are (a protocol.Watcher).
type idleSession struct {
	agent, server net.Conn
	done          chan error
}

// startIdleSessions starts n sessions; with detach, each lets its relay
// detach (RelayConfig.Detached), and done gets the result either way.
func startIdleSessions(t *testing.T, ctx context.Context, n int, detach bool) []idleSession {
	t.Helper()
	var all []idleSession
	for range n {
		agent, agentSide := testenv.TCPPair(t)
		upSide, server := testenv.TCPPair(t)
		s := idleSession{agent: agent, server: server, done: make(chan error, 1)}
		cfg := RelayConfig{Enforcer: allowAll, IdleAfter: suspendAfter}
		if detach {
			cfg.Detached = func(err error) { s.done <- err }
		}
		go func() {
			if err := Relay(ctx, rawsock.Wrap(agentSide), rawsock.Wrap(upSide), cfg); err != protocol.ErrDetached {
				s.done <- err
			}
		}()
		all = append(all, s)
	}
	return all
}

// roundTrip sends a query through s and its answer back.
func (s idleSession) roundTrip(t *testing.T, sql string) {
	t.Helper()
	query, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	if _, err := s.agent.Write(query); err != nil {
		t.Fatal(err)
	}
	s.expectServer(t, query)
	s.answer(t)
}

func (s idleSession) expectServer(t *testing.T, want []byte) {
	t.Helper()
	s.server.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(s.server, got); err != nil || string(got) != string(want) {
		t.Fatalf("server got %q, %v; want %q", got, err, want)
	}
}

func (s idleSession) answer(t *testing.T) {
	t.Helper()
	result, _ := (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(nil)
	result, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(result)
	s.server.Write(result)
	s.expectAgent(t, result)
}

func (s idleSession) expectAgent(t *testing.T, want []byte) {
	t.Helper()
	s.agent.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(s.agent, got); err != nil || string(got) != string(want) {
		t.Fatalf("agent got %q, %v; want %q", got, err, want)
	}
}

// relayGoroutines counts the goroutines running relays' client and server
// sides.
func relayGoroutines() (client, server int) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return bytes.Count(buf, []byte("postgres.(*relay).clientLoop(")), bytes.Count(buf, []byte("postgres.(*relay).serverLoop("))
}

// expectGoroutines waits until relays run client and server goroutines.
func expectGoroutines(t *testing.T, client, server int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, s := relayGoroutines()
		if c == client && s == server {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d client and %d server goroutines, want %d and %d", what, c, s, client, server)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// idleModes are the two ways a relay gives an idle session's goroutines
// back: the client side's alone, and both sides' (RelayConfig.Detached),
// with the server goroutines an idle session keeps in each.
var idleModes = []struct {
	name    string
	detach  bool
	servers int
}{
	{"client side", false, 1},
	{"detached", true, 0},
}

// TestIdleSessionGivesBackItsGoroutines: a session whose agent is silent
// past IdleAfter keeps one goroutine (its server side), not two, and none
// with Detached set once the server is silent too; it carries on as before
// when either sends, the agent's statements and the server's own messages
// alike, many times over.
func TestIdleSessionGivesBackItsGoroutines(t *testing.T) {
	for _, mode := range idleModes {
		t.Run(mode.name, func(t *testing.T) {
			const sessions = 40
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			all := startIdleSessions(t, ctx, sessions, mode.detach)
			for range 3 {
				for _, s := range all {
					s.roundTrip(t, "SELECT 1")
				}
				expectGoroutines(t, 0, sessions*mode.servers, "idle sessions")
			}
			// A message whose first bytes came before an idle spell and
			// its rest after it is not cut: the spell bounds the wait for
			// a message's first bytes only.
			s := all[0]
			query, _ := (&pgproto3.Query{String: "SELECT 'split'"}).Encode(nil)
			s.agent.Write(query[:3])
			time.Sleep(4 * suspendAfter)
			s.agent.Write(query[3:])
			s.expectServer(t, query)
			s.answer(t)
			// The server speaks first: a notification reaches the idle
			// agent.
			note, _ := (&pgproto3.NotificationResponse{PID: 7, Channel: "jobs", Payload: "ready"}).Encode(nil)
			s.server.Write(note)
			s.expectAgent(t, note)
			expectGoroutines(t, 0, sessions*mode.servers, "after a notification")
			// A result slower than the idle interval: the server side
			// waits for it with the client side suspended, and hands its
			// wait over after it.
			s.agent.Write(query)
			s.expectServer(t, query)
			time.Sleep(4 * suspendAfter)
			s.answer(t)
			expectGoroutines(t, 0, sessions*mode.servers, "after a slow result")
			// A result that arrives in parts around the hand-over is not
			// cut.
			result, _ := (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(nil)
			result, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(result)
			s.agent.Write(query)
			s.expectServer(t, query)
			s.server.Write(result[:3])
			time.Sleep(4 * suspendAfter)
			s.server.Write(result[3:])
			s.expectAgent(t, result)
			// Bytes that arrive as a side is handed over are not lost:
			// the agent sends the moment the idle spell ends, again and
			// again.
			for range 20 {
				time.Sleep(suspendAfter + time.Duration(runtime.NumGoroutine()%3)*time.Millisecond)
				s.roundTrip(t, "SELECT 2")
			}
			cancel()
			for _, s := range all {
				select {
				case err := <-s.done:
					if !errors.Is(err, context.Canceled) {
						t.Fatalf("relay ended with %v, want context.Canceled", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("a relay did not end when its context did")
				}
			}
			expectGoroutines(t, 0, 0, "after the sessions")
		})
	}
}

// TestIdleSessionEnds: an idle session, its client side handed over or
// the whole session detached, still ends as a busy one does, and
// promptly, when the agent leaves (cleanly or not), when the server does,
// when it is revoked and when the agent breaks the protocol, and leaves
// no goroutine behind.
func TestIdleSessionEnds(t *testing.T) {
	terminate, _ := (&pgproto3.Terminate{}).Encode(nil)
	for _, mode := range idleModes {
		for _, tc := range []struct {
			name string
			end  func(s idleSession, cancel context.CancelFunc)
			want func(error) bool
		}{
			{"agent terminates", func(s idleSession, _ context.CancelFunc) { s.agent.Write(terminate) }, func(err error) bool { return err == nil }},
			{"agent closes", func(s idleSession, _ context.CancelFunc) { s.agent.Close() }, func(err error) bool { return err == nil }},
			{"server closes", func(s idleSession, _ context.CancelFunc) { s.server.Close() }, func(err error) bool { return err == nil }},
			{"revoked", func(_ idleSession, cancel context.CancelFunc) { cancel() }, func(err error) bool { return errors.Is(err, context.Canceled) }},
			{"agent breaks the protocol", func(s idleSession, _ context.CancelFunc) { s.agent.Write([]byte{'Q', 0, 0, 0, 1}) }, func(err error) bool {
				var pe *ProtocolError
				return errors.As(err, &pe)
			}},
		} {
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				s := startIdleSessions(t, ctx, 1, mode.detach)[0]
				s.roundTrip(t, "SELECT 1")
				expectGoroutines(t, 0, mode.servers, "idle session")
				tc.end(s, cancel)
				select {
				case err := <-s.done:
					if !tc.want(err) {
						t.Fatalf("relay ended with %v", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the idle session did not end")
				}
				expectGoroutines(t, 0, 0, "after the session")
			})
		}
	}
}

// leaveDetached starts a session whose relay keeps its server connection
// through keep and may detach, lets both sides go idle until it has, and
// sends the agent's Terminate; done gets the result.
func leaveDetached(t *testing.T, keep func(net.Conn)) idleSession {
	t.Helper()
	agent, agentSide := testenv.TCPPair(t)
	upSide, server := testenv.TCPPair(t)
	s := idleSession{agent: agent, server: server, done: make(chan error, 1)}
	cfg := RelayConfig{Enforcer: allowAll, IdleAfter: suspendAfter, Keep: keep,
		Detached: func(err error) { s.done <- err }}
	go func() {
		if err := Relay(context.Background(), rawsock.Wrap(agentSide), rawsock.Wrap(upSide), cfg); err != protocol.ErrDetached {
			s.done <- err
		}
	}()
	s.roundTrip(t, "SELECT 1")
	expectGoroutines(t, 0, 0, "detached session")
	terminate, _ := (&pgproto3.Terminate{}).Encode(nil)
	s.agent.Write(terminate)
	return s
}

// TestDetachedSessionParks: an agent that leaves a detached session
// cleanly leaves its server connection to Keep, open and unread, before
// Detached reports the end.
func TestDetachedSessionParks(t *testing.T) {
	kept := make(chan net.Conn, 1)
	s := leaveDetached(t, func(c net.Conn) { kept <- c })
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("relay ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the detached session did not end")
	}
	var up net.Conn
	select {
	case up = <-kept:
	default:
		t.Fatal("the server connection was not kept")
	}
	defer up.Close()
	// The kept connection still works both ways, and the server was not
	// sent the agent's Terminate.
	query, _ := (&pgproto3.Query{String: "DISCARD ALL"}).Encode(nil)
	if _, err := up.Write(query); err != nil {
		t.Fatal(err)
	}
	s.expectServer(t, query)
	s.server.Write([]byte("Z"))
	up.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(up, b); err != nil || b[0] != 'Z' {
		t.Fatalf("kept connection read %q, %v", b, err)
	}
}

// TestDetachedSessionContainsDefects: a panic where a detached session
// ends, on the goroutine its server side resumed on (here in Keep), is the
// session's result through Detached, with both connections closed.
func TestDetachedSessionContainsDefects(t *testing.T) {
	s := leaveDetached(t, func(net.Conn) { panic("keep defect") })
	select {
	case err := <-s.done:
		var ie *protocol.InternalError
		if !errors.As(err, &ie) || ie.Where != "postgres relay's end" {
			t.Fatalf("relay ended with %v, want the defect in its end", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the detached session did not end")
	}
	for _, c := range []net.Conn{s.agent, s.server} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("after the defect read %q, %v: want the connection closed", b, err)
		}
	}
}

// TestDetachedSessionEndContainsDefects: the decoder's part of a detached
// session's end (here the pipeline's park func) contains a panic too: it is
// the session's result, and both connections are closed.
func TestDetachedSessionEndContainsDefects(t *testing.T) {
	agent, agentSide := testenv.TCPPair(t)
	upSide, server := testenv.TCPPair(t)
	sv := &serving{d: &Decoder{}, s: &protocol.Session{Agent: agentSide},
		st:   started{agent: agentSide, up: &Upstream{Conn: upSide}, key: CancelKey{SecretKey: make([]byte, 4)}},
		park: func(io.Closer) bool { panic("park defect") }}
	var ie *protocol.InternalError
	if err := sv.containedEnd(nil); !errors.As(err, &ie) || ie.Where != "postgres session's end" || ie.Value != "park defect" {
		t.Fatalf("end returned %v, want the defect", err)
	}
	for _, c := range []net.Conn{agent, server} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("after the defect read %q, %v: want the connection closed", b, err)
		}
	}
}

// TestEndWithTheLastBytesEndsTheSession: a peer that sends its last bytes
// and resets the connection at once gives a waiter reading ahead one
// wake-up for both (rawsock's ReadAhead): it reads the bytes and would
// wait for ever for an end already signalled. The relay allows it only
// where its own idle wait bounds that: the session ends.
func TestEndWithTheLastBytesEndsTheSession(t *testing.T) {
	query, _ := (&pgproto3.Query{String: "SELECT 2"}).Encode(nil)
	result, _ := (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(nil)
	result, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(result)
	for _, mode := range idleModes {
		for _, tc := range []struct {
			name string
			end  func(s idleSession)
		}{
			{"agent", func(s idleSession) {
				s.agent.Write(query)
				s.agent.(*net.TCPConn).SetLinger(0)
				s.agent.Close()
				s.expectServer(t, query)
			}},
			{"server", func(s idleSession) {
				s.agent.Write(query)
				s.expectServer(t, query)
				s.server.Write(result)
				s.server.(*net.TCPConn).SetLinger(0)
				s.server.Close()
				s.expectAgent(t, result)
			}},
		} {
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				s := startIdleSessions(t, t.Context(), 1, mode.detach)[0]
				// Round trips enough for reads to go ahead on both sides.
				for range 4 {
					s.roundTrip(t, "SELECT 1")
				}
				tc.end(s)
				select {
				case <-s.done:
				case <-time.After(5 * time.Second):
					t.Fatal("the session did not end")
				}
				expectGoroutines(t, 0, 0, "after the session")
			})
		}
	}
}
