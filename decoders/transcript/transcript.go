// Package transcript is the contract between a recording and the decoders
// that can read it back: a protocol's Describer turns each recorded message
// into the lines `interlock replay` prints. The recorder knows frames,
// order and decisions; only the protocol's decoder knows what a message
// means.
//
// The package is pure: no logging, no I/O.
package transcript

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Describer turns one session's recorded messages, in order, into
// transcript lines. A Describer may keep state across messages (a result's
// columns and row count, say), so each session gets its own; it is not safe
// for concurrent use.
type Describer interface {
	// Describe returns the lines for one message: fromClient gives its
	// direction, typ its type byte (0 when the protocol's message has none)
	// and body its bytes. No lines means the message is protocol plumbing a
	// reader does not need.
	Describe(fromClient bool, typ byte, body []byte) []string
	// Finish returns lines about state the recording ends in, such as rows
	// of a result that never completed.
	Finish() []string
}

// Generic describes any protocol's messages by type and size with a
// printable excerpt; it is the describer of protocols whose decoder has
// none.
type Generic struct{}

// Describe implements [Describer].
func (Generic) Describe(_ bool, typ byte, body []byte) []string {
	t := "data"
	if typ != 0 {
		t = fmt.Sprintf("type %q", typ)
	}
	return []string{fmt.Sprintf("%s %d bytes: %s", t, len(body), Printable(body, 80))}
}

// Finish implements [Describer]; Generic keeps no state.
func (Generic) Finish() []string { return nil }

// Printable cuts b to max runes and escapes control characters, so any
// recorded bytes fit on one transcript line; a cut excerpt says how long
// the whole was.
func Printable(b []byte, max int) string {
	s := string(b)
	cut := false
	if utf8.RuneCountInString(s) > max {
		r := []rune(s)
		s, cut = string(r[:max]), true
	}
	q := fmt.Sprintf("%q", s)
	q = q[1 : len(q)-1]
	if cut {
		q += fmt.Sprintf("... (%d bytes)", len(b))
	}
	return q
}

// Line keeps s on the one terminal line it is printed on: a line break, a
// carriage return or another control character in it (an escape sequence's
// ESC among them) is shown escaped, the rest as it is. What an agent chose
// (a statement, a command, its executable's name, an SSH request's type)
// otherwise wrote lines of its own into a transcript or a listing (a
// forged "-> $ rm -rf /", a "(verified)" seal), or made a reviewer's
// terminal hide or erase part of a statement held for approval.
func Line(s string) string {
	if !strings.ContainsFunc(s, isControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// isControl is a character a terminal or a browser acts on rather than
// shows: C0 and C1 controls and DEL (a tab is shown), the Unicode line and
// paragraph separators, and the bidirectional controls, which reorder the
// text around them (a right-to-left override shows what follows it
// backwards).
func isControl(r rune) bool {
	return r < ' ' && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == '\u2028' || r == '\u2029' ||
		unicode.Is(unicode.Bidi_Control, r)
}
