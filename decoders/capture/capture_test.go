package capture

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// pkt is one TCP packet of a synthetic conversation.
type pkt struct {
	fromClient bool
	seq        uint32
	syn, ack   bool
	fin        bool
	data       string
}

var (
	clientAP = netip.MustParseAddrPort("10.0.0.1:40000")
	serverAP = netip.MustParseAddrPort("10.0.0.2:5432")
)

func encode(t testing.TB, p pkt) []byte {
	src, dst := clientAP, serverAP
	if !p.fromClient {
		src, dst = dst, src
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: p.seq, SYN: p.syn, ACK: p.ack, FIN: p.fin, Window: 65535}
	tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(p.data)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writePcap(t testing.TB, pkts []pkt) []byte {
	var out bytes.Buffer
	w := pcapgo.NewWriter(&out)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1700000000, 0)
	for i, p := range pkts {
		data := encode(t, p)
		ci := gopacket.CaptureInfo{Timestamp: start.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(data), Length: len(data)}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	return out.Bytes()
}

func ngBytes(t testing.TB, pkts []pkt) []byte {
	var out bytes.Buffer
	w, err := pcapgo.NewNgWriter(&out, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Unix(1700000000, 0)
	for i, p := range pkts {
		data := encode(t, p)
		ci := gopacket.CaptureInfo{Timestamp: start.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(data), Length: len(data), InterfaceIndex: 0}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// conversation: handshake, a request in two out-of-order segments with a
// retransmission, a response, another request, FIN.
var conversation = []pkt{
	{fromClient: true, seq: 100, syn: true},
	{fromClient: false, seq: 500, syn: true, ack: true},
	{fromClient: true, seq: 101, ack: true},
	{fromClient: true, seq: 106, ack: true, data: "world"},
	{fromClient: true, seq: 101, ack: true, data: "hello"},
	{fromClient: true, seq: 101, ack: true, data: "hello"},
	{fromClient: false, seq: 501, ack: true, data: "answer"},
	{fromClient: true, seq: 111, ack: true, data: "again"},
	{fromClient: true, seq: 116, ack: true, fin: true},
	{fromClient: false, seq: 507, ack: true, fin: true},
	{fromClient: true, seq: 117, ack: true},
}

func TestReadReassembles(t *testing.T) {
	for name, data := range map[string][]byte{
		"pcap":   writePcap(t, conversation),
		"pcapng": ngBytes(t, conversation),
	} {
		t.Run(name, func(t *testing.T) {
			streams, err := Read(bytes.NewReader(data), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(streams) != 1 {
				t.Fatalf("want 1 stream, got %d", len(streams))
			}
			s := streams[0]
			if s.Client != clientAP || s.Server != serverAP || !s.Handshake {
				t.Fatalf("endpoints %v -> %v handshake %v", s.Client, s.Server, s.Handshake)
			}
			var parts []string
			for _, seg := range s.Segments {
				dir := "S"
				if seg.FromClient {
					dir = "C"
				}
				parts = append(parts, dir+":"+string(seg.Data))
			}
			if got := strings.Join(parts, " "); got != "C:helloworld S:answer C:again" {
				t.Fatalf("segments: %s", got)
			}
			if string(s.ClientBytes()) != "helloworldagain" || string(s.ServerBytes()) != "answer" {
				t.Fatalf("sides: %q %q", s.ClientBytes(), s.ServerBytes())
			}
			first, again := s.ClientTime(0), s.ClientTime(len("helloworld"))
			if first.IsZero() || !again.After(first) || !s.ClientTime(100).IsZero() {
				t.Fatalf("client times: %v %v %v", first, again, s.ClientTime(100))
			}
		})
	}
}

func TestReadMidStream(t *testing.T) {
	// No handshake: the side with the higher port is the client.
	data := writePcap(t, []pkt{
		{fromClient: false, seq: 900, ack: true, data: "late answer"},
		{fromClient: true, seq: 300, ack: true, data: "next request"},
	})
	streams, err := Read(bytes.NewReader(data), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(streams) != 1 || streams[0].Client != clientAP || streams[0].Handshake {
		t.Fatalf("streams: %+v", streams)
	}
	if string(streams[0].ClientBytes()) != "next request" {
		t.Fatalf("client bytes %q", streams[0].ClientBytes())
	}
}

func TestReadBounded(t *testing.T) {
	pkts := []pkt{{fromClient: true, seq: 1, syn: true}}
	seq := uint32(2)
	for range 10 {
		pkts = append(pkts, pkt{fromClient: true, seq: seq, ack: true, data: strings.Repeat("x", 1000)})
		seq += 1000
	}
	streams, err := Read(bytes.NewReader(writePcap(t, pkts)), Options{MaxStreamBytes: 4500})
	if err != nil {
		t.Fatal(err)
	}
	if len(streams) != 1 || !streams[0].Truncated || len(streams[0].ClientBytes()) > 4500 {
		t.Fatalf("cap not applied: truncated=%v len=%d", streams[0].Truncated, len(streams[0].ClientBytes()))
	}
}

// sll2 reframes an Ethernet packet of encode with the 20-byte header
// tcpdump -i any writes since libpcap 1.10.
func sll2(eth []byte) []byte {
	h := make([]byte, 20, 20+len(eth)-14)
	copy(h, eth[12:14]) // protocol: the Ethernet type
	binary.BigEndian.PutUint32(h[4:], 1)
	binary.BigEndian.PutUint16(h[8:], 1) // ARPHRD_ETHER
	h[11] = 6
	copy(h[12:], eth[6:12])
	return append(h, eth[14:]...)
}

// rawIP strips an encoded packet's Ethernet header.
func rawIP(eth []byte) []byte { return eth[14:] }

func TestReadOtherLinkTypes(t *testing.T) {
	start := time.Unix(1700000000, 0)
	ci := func(i int, data []byte) gopacket.CaptureInfo {
		return gopacket.CaptureInfo{Timestamp: start.Add(time.Duration(i) * time.Millisecond), CaptureLength: len(data), Length: len(data)}
	}
	// A classic pcap of LINKTYPE_LINUX_SLL2 (276), which pcapgo's writer
	// cannot name: its header is written by hand.
	var sllPcap bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0xa1b2c3d4)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], 276)
	sllPcap.Write(hdr)
	w := pcapgo.NewWriter(&sllPcap)
	for i, p := range conversation {
		data := sll2(encode(t, p))
		if err := w.WritePacket(ci(i, data), data); err != nil {
			t.Fatal(err)
		}
	}
	// A pcapng whose packets come from two interfaces of different link
	// types (Ethernet and raw IP), and one of an SLL2 interface.
	mixedNg := func(second layers.LinkType, frame func([]byte) []byte) []byte {
		var out bytes.Buffer
		w, err := pcapgo.NewNgWriter(&out, layers.LinkTypeEthernet)
		if err != nil {
			t.Fatal(err)
		}
		id, err := w.AddInterface(pcapgo.NgInterface{LinkType: second, SnapLength: 65535})
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range conversation {
			data, c := encode(t, p), ci(i, nil)
			if i%2 == 1 {
				data, c.InterfaceIndex = frame(data), id
			}
			c.CaptureLength, c.Length = len(data), len(data)
			if err := w.WritePacket(c, data); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()
	}
	// BSD loopback (link type 0, the Null type): a 4-byte address family.
	var nullPcap bytes.Buffer
	nw := pcapgo.NewWriter(&nullPcap)
	if err := nw.WriteFileHeader(65535, layers.LinkTypeNull); err != nil {
		t.Fatal(err)
	}
	for i, p := range conversation {
		data := append([]byte{2, 0, 0, 0}, rawIP(encode(t, p))...)
		if err := nw.WritePacket(ci(i, data), data); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range map[string][]byte{
		"pcap null":            nullPcap.Bytes(),
		"pcap sll2":            sllPcap.Bytes(),
		"pcapng ethernet+raw":  mixedNg(layers.LinkTypeRaw, rawIP),
		"pcapng ethernet+sll2": mixedNg(linkTypeLinuxSLL2, sll2),
	} {
		t.Run(name, func(t *testing.T) {
			streams, err := Read(bytes.NewReader(data), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if len(streams) != 1 {
				t.Fatalf("want 1 stream, got %d", len(streams))
			}
			s := streams[0]
			if s.Client != clientAP || s.Server != serverAP || string(s.ClientBytes()) != "helloworldagain" || string(s.ServerBytes()) != "answer" {
				t.Fatalf("stream %v -> %v: %q / %q", s.Client, s.Server, s.ClientBytes(), s.ServerBytes())
			}
		})
	}
	// A link type beyond a byte that is not SLL2 is refused, not read as
	// whatever its low byte names.
	binary.LittleEndian.PutUint32(hdr[20:], 0x100+1)
	if _, err := Read(bytes.NewReader(hdr), Options{}); err == nil || !strings.Contains(err.Error(), "link type 257") {
		t.Fatalf("link type 257: %v", err)
	}
}

func TestReadGarbage(t *testing.T) {
	for name, data := range map[string][]byte{
		"empty":      {},
		"text":       []byte("this is not a capture at all"),
		"pcap magic": {0xd4, 0xc3, 0xb2, 0xa1, 1, 2},
	} {
		if _, err := Read(bytes.NewReader(data), Options{}); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
	// A capture cut in the middle of a packet keeps what came before.
	full := writePcap(t, conversation)
	streams, err := Read(bytes.NewReader(full[:len(full)-20]), Options{})
	if err != nil || len(streams) != 1 {
		t.Fatalf("truncated capture: %v, %d streams", err, len(streams))
	}
	if _, err := ReadFile(filepath.Join(t.TempDir(), "missing.pcap"), Options{}); !os.IsNotExist(err) && err == nil {
		t.Fatal("missing file: want an error")
	}
}

func FuzzRead(f *testing.F) {
	f.Add(writePcap(f, conversation))
	f.Add(ngBytes(f, conversation))
	f.Add([]byte{0xd4, 0xc3, 0xb2, 0xa1})
	f.Fuzz(func(t *testing.T, data []byte) {
		streams, err := Read(bytes.NewReader(data), Options{MaxStreamBytes: 1 << 16, MaxTotalBytes: 1 << 20})
		if err != nil {
			return
		}
		total := 0
		for _, s := range streams {
			total += len(s.ClientBytes()) + len(s.ServerBytes())
		}
		if total > 1<<20 {
			t.Fatalf("kept %d bytes over the cap", total)
		}
	})
}
