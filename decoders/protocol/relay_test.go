package protocol

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
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
		s, r := Relay(rawsock.Wrap(agentSide), rawsock.Wrap(upSide))
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
