package store

import (
	"context"
	"fmt"
	"testing"
	"time"
	"unsafe"
)

// busySecond is a second of pgbench -S at 16 clients through interlockd:
// about 30 000 decisions, some 6 MB of JSON.
func busySecond(session string, from int64) [][]Decision {
	ds := make([]Decision, 30000)
	for i := range ds {
		idx := from + int64(i)
		ds[i] = Decision{SessionID: session, Index: idx, Seq: 2 * idx, Time: time.Unix(0, 1764900000000000000+idx), Action: "allow",
			Rule: "pgbench-read", Enforced: true, Statement: fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d;", 100000+idx)}
	}
	return [][]Decision{ds}
}

// drainEncodings empties the kept encodings, so that a test starts from
// none.
func drainEncodings() {
	for {
		select {
		case <-encodings:
		default:
			return
		}
	}
}

// A busy proxy's flush reuses the buffer the last one grew, and grows a
// new one once, to the size encodedSize gives, not by doubling: the
// doubling of a buffer dropped at every flush was 8.6 % of interlockd's CPU
// under pgbench -S at 16 clients.
func TestBusyFlushesKeepTheirBuffer(t *testing.T) {
	drainEncodings()
	ctx := context.Background()
	var first *byte
	for i := range 4 {
		batches := busySecond("s1", int64(30000*i))
		_, _, e, err := decisionRows(batches)
		if err != nil {
			t.Fatal(err)
		}
		if e.buf.Len() < 4<<20 {
			t.Fatalf("a busy second encoded into %d bytes; the test wants more than encodings used to keep", e.buf.Len())
		}
		if want := encodedSize(batches); e.buf.Len() > want {
			t.Errorf("%d bytes encoded where %d were reserved: the buffer grew again", e.buf.Len(), want)
		}
		at := unsafe.SliceData(e.buf.Bytes())
		if i == 0 {
			first = at
		} else if at != first {
			t.Errorf("flush %d encoded into a new buffer: the last one's was not kept", i+1)
		}
		doneWith(ctx, e)
	}
}

// A buffer grown for busy seconds is let go at the first call that uses
// little of it, so a quiet daemon does not hold it.
func TestQuietFlushLetsTheBufferGo(t *testing.T) {
	drainEncodings()
	ctx := context.Background()
	_, _, e, err := decisionRows(busySecond("s1", 0))
	if err != nil {
		t.Fatal(err)
	}
	doneWith(ctx, e)
	quiet := busySecond("s2", 0)
	quiet[0] = quiet[0][:10]
	_, _, e, err = decisionRows(quiet)
	if err != nil {
		t.Fatal(err)
	}
	doneWith(ctx, e)
	for {
		select {
		case e := <-encodings:
			if e.buf.Cap() > smallEncoding {
				t.Errorf("a %d-byte buffer kept after a call that used %d bytes of it", e.buf.Cap(), e.buf.Len())
			}
			continue
		default:
		}
		break
	}
}
