// Package capture reads pcap and pcapng files and reassembles the TCP
// connections in them, both directions interleaved in the order they were
// captured, so a protocol decoder can replay a conversation offline.
//
// It is pure Go (gopacket's pcapgo and reassembly, no libpcap), bounds the
// memory it keeps per connection and in total, and reports garbage as errors
// rather than panicking.
package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/google/gopacket/reassembly"
)

// Segment is a run of bytes one side sent, as reassembled.
type Segment struct {
	// FromClient is true for bytes the client (the side that opened the
	// connection) sent.
	FromClient bool
	Data       []byte
	// Time is the capture time of the segment's first packet.
	Time time.Time
}

// Stream is one TCP connection.
type Stream struct {
	Client, Server netip.AddrPort
	// Segments are both directions in capture order.
	Segments []Segment
	// Handshake is true when the connection's SYN was captured, so Client is
	// known for sure; otherwise the side with the higher port is taken for
	// the client.
	Handshake bool
	// Gaps is true when bytes are missing (packets not captured).
	Gaps bool
	// Truncated is true when the stream hit Options.MaxStreamBytes or the
	// total cap and later bytes were dropped.
	Truncated bool
}

// ClientBytes returns everything the client sent, concatenated.
func (s *Stream) ClientBytes() []byte { return s.side(true) }

// ServerBytes returns everything the server sent, concatenated.
func (s *Stream) ServerBytes() []byte { return s.side(false) }

func (s *Stream) side(client bool) []byte {
	var b bytes.Buffer
	for _, seg := range s.Segments {
		if seg.FromClient == client {
			b.Write(seg.Data)
		}
	}
	return b.Bytes()
}

// Options bound what Read keeps.
type Options struct {
	// MaxStreamBytes caps the bytes kept per connection (both directions);
	// default 64 MiB.
	MaxStreamBytes int
	// MaxTotalBytes caps the bytes kept for all connections; default 1 GiB.
	MaxTotalBytes int
	// MaxStreams caps the number of connections; default 100000.
	MaxStreams int
}

func (o *Options) defaults() {
	if o.MaxStreamBytes <= 0 {
		o.MaxStreamBytes = 64 << 20
	}
	if o.MaxTotalBytes <= 0 {
		o.MaxTotalBytes = 1 << 30
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = 100000
	}
}

// ReadFile reads a pcap or pcapng file; see Read.
func ReadFile(path string, opts Options) ([]*Stream, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open capture: %w", err)
	}
	defer f.Close()
	return Read(f, opts)
}

// packetSource is what pcapgo's two readers have in common.
type packetSource interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	LinkType() layers.LinkType
}

// Read reads a pcap or pcapng capture (detected from its magic number) and
// returns its TCP connections in the order their first packet appears. A
// capture cut short at the end keeps what was read before; a file that is
// not a capture, or a link type it cannot decode, is an error.
func Read(r io.Reader, opts Options) (streams []*Stream, err error) {
	opts.defaults()
	// gopacket's reassembly is not written for hostile input; a panic in
	// it is reported as an error about this capture.
	defer func() {
		if p := recover(); p != nil {
			streams, err = nil, fmt.Errorf("reassemble capture: internal error: %v", p)
		}
	}()
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return nil, fmt.Errorf("read capture header: %w", err)
	}
	var src packetSource
	mixed := false
	if magic == [4]byte{0x0a, 0x0d, 0x0d, 0x0a} {
		r = io.MultiReader(bytes.NewReader(magic[:]), r)
		// Interfaces of one pcapng may differ in link type (dumpcap -i lo
		// -i any); each packet is decoded by its own interface's.
		ngOpts := pcapgo.DefaultNgReaderOptions
		ngOpts.WantMixedLinkType = true
		mixed = true
		ng, err := pcapgo.NewNgReader(&ngGuard{r: r}, ngOpts)
		if err != nil {
			return nil, fmt.Errorf("read pcapng: %w", err)
		}
		src = ng
	} else {
		var hdr [24]byte
		copy(hdr[:], magic[:])
		n, _ := io.ReadFull(r, hdr[4:])
		r = io.MultiReader(bytes.NewReader(hdr[:4+n]), r)
		pr, err := pcapgo.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("read pcap: %w", err)
		}
		if lt := pcapLinkType(hdr); lt > 0xff && lt != 276 {
			return nil, fmt.Errorf("read capture: link type %d is not supported", lt)
		}
		// pcapgo allocates up to the snap length the file claims; a larger
		// packet ends the capture as damaged.
		if pr.Snaplen() > maxSnaplen {
			pr.SetSnaplen(maxSnaplen)
		}
		src = pr
	}
	lt := src.LinkType()
	if !mixed {
		var ok bool
		if lt, ok = linkType(lt); !ok {
			return nil, fmt.Errorf("read capture: link type %v is not supported", src.LinkType())
		}
	}
	// A pcapng whose every packet comes from unsupported interfaces is as
	// unreadable as a pcap of an unsupported link type.
	decodable, someUnsupported, unsupported := false, false, layers.LinkType(0)
	f := &factory{opts: opts}
	pool := reassembly.NewStreamPool(f)
	asm := reassembly.NewAssembler(pool)
	asm.MaxBufferedPagesPerConnection = 4096
	asm.MaxBufferedPagesTotal = 65536
	for {
		data, ci, err := src.ReadPacketData()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			if len(f.streams) == 0 {
				return nil, fmt.Errorf("read packet: %w", err)
			}
			break // a damaged tail: keep what came before
		}
		plt := lt
		if mixed {
			if len(ci.AncillaryData) > 0 {
				plt, _ = ci.AncillaryData[0].(layers.LinkType)
			}
			var ok bool
			if plt, ok = linkType(plt); !ok {
				// An interface of a kind that carries no IP.
				unsupported, someUnsupported = plt, true
				continue
			}
		}
		decodable = true
		pkt := decodePacket(data, plt)
		if pkt == nil {
			continue
		}
		tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		nl := pkt.NetworkLayer()
		if tcp == nil || nl == nil {
			continue
		}
		asm.AssembleWithContext(nl.NetworkFlow(), tcp, &captureContext{ci})
	}
	asm.FlushAll()
	if !decodable && someUnsupported {
		return nil, fmt.Errorf("read capture: link type %v is not supported", unsupported)
	}
	out := make([]*Stream, 0, len(f.streams))
	for _, s := range f.streams {
		s.finish()
		out = append(out, &s.Stream)
	}
	return out, nil
}

// linkTypeLinuxSLL2 is tcpdump's "-i any" header since libpcap 1.10
// (LINKTYPE_LINUX_SLL2, 276), which this gopacket does not decode. pcapgo
// keeps link types in a byte, so it arrives as 276 & 0xff: 20, which is no
// assigned link type (a classic pcap's header is checked for the full value).
const linkTypeLinuxSLL2 layers.LinkType = 276 & 0xff

// linkType returns the link type to decode lt's packets as; false when
// packets of that type cannot carry the TCP this package reads.
func linkType(lt layers.LinkType) (layers.LinkType, bool) {
	switch lt {
	case layers.LinkTypeEthernet, layers.LinkTypeLinuxSLL, layers.LinkTypeRaw, layers.LinkTypeNull,
		layers.LinkTypeLoop, layers.LinkTypeIPv4, layers.LinkTypeIPv6, linkTypeLinuxSLL2:
		return lt, true
	case 12: // raw IP as some tools write it
		return layers.LinkTypeRaw, true
	}
	return lt, false
}

// pcapLinkType returns the link type a classic pcap header names, in the
// byte order its magic number gives (the top bits carry FCS information).
func pcapLinkType(hdr [24]byte) uint32 {
	v := binary.LittleEndian.Uint32(hdr[20:])
	if hdr[0] == 0xa1 { // big-endian magic, µs or ns
		v = binary.BigEndian.Uint32(hdr[20:])
	}
	return v & 0x0fffffff
}

// decodePacket decodes one packet lazily; nil when it carries no IP.
func decodePacket(data []byte, lt layers.LinkType) gopacket.Packet {
	opts := gopacket.DecodeOptions{Lazy: true, NoCopy: true}
	if lt != linkTypeLinuxSLL2 {
		return gopacket.NewPacket(data, lt, opts)
	}
	// SLL2: protocol (2 bytes), reserved (2), interface index (4), ARPHRD
	// type (2), packet type (1), address length (1), address (8).
	if len(data) < 20 {
		return nil
	}
	switch layers.EthernetType(binary.BigEndian.Uint16(data)) {
	case layers.EthernetTypeIPv4:
		return gopacket.NewPacket(data[20:], layers.LayerTypeIPv4, opts)
	case layers.EthernetTypeIPv6:
		return gopacket.NewPacket(data[20:], layers.LayerTypeIPv6, opts)
	}
	return nil
}

type captureContext struct{ ci gopacket.CaptureInfo }

func (c *captureContext) GetCaptureInfo() gopacket.CaptureInfo { return c.ci }

type factory struct {
	opts    Options
	streams []*tcpStream
	byKey   map[[2]netip.AddrPort]*tcpStream
	total   int
}

// New is called for each connection reassembly sees, and again for packets
// that arrive after it considered a connection closed (a last ACK after
// FIN); those join the stream they belong to unless they open a new
// connection on the same ports.
func (f *factory) New(netFlow, tcpFlow gopacket.Flow, tcp *layers.TCP, ac reassembly.AssemblerContext) reassembly.Stream {
	src, _ := netip.AddrFromSlice(netFlow.Src().Raw())
	dst, _ := netip.AddrFromSlice(netFlow.Dst().Raw())
	a := netip.AddrPortFrom(src.Unmap(), uint16(tcp.SrcPort))
	b := netip.AddrPortFrom(dst.Unmap(), uint16(tcp.DstPort))
	// reassembly calls the first packet's direction ClientToServer.
	handshake, flipped := false, false
	switch {
	case tcp.SYN && !tcp.ACK:
		handshake = true
	case tcp.SYN && tcp.ACK:
		handshake, flipped = true, true
	default:
		flipped = tcp.SrcPort < tcp.DstPort
	}
	if f.byKey == nil {
		f.byKey = map[[2]netip.AddrPort]*tcpStream{}
	}
	if s := f.byKey[[2]netip.AddrPort{a, b}]; s != nil && !handshake {
		return &half{s: s, flipped: false}
	}
	if s := f.byKey[[2]netip.AddrPort{b, a}]; s != nil && !handshake {
		return &half{s: s, flipped: true}
	}
	if flipped {
		a, b = b, a
	}
	if len(f.streams) >= f.opts.MaxStreams {
		return &half{}
	}
	s := &tcpStream{f: f, Stream: Stream{Client: a, Server: b, Handshake: handshake}}
	f.streams = append(f.streams, s)
	f.byKey[[2]netip.AddrPort{a, b}] = s
	return &half{s: s, flipped: flipped}
}

type tcpStream struct {
	Stream
	f    *factory
	size int
}

// half is one reassembly connection's view of a stream; flipped means its
// first packet came from the server.
type half struct {
	s       *tcpStream // nil: over MaxStreams, ignored
	flipped bool
}

func (h *half) Accept(tcp *layers.TCP, ci gopacket.CaptureInfo, dir reassembly.TCPFlowDirection, nextSeq reassembly.Sequence, start *bool, ac reassembly.AssemblerContext) bool {
	// Captures often begin mid-connection: take the stream from wherever
	// it starts.
	*start = true
	return h.s != nil
}

func (h *half) ReassembledSG(sg reassembly.ScatterGather, ac reassembly.AssemblerContext) {
	s := h.s
	dir, _, _, skip := sg.Info()
	if skip != 0 {
		s.Gaps = true
	}
	n, _ := sg.Lengths()
	if n == 0 {
		return
	}
	if s.size+n > s.f.opts.MaxStreamBytes || s.f.total+n > s.f.opts.MaxTotalBytes {
		s.Truncated = true
		return
	}
	data := bytes.Clone(sg.Fetch(n))
	s.size += n
	s.f.total += n
	fromClient := (dir == reassembly.TCPDirClientToServer) != h.flipped
	t := ac.GetCaptureInfo().Timestamp
	if k := len(s.Segments); k > 0 && s.Segments[k-1].FromClient == fromClient {
		s.Segments[k-1].Data = append(s.Segments[k-1].Data, data...)
		return
	}
	s.Segments = append(s.Segments, Segment{FromClient: fromClient, Data: data, Time: t})
}

func (h *half) ReassemblyComplete(ac reassembly.AssemblerContext) bool { return true }

// finish orders segments by time; reassembly flushes directions
// separately, so a direction's buffered data may come out late.
func (s *tcpStream) finish() {
	sort.SliceStable(s.Segments, func(i, j int) bool { return s.Segments[i].Time.Before(s.Segments[j].Time) })
}

// ClientTime returns when the client sent the byte at offset in
// ClientBytes (the time of the segment holding it); the zero time when
// offset is out of range.
func (s *Stream) ClientTime(offset int) time.Time {
	for _, seg := range s.Segments {
		if !seg.FromClient {
			continue
		}
		if offset < len(seg.Data) {
			return seg.Time
		}
		offset -= len(seg.Data)
	}
	return time.Time{}
}
