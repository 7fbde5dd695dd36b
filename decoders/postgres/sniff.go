package postgres

import (
	"encoding/binary"

	"github.com/jackc/pgx/v5/pgproto3"
)

// LooksLikeStartup reports whether b, the first bytes a client sent on a
// connection, opens with a PostgreSQL StartupMessage (protocol 3.x),
// SSLRequest or GSSENCRequest. Only the 8-byte header is looked at, so a
// capture cut inside the packet is still recognised.
func LooksLikeStartup(b []byte) bool {
	if len(b) < 8 {
		return false
	}
	n := binary.BigEndian.Uint32(b)
	code := binary.BigEndian.Uint32(b[4:])
	switch {
	case n == 8 && (code == sslRequestCode || code == gssEncRequestCode):
		return true
	case n >= 8 && n <= maxStartupPacket && code>>16 == 3:
		return true
	}
	return false
}

// LooksLikeQuery reports whether b opens with a complete simple Query
// message, as a capture that began in the middle of a session does.
func LooksLikeQuery(b []byte) bool {
	if len(b) < 5 || b[0] != 'Q' {
		return false
	}
	n := binary.BigEndian.Uint32(b[1:])
	if n < 5 || uint64(len(b)) < 1+uint64(n) {
		return false
	}
	var q pgproto3.Query
	return q.Decode(b[5:1+n]) == nil
}
