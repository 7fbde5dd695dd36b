package protocol

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"

	"github.com/interlock-dev/interlock/agent/rawsock"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestRelayCountsAndHalfCloses(t *testing.T) {
	agent, agentSide := pair(t)
	upSide, server := pair(t)
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
		server.CloseWrite()
	}()
	agent.Write([]byte("hello"))
	agent.CloseWrite()
	resp, err := io.ReadAll(agent)
	if err != nil || string(resp) != "echo:hello" {
		t.Fatalf("agent got %q, %v", resp, err)
	}
	if c := <-done; c.sent != 5 || c.recv != 10 {
		t.Fatalf("counts = %+v, want sent 5, received 10", c)
	}
}

func TestRelayResetClosesBoth(t *testing.T) {
	agent, agentSide := pair(t)
	upSide, server := pair(t)
	done := make(chan struct{})
	go func() { Relay(rawsock.Wrap(agentSide), rawsock.Wrap(upSide)); close(done) }()
	// The server resets; the agent, which never closes, must be released.
	server.SetLinger(0)
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
	agent, agentSide := pair(t)
	upSide, server := pair(t)
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
		server.CloseWrite()
	}()
	go func() {
		agent.Write(up)
		agent.CloseWrite()
	}()
	gotDown, err := io.ReadAll(agent)
	if err != nil || !bytes.Equal(gotDown, down) {
		t.Fatalf("agent got %d bytes (%v), want the server's %d", len(gotDown), err, len(down))
	}
	if b := <-gotUp; !bytes.Equal(b, up) {
		t.Fatalf("server got %d bytes, want the agent's %d", len(b), len(up))
	}
}
