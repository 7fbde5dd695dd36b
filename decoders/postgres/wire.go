package postgres

import "encoding/binary"

// DissectorPort is the port Wireshark's PostgreSQL dissector is registered
// on. It has no heuristic, so a capture on any other port is decoded as
// PostgreSQL only when the reader says so (-d tcp.port==PORT,pgsql).
const DissectorPort = 5432

// AppendWire appends a recorded message to dst as it crossed the wire:
// type byte, length and body; an untyped packet from the client (startup,
// SSLRequest, CancelRequest) without the type byte; the server's untyped
// one-byte answer to an SSLRequest or GSSENCRequest as it is.
func AppendWire(dst []byte, fromClient bool, typ byte, body []byte) []byte {
	switch {
	case typ != 0:
		dst = append(dst, typ)
	case !fromClient:
		return append(dst, body...) // raw bytes, such as the SSL answer
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)+4))
	return append(dst, body...)
}
