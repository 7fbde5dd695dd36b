package postgres

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"syscall"
	"time"
	"unique"

	"github.com/jackc/pgx/v5/pgproto3"
)

// UpstreamConfig configures ConnectUpstream.
type UpstreamConfig struct {
	// User and Password are the session credential. They never reach the
	// agent.
	User, Password string
	// Database to connect to.
	Database string
	// Parameters are further startup parameters (application_name,
	// client_encoding, options, ...), typically the agent's own minus user
	// and database; user and database here are ignored.
	Parameters map[string]string
	// TLS, when set, asks the server for TLS (SSLRequest) and uses this
	// configuration; set ServerName and RootCAs for verify-full. A server
	// that refuses TLS is an error. When nil the session is plain text.
	TLS *tls.Config
}

// Param is one ParameterStatus value reported by the server. Its name and
// value are interned: the sessions of a server report the same dozen or so
// (server_version, TimeZone, DateStyle...), and each session holds its
// server's while it lasts, idle or not, to greet the next session that
// takes its server connection over. Interned, they are one copy, and a
// value no session holds (a dropped role's session_authorization) goes.
type Param struct{ name, value unique.Handle[string] }

// NewParam returns the parameter name with value.
func NewParam(name, value string) Param { return Param{unique.Make(name), unique.Make(value)} }

// Name returns the parameter's name.
func (p Param) Name() string { return p.name.Value() }

// Value returns the parameter's value.
func (p Param) Value() string { return p.value.Value() }

// serverParams is the room an upstream's parameters start with: a
// PostgreSQL 15 server reports 14 at login, later ones a few more.
const serverParams = 16

// Upstream is an authenticated upstream session, ready for queries.
type Upstream struct {
	// Conn is the connection to relay: the TLS connection when TLS was
	// negotiated.
	Conn net.Conn
	// Parameters are the server's ParameterStatus values in the order sent.
	Parameters []Param
	// Key is the server's BackendKeyData: what a CancelRequest upstream
	// needs. The agent gets a key of the proxy's own instead.
	Key CancelKey
	// Notices are NoticeResponses the server sent during startup.
	Notices []*pgproto3.NoticeResponse
}

// ServerError is an ErrorResponse the server answered with, e.g. a wrong
// password (28P01). Response can be forwarded to the agent with WriteError.
type ServerError struct {
	Response *pgproto3.ErrorResponse
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("postgres server: %s: %s (SQLSTATE %s)", e.Response.Severity, e.Response.Message, e.Response.Code)
}

// ConnectUpstream opens a PostgreSQL session on conn (already dialed to the
// server): optional TLS, StartupMessage with the credential's user,
// authentication (SCRAM-SHA-256, md5 or cleartext password), then it
// collects ParameterStatus and BackendKeyData until ReadyForQuery. A server
// refusal comes back as a *ServerError. The deadline of ctx bounds the
// exchange; conn is not closed on error.
func ConnectUpstream(ctx context.Context, conn net.Conn, cfg UpstreamConfig) (*Upstream, error) {
	stop := watchContext(ctx, conn)
	defer stop()
	up := &Upstream{Conn: conn, Parameters: make([]Param, 0, serverParams)}
	if cfg.TLS != nil {
		req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		if _, err := conn.Write(req); err != nil {
			return nil, ctxErr(ctx, fmt.Errorf("send ssl request: %w", err))
		}
		var answer [1]byte
		if _, err := io.ReadFull(conn, answer[:]); err != nil {
			return nil, ctxErr(ctx, fmt.Errorf("read ssl answer: %w", err))
		}
		if answer[0] != 'S' {
			return nil, fmt.Errorf("connect upstream: server refused TLS (answered %q)", answer[0])
		}
		tc := tls.Client(conn, cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("tls handshake with server: %w", err)
		}
		up.Conn = tc
	}
	params := map[string]string{}
	for k, v := range cfg.Parameters {
		params[k] = v
	}
	params["user"], params["database"] = cfg.User, cfg.Database
	startup, err := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}).Encode(nil)
	if err != nil {
		return nil, fmt.Errorf("encode startup message: %w", err)
	}
	if _, err := up.Conn.Write(startup); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("send startup message: %w", err))
	}
	r := &handshakeReader{r: up.Conn}
	var scram *scramClient
	for {
		typ, body, err := r.next()
		if err != nil {
			return nil, ctxErr(ctx, err)
		}
		switch typ {
		case 'R':
			if len(body) < 4 {
				return nil, &ProtocolError{Msg: "short authentication request from server"}
			}
			var reply []byte
			switch code := binary.BigEndian.Uint32(body); code {
			case 0: // AuthenticationOk
			case 3: // cleartext
				reply, err = (&pgproto3.PasswordMessage{Password: cfg.Password}).Encode(nil)
			case 5: // md5
				var m pgproto3.AuthenticationMD5Password
				if err = m.Decode(body); err == nil {
					reply, err = (&pgproto3.PasswordMessage{Password: md5Password(cfg.User, cfg.Password, m.Salt)}).Encode(nil)
				}
			case 10: // SASL
				var m pgproto3.AuthenticationSASL
				if err = m.Decode(body); err != nil {
					break
				}
				if !slices.Contains(m.AuthMechanisms, "SCRAM-SHA-256") {
					return nil, fmt.Errorf("authenticate upstream: no supported SASL mechanism in %v", m.AuthMechanisms)
				}
				if scram, err = newScramClient(cfg.Password); err == nil {
					reply, err = (&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: scram.first()}).Encode(nil)
				}
			case 11: // SASLContinue
				if scram == nil {
					return nil, &ProtocolError{Msg: "SASL continue without SASL start"}
				}
				var final []byte
				if final, err = scram.final(body[4:]); err == nil {
					reply, err = (&pgproto3.SASLResponse{Data: final}).Encode(nil)
				}
			case 12: // SASLFinal
				if scram == nil {
					return nil, &ProtocolError{Msg: "SASL final without SASL start"}
				}
				err = scram.verify(body[4:])
			default:
				return nil, fmt.Errorf("authenticate upstream: unsupported authentication method %d", code)
			}
			if err != nil {
				return nil, fmt.Errorf("authenticate upstream: %w", err)
			}
			if reply != nil {
				if _, err := up.Conn.Write(reply); err != nil {
					return nil, ctxErr(ctx, fmt.Errorf("send authentication: %w", err))
				}
			}
		case 'S':
			var m pgproto3.ParameterStatus
			if err := m.Decode(body); err != nil {
				return nil, &ProtocolError{Msg: "malformed parameter status from server"}
			}
			up.Parameters = append(up.Parameters, NewParam(m.Name, m.Value))
		case 'K':
			var m pgproto3.BackendKeyData
			if err := m.Decode(body); err != nil {
				return nil, &ProtocolError{Msg: "malformed backend key data from server"}
			}
			up.Key = CancelKey{ProcessID: m.ProcessID, SecretKey: m.SecretKey}
		case 'N':
			m := &pgproto3.NoticeResponse{}
			if err := m.Decode(body); err == nil {
				up.Notices = append(up.Notices, m)
			}
		case 'E':
			m := &pgproto3.ErrorResponse{}
			if err := m.Decode(body); err != nil {
				return nil, &ProtocolError{Msg: "malformed error response from server"}
			}
			return nil, &ServerError{Response: m}
		case 'v': // NegotiateProtocolVersion: we asked for 3.0 with no options
		case 'Z':
			return up, nil
		default:
			return nil, &ProtocolError{Msg: fmt.Sprintf("unexpected message %q from server during startup", typ)}
		}
	}
}

// Close closes the connection: a parked Upstream is an io.Closer
// (protocol.Upstream.Parking).
func (u *Upstream) Close() error { return u.Conn.Close() }

// resetTimeout bounds the reset of a session its agent has left.
const resetTimeout = 5 * time.Second

// reset returns a session its agent has left to the state of a new one, so
// that another session can take it over: DISCARD ALL closes cursors and
// prepared statements, drops temporary tables, resets every setting and
// the role, releases advisory locks and stops listening, as PgBouncer's
// server_reset_query does. The ParameterStatus values the server reports
// on the way replace those of the login; the startup's notices are not
// the next session's. It fails unless the server answers with nothing but
// that, ending outside a transaction.
func (u *Upstream) reset() error {
	u.Conn.SetDeadline(time.Now().Add(resetTimeout))
	defer u.Conn.SetDeadline(time.Time{})
	q, _ := (&pgproto3.Query{String: "DISCARD ALL"}).Encode(nil)
	if _, err := u.Conn.Write(q); err != nil {
		return fmt.Errorf("reset server session: %w", err)
	}
	u.Notices = nil
	// The answer usually comes in one read: it is read into a buffer, not
	// message by message, and anything after its ReadyForQuery makes the
	// session unfit to keep, so nothing read ahead is lost.
	var buf []byte
	done := false
	for {
		for len(buf) >= 5 {
			n := binary.BigEndian.Uint32(buf[1:5])
			if n < 4 || n-4 > maxHandshakeMessage {
				return &ProtocolError{Msg: fmt.Sprintf("invalid message length %d from server", n)}
			}
			if len(buf) < 1+int(n) {
				break
			}
			typ, body := buf[0], buf[5:1+n]
			buf = buf[1+n:]
			switch typ {
			case 'C':
				done = true
			case 'N', 'A':
				// A notice or a notification that was on its way: the
				// agent it was for has gone.
			case 'S':
				var m pgproto3.ParameterStatus
				if err := m.Decode(body); err != nil {
					return &ProtocolError{Msg: "malformed parameter status from server"}
				}
				p := NewParam(m.Name, m.Value)
				if i := slices.IndexFunc(u.Parameters, func(q Param) bool { return q.name == p.name }); i >= 0 {
					u.Parameters[i] = p
				} else {
					u.Parameters = append(u.Parameters, p)
				}
			case 'Z':
				if !done || len(body) != 1 || body[0] != 'I' || len(buf) > 0 {
					return errors.New("reset server session: DISCARD ALL did not end the server's answers outside a transaction")
				}
				return nil
			default:
				// An ErrorResponse included: the session is not known to
				// be clean.
				return fmt.Errorf("reset server session: unexpected message %q", typ)
			}
		}
		// What is left is the start of a message: move it to the front,
		// with room for the rest.
		need := 5
		if len(buf) >= 5 {
			need = 1 + int(binary.BigEndian.Uint32(buf[1:5]))
		}
		if cap(buf)-len(buf) < max(need-len(buf), 64) {
			buf = append(make([]byte, 0, max(need, 256)), buf...)
		}
		n, err := u.Conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n == 0 && err != nil {
			return fmt.Errorf("reset server session: %w", err)
		}
	}
}

// quiet reports, without waiting, whether the server has sent nothing
// since the connection was parked: a server that ended the session while
// it was idle (a restart, pg_terminate_backend, idle_session_timeout) sent
// an error, or at least closed it. A connection with no socket to look at
// counts as quiet; its first statement would tell.
func (u *Upstream) quiet() bool {
	sc, ok := u.Conn.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	quiet := false
	var b [1]byte
	rc.Control(func(fd uintptr) {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		quiet = err == syscall.EAGAIN
	})
	return quiet
}

// SendCancel writes a CancelRequest for key on conn, a fresh connection to
// the server (dialed, and wrapped in TLS if the caller wants). The server
// answers nothing; it closes the connection.
func SendCancel(conn io.Writer, key CancelKey) error {
	b, err := (&pgproto3.CancelRequest{ProcessID: key.ProcessID, SecretKey: key.SecretKey}).Encode(nil)
	if err != nil {
		return fmt.Errorf("encode cancel request: %w", err)
	}
	if _, err := conn.Write(b); err != nil {
		return fmt.Errorf("send cancel request: %w", err)
	}
	return nil
}

// ForwardParameters returns the agent's startup parameters that should reach
// the server (application_name, client_encoding, options, ...): all but user,
// database, replication and protocol options (_pq_.*).
func (s *Startup) ForwardParameters() map[string]string {
	out := make(map[string]string, len(s.Parameters))
	for k, v := range s.Parameters {
		if k == "user" || k == "database" || k == "replication" || (len(k) > 4 && k[:4] == "_pq_") {
			continue
		}
		out[k] = v
	}
	return out
}

func md5Password(user, password string, salt [4]byte) string {
	h := md5.Sum([]byte(password + user))
	inner := hex.EncodeToString(h[:])
	h = md5.Sum(append([]byte(inner), salt[:]...))
	return "md5" + hex.EncodeToString(h[:])
}

// maxHandshakeMessage bounds a server message during startup.
const maxHandshakeMessage = 1 << 20

// handshakeReader reads typed messages exactly, with no read-ahead, so the
// relay can take the connection over afterwards.
type handshakeReader struct {
	r   io.Reader
	hdr [5]byte
}

func (h *handshakeReader) next() (byte, []byte, error) {
	if _, err := io.ReadFull(h.r, h.hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("read server message: %w", err)
	}
	n := binary.BigEndian.Uint32(h.hdr[1:])
	if n < 4 || n-4 > maxHandshakeMessage {
		return 0, nil, &ProtocolError{Msg: fmt.Sprintf("invalid message length %d from server", n)}
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(h.r, body); err != nil {
		return 0, nil, fmt.Errorf("read server message: %w", err)
	}
	return h.hdr[0], body, nil
}
