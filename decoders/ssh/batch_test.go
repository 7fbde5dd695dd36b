package ssh

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// slowWriter records the writes it gets; each waits for a token.
type slowWriter struct {
	mu     sync.Mutex
	writes [][]byte
	gate   chan struct{}
	err    error
}

func (w *slowWriter) Write(p []byte) (int, error) {
	<-w.gate
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, bytes.Clone(p))
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// TestBatchWriter: writes queued while one is under way go out together,
// in order, never more than max at a time queued, all of them by Close;
// a failed write fails the writes after it and Close.
func TestBatchWriter(t *testing.T) {
	w := &slowWriter{gate: make(chan struct{})}
	b := newBatchWriter(w, 64)
	var want bytes.Buffer
	b.Write([]byte("first;"))
	want.WriteString("first;")
	// The writer takes the first write and is held there; these queue.
	for i := range 5 {
		s := fmt.Sprintf("w%d;", i)
		b.Write([]byte(s))
		want.WriteString(s)
	}
	gate := w.gate
	go func() {
		for range 2 {
			gate <- struct{}{}
		}
	}()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(w.writes, nil); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("written %q, want %q", got, want.Bytes())
	}
	if len(w.writes) > 2 {
		t.Errorf("%d writes, want at most 2 (the first, then the five queued behind it)", len(w.writes))
	}

	// Bounded: a write that would pass max waits for the queue to go.
	w = &slowWriter{gate: make(chan struct{}, 100)}
	b = newBatchWriter(w, 8)
	for range 20 {
		b.Write([]byte("12345"))
		w.gate <- struct{}{}
	}
	b.Close()
	for _, p := range w.writes {
		if len(p) > 8 {
			t.Errorf("a batch of %d bytes with max 8", len(p))
		}
	}

	w = &slowWriter{gate: make(chan struct{}, 100), err: errors.New("broken pipe")}
	for range 100 {
		w.gate <- struct{}{}
	}
	b = newBatchWriter(w, 8)
	b.Write([]byte("a"))
	var err error
	for range 1000 {
		if _, err = b.Write([]byte("b")); err != nil {
			break
		}
	}
	if err == nil || err.Error() != "broken pipe" {
		t.Errorf("write after a failed one: %v", err)
	}
	if err := b.Close(); err == nil {
		t.Error("Close after a failed write: no error")
	}
}
