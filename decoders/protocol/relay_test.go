package protocol

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/agent/testenv"
)

func TestRelayCountsAndHalfCloses(t *testing.T) {
	agent, agentSide := testenv.TCPPair(t)
	upSide, server := testenv.TCPPair(t)
	type counts struct{ sent, recv int64 }
	done := make(chan counts, 1)
	go func() {
		s, r, err := Relay(rawsock.Wrap(agentSide), rawsock.Wrap(upSide))
		if err != nil {
			t.Errorf("Relay: %v", err)
		}
		done <- counts{s, r}
	}()
	// The server answers after the agent has finished sending: only works
	// if the agent's half-close reaches it.
	go func() {
		req, _ := io.ReadAll(server)
		server.Write(append([]byte("echo:"), req...))
		server.(*net.TCPConn).CloseWrite()
	}()
	agent.Write([]byte("hello"))
	agent.(*net.TCPConn).CloseWrite()
	resp, err := io.ReadAll(agent)
	if err != nil || string(resp) != "echo:hello" {
		t.Fatalf("agent got %q, %v", resp, err)
	}
	if c := <-done; c.sent != 5 || c.recv != 10 {
		t.Fatalf("counts = %+v, want sent 5, received 10", c)
	}
	// The direction that ended second closed its destination outright
	// (its input had ended): nothing is left for the caller's close.
	if _, err := agentSide.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("agent's socket after the relay: write got %v, want it closed", err)
	}
}

func TestRelayResetClosesBoth(t *testing.T) {
	agent, agentSide := testenv.TCPPair(t)
	upSide, server := testenv.TCPPair(t)
	done := make(chan struct{})
	go func() { Relay(rawsock.Wrap(agentSide), rawsock.Wrap(upSide)); close(done) }()
	// The server resets; the agent, which never closes, must be released.
	server.(*net.TCPConn).SetLinger(0)
	server.Close()
	buf := make([]byte, 1)
	if _, err := agent.Read(buf); err == nil {
		t.Fatal("agent read succeeded after the upstream reset")
	}
	<-done
}

// TestRelayLargeBothWays: more than one buffer each way, at once, arrives
// intact (buffers go back to the pool between reads).
func TestRelayLargeBothWays(t *testing.T) {
	agent, agentSide := testenv.TCPPair(t)
	upSide, server := testenv.TCPPair(t)
	go Relay(rawsock.Wrap(agentSide), rawsock.Wrap(upSide))
	up, down := make([]byte, 1<<20), make([]byte, 3<<20+7)
	rand.Read(up)
	rand.Read(down)
	gotUp := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(server)
		gotUp <- b
	}()
	go func() {
		server.Write(down)
		server.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		agent.Write(up)
		agent.(*net.TCPConn).CloseWrite()
	}()
	gotDown, err := io.ReadAll(agent)
	if err != nil || !bytes.Equal(gotDown, down) {
		t.Fatalf("agent got %d bytes (%v), want the server's %d", len(gotDown), err, len(down))
	}
	if b := <-gotUp; !bytes.Equal(b, up) {
		t.Fatalf("server got %d bytes, want the agent's %d", len(b), len(up))
	}
}

// TestRelayContainsDefects: a panic in either copy (here a connection's
// Write, as a recording wrapper's would be) ends the relay with the defect
// and both connections closed; the process goes on.
func TestRelayContainsDefects(t *testing.T) {
	for _, tc := range []struct {
		where    string
		agentOut bool // the defect is in the write to the agent
	}{
		{"relay, agent to server", false},
		{"relay, server to agent", true},
	} {
		t.Run(tc.where, func(t *testing.T) {
			agent, agentSide := testenv.TCPPair(t)
			upSide, server := testenv.TCPPair(t)
			a, b := rawsock.Wrap(agentSide), rawsock.Wrap(upSide)
			from := agent
			if tc.agentOut {
				a, from = defectiveWriter{a}, server
			} else {
				b = defectiveWriter{b}
			}
			done := make(chan error, 1)
			go func() { _, _, err := Relay(a, b); done <- err }()
			from.Write([]byte("defect"))
			var ie *InternalError
			if err := <-done; !errors.As(err, &ie) || ie.Where != tc.where {
				t.Fatalf("Relay returned %v, want the defect in %q", err, tc.where)
			}
			for _, c := range []net.Conn{agent, server} {
				if n, err := io.ReadAll(c); err != nil && !errors.Is(err, syscall.ECONNRESET) || len(n) != 0 {
					t.Errorf("after the defect read %q, %v: want the connection closed", n, err)
				}
			}
		})
	}
}

// defectiveWriter panics when asked to write "defect".
type defectiveWriter struct{ net.Conn }

func (w defectiveWriter) Write(b []byte) (int, error) {
	if bytes.Contains(b, []byte("defect")) {
		panic("writer defect")
	}
	return w.Conn.Write(b)
}
