package postgres

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrTLS reports a session that switched to TLS after its SSLRequest; what
// follows is encrypted and not decoded.
var ErrTLS = errors.New("switched to TLS, not decoded")

// ErrGSSEncryption reports a session that switched to GSSAPI encryption.
var ErrGSSEncryption = errors.New("switched to GSSAPI encryption, not decoded")

// maxCapturedMessage bounds a message body in a capture, as PostgreSQL does.
const maxCapturedMessage = 1<<30 - 1

// Query is one statement text found in a recorded session.
type Query struct {
	SQL string
	// Offset is where the message carrying it starts in the client's bytes,
	// to find when it was sent.
	Offset int
}

// DecodeQueries returns the SQL texts of the Query and Parse messages in a
// recorded session, in order: client holds the bytes the client sent, server
// the bytes the server sent (used only to learn how the server answered an
// SSLRequest or GSSENCRequest). A capture that begins after the startup is
// decoded from its first message. A session that switched to TLS ends with
// ErrTLS; input that is not PostgreSQL or breaks the protocol ends with a
// *ProtocolError; the queries found before an error are returned with it. A
// message cut off at the end of the capture ends the extraction quietly.
func DecodeQueries(client, server []byte) ([]Query, error) {
	var queries []Query
	if len(client) == 0 {
		return nil, nil
	}
	total := len(client)
	if !looksTyped(client) {
		var err error
		client, err = skipStartup(client, server)
		if err != nil || client == nil {
			return nil, err
		}
	}
	for len(client) >= 5 {
		offset := total - len(client)
		typ := client[0]
		n := binary.BigEndian.Uint32(client[1:])
		if n < 4 || n-4 > maxCapturedMessage {
			return queries, &ProtocolError{Msg: fmt.Sprintf("invalid message length %d for message type %q", n, typ)}
		}
		if !frontendType(typ) {
			return queries, &ProtocolError{Msg: fmt.Sprintf("invalid frontend message type %q", typ)}
		}
		if uint64(len(client)) < 1+uint64(n) {
			break
		}
		body := client[5 : 1+n]
		client = client[1+n:]
		switch typ {
		case 'Q':
			if len(body) == 0 || body[len(body)-1] != 0 {
				return queries, &ProtocolError{Msg: "malformed Query message"}
			}
			queries = append(queries, Query{string(body[:len(body)-1]), offset})
		case 'P':
			_, rest, ok := cbytes(body)
			sql, _, ok2 := cbytes(rest)
			if !ok || !ok2 {
				return queries, &ProtocolError{Msg: "malformed Parse message"}
			}
			queries = append(queries, Query{string(sql), offset})
		}
	}
	return queries, nil
}

// skipStartup consumes the untyped packets that open a session and returns
// the rest of the client's bytes; nil, nil for a cancel request.
func skipStartup(client, server []byte) ([]byte, error) {
	for {
		if len(client) < 8 {
			if len(client) == 0 {
				return nil, nil
			}
			return nil, &ProtocolError{Msg: fmt.Sprintf("not PostgreSQL: %d-byte opening packet", len(client))}
		}
		n := binary.BigEndian.Uint32(client)
		if n < 8 || n > maxStartupPacket {
			return nil, &ProtocolError{Msg: fmt.Sprintf("not PostgreSQL: invalid startup packet length %d", n)}
		}
		if uint32(len(client)) < n {
			return nil, nil // cut off by the capture
		}
		body := client[4:n]
		client = client[n:]
		switch code := binary.BigEndian.Uint32(body); code {
		case sslRequestCode, gssEncRequestCode:
			answer := byte(0)
			if len(server) > 0 {
				answer, server = server[0], server[1:]
			} else if len(client) > 0 && client[0] == 0x16 {
				answer = 'S' // a TLS handshake record follows: the server said yes
			}
			switch {
			case answer == 'S' && code == sslRequestCode:
				return nil, ErrTLS
			case answer == 'G' && code == gssEncRequestCode:
				return nil, ErrGSSEncryption
			case answer == 'E':
				return nil, nil // the server refused with an error
			}
		case cancelRequestCode:
			return nil, nil
		default:
			if code>>16 != 3 {
				return nil, &ProtocolError{Msg: fmt.Sprintf("unsupported frontend protocol %d.%d", code>>16, code&0xffff)}
			}
			if _, err := decodeStartup(body); err != nil {
				return nil, err
			}
			return client, nil
		}
	}
}

// looksTyped reports whether b starts with a typed frontend message, as a
// capture that begins mid-session does. A startup packet starts with a zero
// byte (its length is below 2^24), which no message type is.
func looksTyped(b []byte) bool {
	if len(b) < 5 || !frontendType(b[0]) {
		return false
	}
	n := binary.BigEndian.Uint32(b[1:])
	return n >= 4 && n-4 <= maxCapturedMessage
}

// frontendType reports whether t is a message type a client sends.
func frontendType(t byte) bool {
	switch t {
	case 'B', 'C', 'c', 'd', 'D', 'E', 'f', 'F', 'H', 'p', 'P', 'Q', 'S', 'X':
		return true
	}
	return false
}
