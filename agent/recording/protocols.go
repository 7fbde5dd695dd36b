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
	// wire makes what re-frames one session's recorded messages as they
	// crossed the wire.
	wire func() wire
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
		describer: func() transcript.Describer { return new(postgres.Transcript) },
		wire:      func() wire { return appendWire(postgres.AppendWire) },
		name:      "PostgreSQL",
		port:      postgres.DissectorPort,
	},
	"http": {
		describer: func() transcript.Describer { return http.Transcript{} },
		wire:      func() wire { return new(http.Wire) },
		name:      "HTTP",
		port:      http.DissectorPort,
	},
	"ssh": {
		describer: func() transcript.Describer { return new(ssh.Transcript) },
		wire:      func() wire { return generic{} },
	},
}

// wire re-frames the messages of one recorded session as the bytes each
// side sent (a decoder's read-back for pcap export).
type wire interface {
	// Message returns what the client and the server send once the
	// recorded message is known: a decoder that needs the next message to
	// frame one holds it back.
	Message(fromClient bool, typ byte, body []byte) (client, server []byte)
	// Finish returns what was held back at the end of the recording.
	Finish() (client, server []byte)
}

// appendWire is a wire that frames each message on its own.
type appendWire func(dst []byte, fromClient bool, typ byte, body []byte) []byte

func (f appendWire) Message(fromClient bool, typ byte, body []byte) (client, server []byte) {
	if fromClient {
		return f(nil, true, typ, body), nil
	}
	return nil, f(nil, false, typ, body)
}

func (appendWire) Finish() (client, server []byte) { return nil, nil }

// generic is the wire of a protocol with no framing of its own: each
// message's body is the bytes sent.
type generic struct{}

func (generic) Message(fromClient bool, _ byte, body []byte) (client, server []byte) {
	if fromClient {
		return body, nil
	}
	return nil, body
}

func (generic) Finish() (client, server []byte) { return nil, nil }
