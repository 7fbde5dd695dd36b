package capture

import (
	"encoding/binary"
	"errors"
	"io"
)

// maxBlock bounds a pcapng block: a packet is at most 256 KiB (Linux's
// largest snap length) plus options.
const maxBlock = 1 << 20

// maxSnaplen bounds the pcap snap length, and so the largest packet read.
const maxSnaplen = 256 << 10

// ngGuard passes a pcapng stream through block by block and ends it at the
// first block whose lengths are impossible. gopacket's NgReader allocates
// whatever a block header claims before reading it, so a few bytes of
// garbage could otherwise ask for gigabytes.
type ngGuard struct {
	r     io.Reader
	order binary.ByteOrder
	buf   []byte
	pos   int
}

func (g *ngGuard) Read(p []byte) (int, error) {
	if g.pos == len(g.buf) {
		if err := g.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, g.buf[g.pos:])
	g.pos += n
	return n, nil
}

var errBadBlock = errors.New("pcapng: damaged block")

func (g *ngGuard) next() error {
	var hdr [12]byte
	if _, err := io.ReadFull(g.r, hdr[:8]); err != nil {
		return io.EOF
	}
	if binary.LittleEndian.Uint32(hdr[:4]) == 0x0a0d0d0a {
		// Section header: its byte-order magic follows the length.
		if _, err := io.ReadFull(g.r, hdr[8:12]); err != nil {
			return io.EOF
		}
		switch binary.LittleEndian.Uint32(hdr[8:12]) {
		case 0x1a2b3c4d:
			g.order = binary.LittleEndian
		case 0x4d3c2b1a:
			g.order = binary.BigEndian
		default:
			return errBadBlock
		}
	} else if g.order == nil {
		return errBadBlock
	}
	typ := g.order.Uint32(hdr[:4])
	n := g.order.Uint32(hdr[4:8])
	if n < 12 || n > maxBlock || n%4 != 0 {
		return errBadBlock
	}
	if cap(g.buf) < int(n) {
		g.buf = make([]byte, n)
	}
	g.buf = g.buf[:n]
	got := copy(g.buf, hdr[:])
	if typ != 0x0a0d0d0a {
		got = 8
	}
	if _, err := io.ReadFull(g.r, g.buf[got:]); err != nil {
		return io.EOF
	}
	// Enhanced (6) and obsolete (2) packet blocks: the captured length
	// must fit the block.
	if (typ == 6 || typ == 2) && (n < 32 || g.order.Uint32(g.buf[20:24]) > n-32) {
		return errBadBlock
	}
	g.pos = 0
	return nil
}
