package ssh

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"github.com/interlock-dev/interlock/decoders/transcript"
)

// maxLinesShown is how many lines of each command's stdout and of its
// stderr a transcript prints; the byte counts say how much there was.
const maxLinesShown = 20

// Transcript describes a recorded SSH session for a reader (`interlock
// replay`): channels and requests, each command line as a shell prompt,
// the first lines of its output, its byte counts and how it ended, sftp
// operations and what interlockd told the agent. It implements
// transcript.Describer; use one per session. It is not safe for concurrent
// use.
type Transcript struct {
	// shown counts the lines printed of the current command's stdout and
	// stderr; hidden those left out.
	shown, hidden map[byte]int
	// partial is each stream's last line so far: output arrives in chunks
	// cut anywhere.
	partial map[byte]string
}

// Describe implements transcript.Describer.
func (t *Transcript) Describe(_ bool, typ byte, body []byte) []string {
	text := string(body)
	switch typ {
	case MsgChannelOpen:
		return []string{"open channel " + text}
	case MsgChannelRequest:
		t.reset()
		if cmd, ok := strings.CutPrefix(text, "exec "); ok {
			return []string{"$ " + visible(cmd)}
		}
		return []string{"request " + visible(text)}
	case MsgGlobalRequest:
		return []string{"global request " + text}
	case MsgSFTP:
		return []string{"sftp " + visible(text)}
	case MsgInterlock:
		return []string{visible(strings.TrimRight(text, "\n"))}
	case MsgStdin:
		return []string{"stdin " + transcript.Printable(body, 80)}
	case MsgStdout, MsgStderr:
		return t.output(typ, text)
	case MsgBytes:
		return append(t.omitted(), text)
	case MsgExit:
		return []string{text}
	}
	return transcript.Generic{}.Describe(false, typ, body)
}

// output returns a chunk of a command's output as lines, "|" for stdout
// and "!" for stderr, up to maxLinesShown of each stream per command.
func (t *Transcript) output(typ byte, text string) []string {
	if t.shown == nil {
		t.reset()
	}
	mark := "| "
	if typ == MsgStderr {
		mark = "! "
	}
	var out []string
	ls := strings.Split(t.partial[typ]+text, "\n")
	t.partial[typ] = ls[len(ls)-1]
	for _, l := range ls[:len(ls)-1] {
		// A terminal's lines end in CR LF.
		out = t.line(out, typ, mark, strings.TrimSuffix(l, "\r"))
	}
	return out
}

func (t *Transcript) line(out []string, typ byte, mark, l string) []string {
	if t.shown[typ] >= maxLinesShown {
		t.hidden[typ]++
		return out
	}
	t.shown[typ]++
	return append(out, mark+visible(l))
}

// omitted ends the command's output: its unfinished last lines, and how
// many lines were not printed.
func (t *Transcript) omitted() []string {
	var out []string
	for _, s := range []struct {
		typ        byte
		name, mark string
	}{{MsgStdout, "stdout", "| "}, {MsgStderr, "stderr", "! "}} {
		if l := t.partial[s.typ]; l != "" {
			out = t.line(out, s.typ, s.mark, l)
		}
	}
	for _, s := range []struct {
		typ  byte
		name string
	}{{MsgStdout, "stdout"}, {MsgStderr, "stderr"}} {
		if n := t.hidden[s.typ]; n > 0 {
			out = append(out, fmt.Sprintf("... %d more lines of %s", n, s.name))
		}
	}
	t.reset()
	return out
}

// visible cuts s to a transcript line and escapes what a terminal would
// act on (control characters, escape sequences) rather than show; quotes
// and other printable text stay as the agent wrote them.
func visible(s string) string {
	const max = 200
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n++; n > max {
			fmt.Fprintf(&b, "... (%d bytes)", len(s))
			break
		}
		if unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

func (t *Transcript) reset() {
	t.shown, t.hidden, t.partial = map[byte]int{}, map[byte]int{}, map[byte]string{}
}

// Finish implements transcript.Describer.
func (t *Transcript) Finish() []string {
	return t.omitted()
}
