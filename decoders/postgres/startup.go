package postgres

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// Request codes of the untyped packets a client may open a connection with.
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
)

// tlsHandshakeRecord is the first byte of a TLS ClientHello; a startup
// packet's length word never starts with it (at most maxStartupPacket).
const tlsHandshakeRecord = 0x16

// alpnProtocol is PostgreSQL's ALPN protocol name.
const alpnProtocol = "postgresql"

// maxStartupPacket bounds the untyped packets of the connection start, as
// PostgreSQL does (MAX_STARTUP_PACKET_LENGTH).
const maxStartupPacket = 10000

// Startup is what an agent asked for in its StartupMessage.
type Startup struct {
	// ProtocolVersion is the version the agent requested (major<<16 | minor).
	ProtocolVersion uint32
	// User and Database are the agent's "user" and "database" parameters;
	// Database defaults to User as in PostgreSQL.
	User, Database string
	// Parameters holds every startup parameter, including user and database.
	Parameters map[string]string
}

// CancelKey identifies a backend for a CancelRequest.
type CancelKey struct {
	ProcessID uint32
	SecretKey []byte
}

// Hello is the outcome of AcceptClient: either a startup or a cancel request.
type Hello struct {
	// Conn is the connection to relay from now on: the original one, or the
	// TLS connection wrapping it when the agent negotiated TLS.
	Conn net.Conn
	// TLS reports whether the agent's connection is now TLS.
	TLS bool
	// Startup is set when the agent sent a StartupMessage.
	Startup *Startup
	// Cancel is set when the connection carried a CancelRequest: the key is
	// the one the proxy gave the agent; the caller maps it to the upstream
	// key and calls SendCancel. The connection carries nothing else.
	Cancel *CancelKey
}

// ClientConfig configures AcceptClient.
type ClientConfig struct {
	// TLS, when set, answers an SSLRequest with 'S' and terminates TLS with
	// the configuration it returns, and accepts direct TLS (PostgreSQL 17's
	// sslnegotiation=direct); ALPN is set to "postgresql" here. It is
	// called only when the agent asks for TLS: a configuration costs key
	// derivations a plain-text session need not pay. When nil the answer
	// is 'N' and the agent goes on in plain text (or gives up if it
	// requires TLS).
	TLS func() *tls.Config
}

// AcceptClient reads the opening packets of an agent's connection: it
// answers SSLRequest and GSSENCRequest (always 'N'), terminates TLS when
// asked, and returns at the StartupMessage or CancelRequest. It does not
// authenticate the agent (identity comes from the kernel); the caller
// answers with GreetClient or WriteError. The deadline of ctx bounds the
// exchange. It reads exactly the bytes of the packets, so the connection can
// be relayed afterwards without loss.
func AcceptClient(ctx context.Context, conn net.Conn, cfg ClientConfig) (*Hello, error) {
	stop := watchContext(ctx, conn)
	defer stop()
	h := &Hello{Conn: conn}
	negotiated := false
	// Each kind of encryption request is answered once, as a server does:
	// an agent repeating them cannot keep the handshake (and a core) busy.
	asked := map[uint32]bool{}
	for {
		hdr, err := readHeader(h.Conn)
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		if hdr[0] == tlsHandshakeRecord && !negotiated {
			// PostgreSQL 17's direct negotiation (sslnegotiation=direct):
			// the ClientHello comes first, with no SSLRequest.
			if err := h.startTLS(ctx, &protocol.ReplayConn{Conn: h.Conn, R: io.MultiReader(bytes.NewReader(hdr[:]), h.Conn)}, cfg, true); err != nil {
				return nil, err
			}
			negotiated = true
			continue
		}
		body, err := readBody(h.Conn, hdr)
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		code := binary.BigEndian.Uint32(body)
		switch code {
		case sslRequestCode, gssEncRequestCode:
			if negotiated || asked[code] || len(body) != 4 {
				return nil, &ProtocolError{Msg: "unexpected encryption request"}
			}
			asked[code] = true
			// GSSAPI encryption is always refused: the client falls back
			// to TLS or plain text, which interlockd can read.
			answer := byte('N')
			if code == sslRequestCode && cfg.TLS != nil {
				answer = 'S'
			}
			if _, err := h.Conn.Write([]byte{answer}); err != nil {
				return nil, ctxErr(ctx, fmt.Errorf("answer encryption request: %w", err))
			}
			if answer == 'S' {
				if err := h.startTLS(ctx, h.Conn, cfg, false); err != nil {
					return nil, err
				}
			}
			negotiated = answer == 'S'
		case cancelRequestCode:
			var m pgproto3.CancelRequest
			if err := m.Decode(body); err != nil {
				return nil, &ProtocolError{Msg: "malformed cancel request: " + err.Error()}
			}
			h.Cancel = &CancelKey{ProcessID: m.ProcessID, SecretKey: m.SecretKey}
			return h, nil
		default:
			if code>>16 != 3 {
				return nil, &ProtocolError{Msg: fmt.Sprintf("unsupported frontend protocol %d.%d", code>>16, code&0xffff)}
			}
			st, err := decodeStartup(body)
			if err != nil {
				return nil, err
			}
			h.Startup = st
			return h, nil
		}
	}
}

// decodeStartup parses a StartupMessage body. pgproto3 only accepts the
// versions it knows, while a server must accept any 3.x and negotiate down,
// so the parameters are parsed here.
func decodeStartup(body []byte) (*Startup, error) {
	st := &Startup{ProtocolVersion: binary.BigEndian.Uint32(body), Parameters: map[string]string{}}
	rest := body[4:]
	for {
		k, r, ok := cstring(rest)
		if !ok {
			return nil, &ProtocolError{Msg: "malformed startup message"}
		}
		if k == "" {
			if len(r) != 0 {
				return nil, &ProtocolError{Msg: "malformed startup message: trailing bytes"}
			}
			break
		}
		v, r2, ok := cstring(r)
		if !ok {
			return nil, &ProtocolError{Msg: "malformed startup message"}
		}
		st.Parameters[k] = v
		rest = r2
	}
	st.User = st.Parameters["user"]
	if st.User == "" {
		return nil, &ProtocolError{Code: "28000", Msg: "no PostgreSQL user name specified in startup packet"}
	}
	st.Database = st.Parameters["database"]
	if st.Database == "" {
		st.Database = st.User
	}
	return st, nil
}

// cstring splits a NUL-terminated string off b.
func cstring(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return "", nil, false
}

// startTLS terminates the agent's TLS on conn. A direct negotiation must
// name PostgreSQL in ALPN, as PostgreSQL 17 requires: without it the bytes
// could be another protocol's, relayed here by an attacker.
func (h *Hello) startTLS(ctx context.Context, conn net.Conn, cfg ClientConfig, direct bool) error {
	if cfg.TLS == nil {
		// Only a direct negotiation gets here without a configuration.
		return &ProtocolError{Msg: "direct TLS negotiation is not accepted here"}
	}
	tcfg := cfg.TLS().Clone()
	tcfg.NextProtos = []string{alpnProtocol}
	tc := tls.Server(conn, tcfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls handshake with agent: %w", err)
	}
	if direct && tc.ConnectionState().NegotiatedProtocol != alpnProtocol {
		return &ProtocolError{Msg: "direct TLS negotiation without ALPN " + alpnProtocol}
	}
	h.Conn, h.TLS = tc, true
	return nil
}

// readHeader reads the length word of an untyped packet, which the caller
// inspects before reading the body: a TLS record instead means direct TLS.
func readHeader(r io.Reader) ([4]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return hdr, fmt.Errorf("read startup packet: %w", err)
	}
	return hdr, nil
}

// readBody reads the body of the untyped packet whose length word is hdr.
func readBody(r io.Reader, hdr [4]byte) ([]byte, error) {
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 8 || n > maxStartupPacket {
		return nil, &ProtocolError{Msg: fmt.Sprintf("invalid startup packet length %d", n)}
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read startup packet: %w", err)
	}
	return body, nil
}

// GreetClient completes the agent's startup after the upstream session is
// established: AuthenticationOk, the upstream's ParameterStatus values,
// BackendKeyData with key, and ReadyForQuery. The key is the caller's: the
// server's process ID, so that pg_backend_pid() and pg_stat_activity agree
// with it, and a secret of the proxy's own, so a cancel comes to the proxy
// and never straight to the server. When the agent asked for
// a newer protocol minor version or for protocol options, it first sends
// NegotiateProtocolVersion for 3.0, as a PostgreSQL 15 server does.
func GreetClient(w io.Writer, st *Startup, up *Upstream, key CancelKey) error {
	// Sized once for the whole greeting: each message's type and length,
	// each parameter's two strings and their terminators, the fixed
	// messages, room for a negotiation.
	size := 64
	for _, p := range up.Parameters {
		size += 7 + len(p.Name()) + len(p.Value())
	}
	buf := make([]byte, 0, size)
	var err error
	if st != nil {
		var unknown []string
		for k := range st.Parameters {
			if len(k) > 4 && k[:4] == "_pq_" {
				unknown = append(unknown, k)
			}
		}
		if st.ProtocolVersion&0xffff != 0 || len(unknown) > 0 {
			buf, err = (&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknown}).Encode(buf)
			if err != nil {
				return fmt.Errorf("encode protocol negotiation: %w", err)
			}
		}
	}
	buf, _ = (&pgproto3.AuthenticationOk{}).Encode(buf)
	for _, p := range up.Parameters {
		if buf, err = (&pgproto3.ParameterStatus{Name: p.Name(), Value: p.Value()}).Encode(buf); err != nil {
			return fmt.Errorf("encode parameter status: %w", err)
		}
	}
	if buf, err = (&pgproto3.BackendKeyData{ProcessID: key.ProcessID, SecretKey: key.SecretKey}).Encode(buf); err != nil {
		return fmt.Errorf("encode backend key: %w", err)
	}
	buf, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(buf)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("greet agent: %w", err)
	}
	return nil
}

// WriteError sends an ErrorResponse to the agent, e.g. the upstream's
// authentication failure (a *ServerError's Response) or a refusal by policy.
// Severity defaults to FATAL, since it is meant for ending a connection.
func WriteError(w io.Writer, e *pgproto3.ErrorResponse) error {
	if e.Severity == "" {
		c := *e
		c.Severity, c.SeverityUnlocalized = "FATAL", "FATAL"
		e = &c
	}
	buf, err := e.Encode(nil)
	if err != nil {
		return fmt.Errorf("encode error response: %w", err)
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write error response: %w", err)
	}
	return nil
}

// ProtocolError reports input that breaks the protocol; Code is the SQLSTATE
// to report it with (08P01, protocol_violation, when empty).
type ProtocolError struct {
	Code string
	Msg  string
}

func (e *ProtocolError) Error() string { return "postgres protocol: " + e.Msg }

// Response returns the ErrorResponse that tells the agent about e.
func (e *ProtocolError) Response() *pgproto3.ErrorResponse {
	code := e.Code
	if code == "" {
		code = "08P01"
	}
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: e.Msg}
}

// watchContext makes blocking I/O on conn give up when ctx ends and applies
// ctx's deadline; the returned func restores the connection for further use.
func watchContext(ctx context.Context, conn net.Conn) func() {
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		conn.SetDeadline(time.Time{})
	}
}

// ctxErr prefers the context's error over the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return err
}
