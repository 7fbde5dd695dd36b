package main

import (
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// logLinger is how long a log line below warn level may wait to be written
// with the lines after it.
const logLinger = 10 * time.Millisecond

// logBufMax bounds what waits: a fuller buffer is written at once.
const logBufMax = 64 << 10

// logWriter writes interlockd's log lines in batches: one write(2) per
// logLinger instead of one per line. At info level every connection logs
// its opening and its close; written one by one, each line was a system
// call on the connection's path and a wake-up of whatever reads the log
// (journald), which added 70–100 µs to a plain TCP connection's connect
// until its first byte on this project's 2-core test machine. A line at
// warn level or above is written at once, after the lines before it, so
// that trouble shows as it happens; Flush writes what waits (interlockd
// calls it before it exits). A crash loses at most logLinger of lines
// below warn level, less than the audit chain's own batches (whose
// records those lines copy).
type logWriter struct {
	mu    sync.Mutex
	out   io.Writer
	buf   []byte
	armed bool // a flush is scheduled
}

func newLogWriter(out io.Writer) *logWriter { return &logWriter{out: out} }

// Write implements io.Writer (lines of no level wait as info lines do).
func (w *logWriter) Write(p []byte) (int, error) {
	return w.WriteLevel(zerolog.NoLevel, p)
}

// WriteLevel implements zerolog.LevelWriter.
func (w *logWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if level >= zerolog.WarnLevel && level != zerolog.NoLevel || len(w.buf) >= logBufMax {
		return len(p), w.flushLocked()
	}
	if !w.armed {
		w.armed = true
		time.AfterFunc(logLinger, func() { w.Flush() })
	}
	return len(p), nil
}

// Flush writes the lines that wait.
func (w *logWriter) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushLocked()
}

func (w *logWriter) flushLocked() error {
	w.armed = false
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.out.Write(w.buf)
	// The array is kept for the next lines unless a burst grew it.
	if cap(w.buf) > logBufMax*2 {
		w.buf = nil
	} else {
		w.buf = w.buf[:0]
	}
	return err
}
