package store

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
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

// allocated runs f and returns the bytes it allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
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
// new one once, not by doubling: the doubling of a buffer dropped at every
// flush was 8.6 % of interlockd's CPU under pgbench -S at 16 clients.
func TestBusyFlushesKeepTheirBuffer(t *testing.T) {
	drainEncodings()
	ctx := context.Background()
	var size int
	batches := busySecond("s1", 0)
	first := allocated(func() {
		_, _, e, err := decisionRows(batches)
		if err != nil {
			t.Fatal(err)
		}
		size = e.buf.Cap()
		if e.buf.Len() < 4<<20 {
			t.Fatalf("a busy second encoded into %d bytes; the test wants more than encodings used to keep", e.buf.Len())
		}
		doneWith(ctx, e)
	})
	if first > uint64(size)+1<<20 {
		t.Errorf("the first flush allocated %d bytes for a %d-byte buffer: grown more than once", first, size)
	}
	for i := range 3 {
		batches := busySecond("s1", int64(30000*(i+1)))
		next := allocated(func() {
			_, _, e, err := decisionRows(batches)
			if err != nil {
				t.Fatal(err)
			}
			doneWith(ctx, e)
		})
		// The rows are all that is new.
		if next > 1<<20 {
			t.Errorf("flush %d allocated %d bytes: the buffer was not kept", i+2, next)
		}
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
