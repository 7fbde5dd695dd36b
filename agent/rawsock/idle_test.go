package rawsock

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestCopyIdleHoldsNoBuffer: io.Copy from a wrapped socket waiting on a quiet socket has given its
// buffer back, so idle relays cost no buffer memory.
func TestCopyIdleHoldsNoBuffer(t *testing.T) {
	const copies = 100
	type ends struct{ src, dst, in, out net.Conn }
	var all []ends
	for i := 0; i < copies; i++ {
		src, in := tcpPair(t)
		dst, out := tcpPair(t)
		all = append(all, ends{src, dst, in, out})
	}
	before := testenv.LiveHeap()
	for _, e := range all {
		go io.Copy(e.dst, e.src)
	}
	// One message through each copy: each takes a buffer to read it, then
	// parks on a quiet socket again.
	msg := []byte("one message")
	got := make([]byte, len(msg))
	for _, e := range all {
		e.in.Write(msg)
		if _, err := io.ReadFull(e.out, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("copy delivered %q, %v", got, err)
		}
	}
	after := testenv.LiveHeap()
	if grew := after - before; grew > copies*4<<10 {
		t.Fatalf("heap grew by %d bytes for %d idle copies (%d each): they hold their buffers", grew, copies, grew/copies)
	}
}
