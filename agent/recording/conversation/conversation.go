// Package conversation is a recorded session as the one TCP connection a
// packet capture shows, and its encoding on the control API (GET
// /v1/sessions/{id}/conversation). interlockd re-frames a recording's
// messages as each side sent them (package recording knows the
// protocols); `interlock export --pcap` turns them into packets (package
// pcap). The packet library stays out of the daemon, where the garbage
// collector scanned its 5 MB of pointer tables at every cycle, and the
// store stays out of the command. Standard library only.
package conversation

import (
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"
)

// Capture is what a conversation's capture says before its bytes.
type Capture struct {
	// Client and Server are the session's client and upstream addresses,
	// of one family; the server's port may be the one dissectors decode
	// the protocol on (Comment then says so).
	Client, Server netip.AddrPort
	// Comment names the session and its real addresses.
	Comment string
	// Start is when the connection opens.
	Start time.Time
}

// Conn receives a conversation: Open, then Send for each run of bytes one
// side sent, in order, then Close.
type Conn interface {
	Open(c Capture) error
	Send(fromClient bool, b []byte, t time.Time) error
	Close(t time.Time) error
}

// record is one value of the encoded stream: the capture first, then
// bytes, then the end.
type record struct {
	Capture    *Capture
	FromClient bool
	Data       []byte
	Time       time.Time
	End        bool
}

// Encoder is a Conn that encodes the conversation to a writer.
type Encoder struct{ enc *gob.Encoder }

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{enc: gob.NewEncoder(w)} }

func (e *Encoder) Open(c Capture) error { return e.enc.Encode(record{Capture: &c}) }

func (e *Encoder) Send(fromClient bool, b []byte, t time.Time) error {
	return e.enc.Encode(record{FromClient: fromClient, Data: b, Time: t})
}

func (e *Encoder) Close(t time.Time) error { return e.enc.Encode(record{Time: t, End: true}) }

// Decode reads an encoded conversation from r and gives it to c. A stream
// that stops before its end is an error: the capture would look whole.
func Decode(r io.Reader, c Conn) error {
	dec := gob.NewDecoder(r)
	var first record
	if err := dec.Decode(&first); err != nil {
		return fmt.Errorf("read conversation: %w", err)
	}
	if first.Capture == nil {
		return errors.New("read conversation: no capture header")
	}
	if err := c.Open(*first.Capture); err != nil {
		return err
	}
	for {
		var rec record
		if err := dec.Decode(&rec); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read conversation: %w", err)
		}
		if rec.End {
			return c.Close(rec.Time)
		}
		if err := c.Send(rec.FromClient, rec.Data, rec.Time); err != nil {
			return err
		}
	}
}
