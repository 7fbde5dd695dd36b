package recording

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/interlock-dev/interlock/agent/recording/conversation"
	"github.com/interlock-dev/interlock/agent/store"
)

// WriteConversation gives c session ss's recording rd as one TCP
// connection: between the session's client and upstream addresses, each
// direction's messages re-framed as on the wire by the protocol's decoder
// (PostgreSQL: type, length, body; HTTP: HTTP/1.1 messages, see
// decoders/http.Wire; others: each message's body), bytes of one side
// that follow each other within a millisecond sent together. A PostgreSQL
// session's server port is given as 5432 and an HTTP session's as 80,
// whatever the upstream's was, so that Wireshark and tshark decode it as
// the real protocol with no option; the comment says so.
func WriteConversation(ss store.Session, rd *Reader, c conversation.Conn) error {
	h := rd.Header()
	client := endpoint(firstNonEmpty(ss.ClientAddr, h.Client), netip.MustParseAddrPort("10.0.0.1:40000"))
	server := endpoint(firstNonEmpty(ss.UpstreamAddr, h.Upstream), netip.MustParseAddrPort("10.0.0.2:5432"))
	// Mixed families (a v4-mapped client, say) are written as IPv6.
	if client.Addr().Is4() != server.Addr().Is4() {
		client = netip.AddrPortFrom(netip.AddrFrom16(client.Addr().As16()), client.Port())
		server = netip.AddrPortFrom(netip.AddrFrom16(server.Addr().As16()), server.Port())
	}
	protocol := firstNonEmpty(ss.Protocol, h.Protocol)
	comment := fmt.Sprintf("interlock session %s: identity %s, target %s, %s from %s to %s",
		firstNonEmpty(ss.ID, h.Session), ss.Identity, ss.Target, protocol, client, server)
	rb, known := readBacks[protocol]
	if known && rb.port != 0 && server.Port() != rb.port {
		comment += fmt.Sprintf("; the server port %d is written as %d so that dissectors decode %s without options",
			server.Port(), rb.port, rb.name)
		server = netip.AddrPortFrom(server.Addr(), rb.port)
	}
	var w wire = generic{}
	if known {
		w = rb.wire()
	}
	start := ss.Started
	if start.IsZero() {
		start = time.Unix(0, h.Started)
	}
	if err := c.Open(conversation.Capture{Client: client, Server: server, Comment: comment, Start: start}); err != nil {
		return err
	}
	var (
		pending   []byte
		fromCl    bool
		firstTime time.Time
		last      = start
	)
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := c.Send(fromCl, pending, firstTime)
		pending = pending[:0]
		return err
	}
	// Bytes in one direction that follow each other closely share a
	// segment, as they would on the wire.
	send := func(fromClient bool, b []byte, t time.Time) error {
		if len(b) == 0 {
			return nil
		}
		if len(pending) > 0 && (fromClient != fromCl || t.Sub(firstTime) > time.Millisecond) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(pending) == 0 {
			fromCl, firstTime = fromClient, t
		}
		pending = append(pending, b...)
		return nil
	}
	for {
		fr, err := rd.Next()
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return err
		}
		if fr.IsVerdict {
			continue
		}
		cl, sv := w.Message(fr.FromClient, fr.Type, fr.Body)
		if err := send(true, cl, fr.Time); err != nil {
			return err
		}
		if err := send(false, sv, fr.Time); err != nil {
			return err
		}
		last = fr.Time
	}
	cl, sv := w.Finish()
	if err := send(true, cl, last); err != nil {
		return err
	}
	if err := send(false, sv, last); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	end := ss.Ended
	if end.Before(last) {
		end = last
	}
	return c.Close(end)
}

func endpoint(s string, fallback netip.AddrPort) netip.AddrPort {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fallback
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
