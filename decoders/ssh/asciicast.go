package ssh

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// asciicastSize is the terminal size an asciicast says when the session
// asked for no pseudo-terminal, or for one of size 0.
const asciicastCols, asciicastRows = 80, 24

// Asciicast writes a recorded SSH session's terminal as an asciicast v2
// file (https://docs.asciinema.org/manual/asciicast/v2/), which `asciinema
// play` replays: the server's output (stdout and stderr) as "o" events and
// the agent's input as "i" events, at the times they were recorded. The
// header takes the size of the session's first pseudo-terminal request.
// Feed it the recording's messages in order; it is not safe for concurrent
// use.
type Asciicast struct {
	w       io.Writer
	start   time.Time
	cols    int
	rows    int
	started bool
}

// NewAsciicast returns an Asciicast writing to w for a session that
// started at start.
func NewAsciicast(w io.Writer, start time.Time) *Asciicast {
	return &Asciicast{w: w, start: start}
}

// Message adds one recorded message.
func (a *Asciicast) Message(fromClient bool, typ byte, body []byte, at time.Time) error {
	var code string
	switch typ {
	case MsgChannelRequest:
		if cols, rows, ok := ptySize(string(body)); ok && !a.started && a.cols == 0 {
			a.cols, a.rows = cols, rows
		}
		return nil
	case MsgStdout, MsgStderr:
		code = "o"
	case MsgStdin:
		code = "i"
	default:
		return nil
	}
	if err := a.header(); err != nil {
		return err
	}
	ev, err := json.Marshal([]any{at.Sub(a.start).Seconds(), code, string(body)})
	if err != nil {
		return err
	}
	_, err = a.w.Write(append(ev, '\n'))
	return err
}

// Close writes the header of a session that had no terminal output.
func (a *Asciicast) Close() error { return a.header() }

func (a *Asciicast) header() error {
	if a.started {
		return nil
	}
	a.started = true
	if a.cols <= 0 || a.rows <= 0 {
		a.cols, a.rows = asciicastCols, asciicastRows
	}
	h, err := json.Marshal(map[string]any{"version": 2, "width": a.cols, "height": a.rows, "timestamp": a.start.Unix()})
	if err != nil {
		return err
	}
	_, err = a.w.Write(append(h, '\n'))
	return err
}

// ptySize reads the size from a recorded "pty-req TERM COLSxROWS".
func ptySize(body string) (cols, rows int, ok bool) {
	f := strings.Fields(body)
	if len(f) != 3 || f[0] != "pty-req" {
		return 0, 0, false
	}
	if _, err := fmt.Sscanf(f[2], "%dx%d", &cols, &rows); err != nil {
		return 0, 0, false
	}
	return cols, rows, true
}
