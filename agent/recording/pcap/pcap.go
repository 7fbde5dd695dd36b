// Package pcap writes recorded sessions as packet captures (`interlock
// export ID --pcap FILE`) with gopacket: the conversation interlockd
// re-frames from a recording (package conversation) as Ethernet/IP/TCP
// packets. It is the command's, never the daemon's: gopacket's layers hold
// 7 MB of lookup tables, 5 MB of them pointers the garbage collector
// scanned at every cycle, which cost interlockd 5 % of its CPU on every
// proxied statement.
package pcap

import (
	"fmt"
	"io"
	"net"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/interlock-dev/interlock/agent/recording/conversation"
)

// MaxSegment is the largest TCP payload a Writer puts in one packet: what
// fits an IPv4 packet's 16-bit total length after 40 bytes of IP and TCP
// headers. Larger runs of bytes are split over several segments with
// consecutive sequence numbers, and dissectors reassemble them.
const MaxSegment = 65535 - 40

// Writer writes a conversation as a pcapng capture (gopacket's pcapgo): a
// SYN, SYN-ACK, ACK handshake, each run of bytes in segments of at most
// MaxSegment bytes with correct sequence and acknowledgement numbers, and
// a FIN exchange at the end. The file's comment (pcapng section comment,
// shown by capinfos and Wireshark's capture file properties) is the
// capture's. It is a conversation.Conn; the capture is complete once Close
// returns.
type Writer struct {
	w            io.Writer
	pw           *pcapgo.NgWriter
	c            conversation.Capture
	cseq, sseq   uint32 // next sequence number of each side
	buf          gopacket.SerializeBuffer
	lastPacketAt time.Time
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

var (
	clientMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	serverMAC = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
)

func (c *Writer) Open(capture conversation.Capture) error {
	pw, err := pcapgo.NewNgWriterInterface(c.w, pcapgo.NgInterface{
		Name: "interlock", LinkType: layers.LinkTypeEthernet, SnapLength: 262144, TimestampResolution: 9,
	}, pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "interlock", Comment: capture.Comment}})
	if err != nil {
		return fmt.Errorf("write pcapng header: %w", err)
	}
	c.pw, c.c, c.cseq, c.sseq = pw, capture, 0x10000000, 0x50000000
	t := capture.Start
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

func (c *Writer) Send(fromClient bool, b []byte, t time.Time) error {
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

func (c *Writer) Close(t time.Time) error {
	if err := c.packet(true, t, layers.TCP{FIN: true, ACK: true}, nil); err != nil {
		return err
	}
	c.cseq++
	if err := c.packet(false, t.Add(time.Microsecond), layers.TCP{FIN: true, ACK: true}, nil); err != nil {
		return err
	}
	c.sseq++
	if err := c.packet(true, t.Add(2*time.Microsecond), layers.TCP{ACK: true}, nil); err != nil {
		return err
	}
	if err := c.pw.Flush(); err != nil {
		return fmt.Errorf("write pcapng: %w", err)
	}
	return nil
}

// packet writes one segment; tcp carries only the flags, the rest is filled
// in from the conversation state.
func (c *Writer) packet(fromClient bool, t time.Time, tcp layers.TCP, payload []byte) error {
	src, dst := c.c.Client, c.c.Server
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
