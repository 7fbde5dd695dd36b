package http

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int32
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// Writes made while the writer's goroutine runs on go out in one write
// once it waits, in order.
func TestBatchConnGathersWrites(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	client, server := testenv.TCPPair(t)
	inner := &countingConn{Conn: client}
	bc := &batchConn{Conn: inner}
	var want bytes.Buffer
	for i := range 10 {
		p := bytes.Repeat([]byte{byte('a' + i)}, 100+i)
		want.Write(p)
		if n, err := bc.Write(p); n != len(p) || err != nil {
			t.Fatalf("write %d: %d, %v", i, n, err)
		}
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(server, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("read %q, want %q", got, want.Bytes())
	}
	if n := inner.writes.Load(); n != 1 {
		t.Fatalf("ten writes reached the socket in %d writes, want 1", n)
	}
}

// Writes of every size, from goroutines taking turns as the HTTP/2
// server's do, arrive whole and in the order they were made, batches and
// writes over the batch's bound alike; Close writes what is left.
func TestBatchConnKeepsOrder(t *testing.T) {
	client, server := testenv.TCPPair(t)
	bc := &batchConn{Conn: client}
	var (
		turn sync.Mutex
		want bytes.Buffer
		wg   sync.WaitGroup
		seq  byte
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				turn.Lock()
				size := rand.IntN(512)
				if rand.IntN(10) == 0 {
					size = rand.IntN(3 * batchMax)
				}
				p := make([]byte, size)
				for i := range p {
					p[i] = seq
					seq++
				}
				want.Write(p)
				if _, err := bc.Write(p); err != nil {
					t.Error(err)
				}
				turn.Unlock()
				if rand.IntN(3) == 0 {
					runtime.Gosched()
				}
			}
		}()
	}
	read := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(server)
		read <- b
	}()
	wg.Wait()
	if err := bc.Close(); err != nil {
		t.Fatal(err)
	}
	if got := <-read; !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("read %d bytes, not the %d written in order", len(got), want.Len())
	}
}

// A peer that stopped reading holds Close for closeFlush at most.
func TestBatchConnCloseDoesNotWaitOnAStalledPeer(t *testing.T) {
	client, _ := testenv.TCPPair(t)
	bc := &batchConn{Conn: client}
	writing := make(chan error, 1)
	go func() {
		p := make([]byte, 1<<20)
		for {
			if _, err := bc.Write(p); err != nil {
				writing <- err
				return
			}
		}
	}()
	time.Sleep(200 * time.Millisecond) // the socket's buffers fill
	start := time.Now()
	bc.Close()
	if d := time.Since(start); d > closeFlush+2*time.Second {
		t.Fatalf("Close took %v with the peer not reading", d)
	}
	select {
	case err := <-writing:
		if err == nil {
			t.Fatal("a write to a closed connection succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write blocked on a stalled peer still waits after Close")
	}
}

// A batch whose write fails fails every later write, and closes the
// connection, so its reader ends too: the writer that batched it has gone
// on.
func TestBatchConnReportsAFailedFlush(t *testing.T) {
	client, server := testenv.TCPPair(t)
	bc := &batchConn{Conn: client}
	server.(*net.TCPConn).SetLinger(0)
	server.Close() // a reset: the next writes fail
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = bc.Write([]byte("after the peer reset"))
		time.Sleep(10 * time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
	if _, rerr := client.Read(make([]byte, 1)); !errors.Is(rerr, net.ErrClosed) {
		t.Fatalf("read after a failed flush: %v, want the connection closed", rerr)
	}
}
