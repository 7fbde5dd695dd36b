package recording

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/interlock-dev/interlock/agent/store"
)

// MaxSegment is the largest TCP payload ExportPcap puts in one packet: what
// fits an IPv4 packet's 16-bit total length after 40 bytes of IP and TCP
// headers. Larger runs of bytes are split over several segments with
// consecutive sequence numbers, and dissectors reassemble them.
const MaxSegment = 65535 - 40

// ExportPcap writes session id's recording as a pcapng file (`interlock export
// ID --pcap FILE`).
func ExportPcap(ctx context.Context, st *store.Store, id string, w io.Writer) error {
	ss, err := st.Session(ctx, id)
	if err != nil {
		return err
	}
	rd, err := Open(ctx, st, ss)
	if err != nil {
		return err
	}
	defer rd.Close()
	return WritePcap(w, ss, rd)
}

// WritePcap writes the messages of a recording as an Ethernet/IP/TCP packet
// capture in pcapng (gopacket's pcapgo): a SYN, SYN-ACK, ACK handshake
// between the session's real client and upstream addresses, each
// direction's messages re-framed as on the wire (PostgreSQL: type, length,
// body; HTTP: HTTP/1.1 messages, see decoders/http.Wire) in segments of at most MaxSegment bytes with correct sequence and
// acknowledgement numbers, and a FIN exchange at the end. Wireshark and
// tshark decode it as the real protocol with no option: a PostgreSQL
// session's server port is written as 5432 and an HTTP session's as 80,
// whatever the upstream's was,
// and the file's comment (pcapng section comment, shown by capinfos and
// Wireshark's capture file properties) names the session and its real
// upstream address.
func WritePcap(w io.Writer, ss store.Session, rd *Reader) error {
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
	pw, err := pcapgo.NewNgWriterInterface(w, pcapgo.NgInterface{
		Name: "interlock", LinkType: layers.LinkTypeEthernet, SnapLength: 262144, TimestampResolution: 9,
	}, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "interlock", Comment: comment}})
	if err != nil {
		return fmt.Errorf("write pcapng header: %w", err)
	}
	var framer wire = generic{}
	if known {
		framer = rb.wire()
	}
	if err := writeConversation(pw, ss, rd, framer, client, server); err != nil {
		return err
	}
	if err := pw.Flush(); err != nil {
		return fmt.Errorf("write pcapng: %w", err)
	}
	return nil
}

// writeConversation writes the recording's messages as one TCP connection,
// as w re-frames them.
func writeConversation(pw *pcapgo.NgWriter, ss store.Session, rd *Reader, w wire, client, server netip.AddrPort) error {
	h := rd.Header()
	start := ss.Started
	if start.IsZero() {
		start = time.Unix(0, h.Started)
	}
	c := &tcpConv{pw: pw, client: client, server: server, cseq: 0x10000000, sseq: 0x50000000}
	if err := c.handshake(start); err != nil {
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
		err := c.data(fromCl, pending, firstTime)
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
	return c.close(end)
}

type tcpConv struct {
	pw           *pcapgo.NgWriter
	client       netip.AddrPort
	server       netip.AddrPort
	cseq, sseq   uint32 // next sequence number of each side
	buf          gopacket.SerializeBuffer
	lastPacketAt time.Time
}

var (
	clientMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	serverMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
)

func (c *tcpConv) handshake(t time.Time) error {
	if err := c.packet(true, t, layers.TCP{SYN: true}, nil); err != nil {
		return err
	}
	c.cseq++
	if err := c.packet(false, t.Add(time.Microsecond), layers.TCP{SYN: true, ACK: true}, nil); err != nil {
		return err
	}
	c.sseq++
	return c.packet(true, t.Add(2*time.Microsecond), layers.TCP{ACK: true}, nil)
}

func (c *tcpConv) data(fromClient bool, b []byte, t time.Time) error {
	for len(b) > 0 {
		n := min(len(b), MaxSegment)
		if err := c.packet(fromClient, t, layers.TCP{ACK: true, PSH: n == len(b)}, b[:n]); err != nil {
			return err
		}
		if fromClient {
			c.cseq += uint32(n)
		} else {
			c.sseq += uint32(n)
		}
		b = b[n:]
	}
	return nil
}

func (c *tcpConv) close(t time.Time) error {
	if err := c.packet(true, t, layers.TCP{FIN: true, ACK: true}, nil); err != nil {
		return err
	}
	c.cseq++
	if err := c.packet(false, t.Add(time.Microsecond), layers.TCP{FIN: true, ACK: true}, nil); err != nil {
		return err
	}
	c.sseq++
	return c.packet(true, t.Add(2*time.Microsecond), layers.TCP{ACK: true}, nil)
}

// packet writes one segment; tcp carries only the flags, the rest is filled
// in from the conversation state.
func (c *tcpConv) packet(fromClient bool, t time.Time, tcp layers.TCP, payload []byte) error {
	src, dst := c.client, c.server
	smac, dmac := clientMAC, serverMAC
	tcp.Seq, tcp.Ack = c.cseq, c.sseq
	if !fromClient {
		src, dst = dst, src
		smac, dmac = dmac, smac
		tcp.Seq, tcp.Ack = c.sseq, c.cseq
	}
	if !tcp.ACK {
		tcp.Ack = 0
	}
	tcp.SrcPort, tcp.DstPort = layers.TCPPort(src.Port()), layers.TCPPort(dst.Port())
	tcp.Window = 65535
	// Timestamps never go backwards, even if the recording's do.
	if t.Before(c.lastPacketAt) {
		t = c.lastPacketAt
	}
	c.lastPacketAt = t

	eth := layers.Ethernet{SrcMAC: smac, DstMAC: dmac}
	var ip gopacket.NetworkLayer
	var ipLayer gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		v4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		ip, ipLayer = v4, v4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		v6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		ip, ipLayer = v6, v6
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		return fmt.Errorf("build tcp segment: %w", err)
	}
	if c.buf == nil {
		c.buf = gopacket.NewSerializeBuffer()
	}
	if err := gopacket.SerializeLayers(c.buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&eth, ipLayer, &tcp, gopacket.Payload(payload)); err != nil {
		return fmt.Errorf("serialize packet: %w", err)
	}
	data := c.buf.Bytes()
	ci := gopacket.CaptureInfo{Timestamp: t, CaptureLength: len(data), Length: len(data)}
	if err := c.pw.WritePacket(ci, data); err != nil {
		return fmt.Errorf("write pcap packet: %w", err)
	}
	return nil
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
