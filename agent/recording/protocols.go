package recording

import (
	"github.com/interlock-dev/interlock/decoders/http"
	"github.com/interlock-dev/interlock/decoders/postgres"
	"github.com/interlock-dev/interlock/decoders/ssh"
	"github.com/interlock-dev/interlock/decoders/transcript"
)

// readBack is what a protocol's decoder offers for reading that protocol's
// recordings back. Only the decoder knows what a message means and how it
// was framed on the wire; the recording stores type and body.
type readBack struct {
	// describer makes the transcript describer of one session.
	describer func() transcript.Describer
	// appendWire re-frames a recorded message as it crossed the wire.
	appendWire func(dst []byte, fromClient bool, typ byte, body []byte) []byte
	// Dissectors decode the protocol (name, for the capture's comment)
	// without options only on port; 0 when the capture keeps the session's
	// own port, or when the export is not decodable as the protocol (an
	// SSH recording holds what crossed inside the encryption).
	name string
	port uint16
}

// readBacks maps a session's protocol (store.Session.Protocol) to its
// decoder's read-back support. A protocol with no entry is described by
// transcript.Generic and exported with each message's body as the bytes
// sent.
var readBacks = map[string]readBack{
	"postgresql": {
		describer:  func() transcript.Describer { return new(postgres.Transcript) },
		appendWire: postgres.AppendWire,
		name:       "PostgreSQL",
		port:       postgres.DissectorPort,
	},
	"http": {
		describer: func() transcript.Describer { return http.Transcript{} },
	},
	"ssh": {
		describer: func() transcript.Describer { return new(ssh.Transcript) },
	},
}
