package postgres

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// untyped returns a startup-phase packet: length, then code.
func untyped(code uint32) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, 8)
	binary.BigEndian.PutUint32(b[4:], code)
	return b
}

func startupMessage(t *testing.T) []byte {
	t.Helper()
	b, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "agent", "database": "app"}}).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// accept runs AcceptClient on one end of a pipe and returns the other end
// and the outcome.
func accept(t *testing.T, cfg ClientConfig) (net.Conn, <-chan error, **Hello) {
	t.Helper()
	agent, proxy := net.Pipe()
	t.Cleanup(func() { agent.Close(); proxy.Close() })
	errc := make(chan error, 1)
	var h *Hello
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		h, err = AcceptClient(ctx, proxy, cfg)
		if err != nil {
			proxy.Close()
		}
		errc <- err
	}()
	agent.SetDeadline(time.Now().Add(5 * time.Second))
	return agent, errc, &h
}

func readAnswer(t *testing.T, c net.Conn) byte {
	t.Helper()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return b[0]
}

// TestGSSEncRefusedThenTLS is libpq's gssencmode=prefer with sslmode=require:
// GSSENCRequest gets 'N', the SSLRequest that follows gets 'S', and the
// startup arrives inside TLS.
func TestGSSEncRefusedThenTLS(t *testing.T) {
	ca := newTestCA(t)
	agent, errc, hello := accept(t, ClientConfig{TLS: func() *tls.Config { return &tls.Config{Certificates: []tls.Certificate{ca.cert}} }})
	agent.Write(untyped(gssEncRequestCode))
	if a := readAnswer(t, agent); a != 'N' {
		t.Fatalf("GSSENCRequest answered %q, want 'N'", a)
	}
	agent.Write(untyped(sslRequestCode))
	if a := readAnswer(t, agent); a != 'S' {
		t.Fatalf("SSLRequest answered %q, want 'S'", a)
	}
	tc := tls.Client(agent, &tls.Config{RootCAs: ca.pool, ServerName: "localhost"})
	if _, err := tc.Write(startupMessage(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	h := *hello
	if !h.TLS || h.Startup == nil || h.Startup.Database != "app" {
		t.Fatalf("hello %+v", h)
	}
	if _, ok := h.Conn.(*tls.Conn); !ok {
		t.Fatalf("the connection to relay is %T, not TLS", h.Conn)
	}
}

// TestGSSEncRefusedWithoutTLS: with no TLS configured both requests get 'N'
// and the agent goes on in plain text.
func TestGSSEncRefusedWithoutTLS(t *testing.T) {
	agent, errc, hello := accept(t, ClientConfig{})
	agent.Write(untyped(gssEncRequestCode))
	if a := readAnswer(t, agent); a != 'N' {
		t.Fatalf("GSSENCRequest answered %q", a)
	}
	agent.Write(untyped(sslRequestCode))
	if a := readAnswer(t, agent); a != 'N' {
		t.Fatalf("SSLRequest answered %q", a)
	}
	agent.Write(startupMessage(t))
	if err := <-errc; err != nil || (*hello).TLS || (*hello).Startup == nil {
		t.Fatalf("err %v hello %+v", err, *hello)
	}
}

// TestDirectTLSNeedsALPN: a ClientHello without SSLRequest is accepted only
// when it names PostgreSQL in ALPN, as PostgreSQL 17 requires, and never
// when no TLS is configured.
func TestDirectTLSNeedsALPN(t *testing.T) {
	ca := newTestCA(t)
	cfg := ClientConfig{TLS: func() *tls.Config { return &tls.Config{Certificates: []tls.Certificate{ca.cert}} }}
	t.Run("alpn postgresql", func(t *testing.T) {
		agent, errc, hello := accept(t, cfg)
		tc := tls.Client(agent, &tls.Config{RootCAs: ca.pool, ServerName: "localhost", NextProtos: []string{"postgresql"}})
		if _, err := tc.Write(startupMessage(t)); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil || !(*hello).TLS || (*hello).Startup == nil {
			t.Fatalf("err %v hello %+v", err, *hello)
		}
	})
	t.Run("no alpn", func(t *testing.T) {
		agent, errc, _ := accept(t, cfg)
		tc := tls.Client(agent, &tls.Config{RootCAs: ca.pool, ServerName: "localhost"})
		go tc.Handshake()
		var pe *ProtocolError
		if err := <-errc; !errors.As(err, &pe) {
			t.Fatalf("direct TLS without ALPN: want a ProtocolError, got %v", err)
		}
	})
	t.Run("other alpn", func(t *testing.T) {
		agent, errc, _ := accept(t, cfg)
		tc := tls.Client(agent, &tls.Config{RootCAs: ca.pool, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
		go tc.Handshake()
		if err := <-errc; err == nil {
			t.Fatal("direct TLS for HTTP was accepted")
		}
	})
	t.Run("tls not configured", func(t *testing.T) {
		agent, errc, _ := accept(t, ClientConfig{})
		tc := tls.Client(agent, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"postgresql"}})
		go tc.Handshake()
		var pe *ProtocolError
		if err := <-errc; !errors.As(err, &pe) {
			t.Fatalf("want a ProtocolError, got %v", err)
		}
	})
}

// TestPgxDirectTLS runs pgx with sslnegotiation=direct through the proxy to
// a real server: the session works and is TLS from the first byte.
func TestPgxDirectTLS(t *testing.T) {
	ca := newTestCA(t)
	pg := testenv.StartPostgres(t)
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll} })
	p.clientTLS.Store(&tls.Config{Certificates: []tls.Certificate{ca.cert}})
	ctx := context.Background()
	cfg, err := pgx.ParseConfig("postgres://agent@" + p.Addr() + "/postgres?sslmode=verify-full&sslnegotiation=direct")
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSConfig.RootCAs, cfg.TLSConfig.ServerName = ca.pool, "localhost"
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var one int
	if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("query over direct TLS: %v", err)
	}
	st := c.PgConn().Conn().(*tls.Conn).ConnectionState()
	if st.NegotiatedProtocol != "postgresql" {
		t.Fatalf("ALPN %q", st.NegotiatedProtocol)
	}
}

// scriptedConn is an agent that sends input and then hangs up; what the
// proxy writes is dropped.
type scriptedConn struct {
	net.Conn // nil: only the methods below are used
	in       *bytes.Reader
}

func (c *scriptedConn) Read(b []byte) (int, error)       { return c.in.Read(b) }
func (c *scriptedConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *scriptedConn) Close() error                     { return nil }
func (c *scriptedConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptedConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzAcceptClient feeds the unauthenticated start of a connection,
// encryption requests and TLS records included, to AcceptClient: it must
// end with a hello or an error, never panic.
func FuzzAcceptClient(f *testing.F) {
	ca := newTestCA(f)
	cfg := ClientConfig{TLS: func() *tls.Config { return &tls.Config{Certificates: []tls.Certificate{ca.cert}} }}
	f.Add(untyped(gssEncRequestCode))
	f.Add(append(untyped(gssEncRequestCode), untyped(sslRequestCode)...))
	f.Add(append(untyped(sslRequestCode), 0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0))
	f.Add([]byte{0x16, 3, 1, 0, 0x30, 1, 0, 0, 0x2c, 3, 3})
	f.Add(untyped(cancelRequestCode))
	f.Fuzz(func(t *testing.T, in []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		h, err := AcceptClient(ctx, &scriptedConn{in: bytes.NewReader(in)}, cfg)
		if err == nil && h.Startup == nil && h.Cancel == nil {
			t.Fatal("no error and nothing accepted")
		}
	})
}
