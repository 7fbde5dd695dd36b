package main

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/config"
)

// writes records each write(2) the log writer makes.
type writes struct {
	mu sync.Mutex
	w  []string
}

func (ws *writes) Write(p []byte) (int, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.w = append(ws.w, string(p))
	return len(p), nil
}

func (ws *writes) get() []string {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return append([]string(nil), ws.w...)
}

// TestLogLinesBatched: info lines wait for one write together, a warning
// goes out at once behind them, and Flush writes what waits.
func TestLogLinesBatched(t *testing.T) {
	var out writes
	lw := newLogWriter(&out)
	log := newLogger(config.Default(), lw)
	log.Info().Msg("opened")
	log.Info().Msg("closed")
	if got := out.get(); len(got) != 0 {
		t.Fatalf("info lines written at once: %q", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(out.get()) == 0 && time.Now().Before(deadline) {
		time.Sleep(logLinger / 2)
	}
	got := out.get()
	if len(got) != 1 || strings.Count(got[0], "\n") != 2 || !strings.Contains(got[0], "opened") || !strings.Contains(got[0], "closed") {
		t.Fatalf("two info lines written as %q, want one write of both", got)
	}

	log.Info().Msg("before")
	log.Warn().Msg("trouble")
	got = out.get()
	if len(got) != 2 || !strings.Contains(got[1], "before") || strings.Index(got[1], "before") > strings.Index(got[1], "trouble") {
		t.Fatalf("a warning after an info line written as %q, want both at once, in order", got[1:])
	}

	log.Info().Msg("last words")
	lw.Flush()
	if got = out.get(); len(got) != 3 || !strings.Contains(got[2], "last words") {
		t.Fatalf("Flush wrote %q", got[2:])
	}

	// A burst beyond the bound is written without waiting.
	long := strings.Repeat("x", logBufMax)
	log.Info().Str("long", long).Msg("burst")
	if got = out.get(); len(got) != 4 || !strings.Contains(got[3], long) {
		t.Fatalf("a line over the bound waited: %d writes", len(got))
	}
}
