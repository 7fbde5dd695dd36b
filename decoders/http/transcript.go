package http

import (
	"fmt"
	"strings"

	"github.com/interlock-dev/interlock/decoders/transcript"
)

// maxTranscriptHeaders bounds the header lines a transcript shows of one
// head.
const maxTranscriptHeaders = 40

// Transcript describes a recorded HTTP session for a reader (`interlock
// replay`): each request and response head, bodies as excerpts, the
// responses interlockd gave itself, and what a passthrough connection
// relayed. It implements transcript.Describer.
type Transcript struct{}

// Describe implements transcript.Describer.
func (Transcript) Describe(_ bool, typ byte, body []byte) []string {
	switch typ {
	case MsgRequest, MsgResponse:
		return headLines("", body)
	case MsgInterlock:
		head, rest, _ := strings.Cut(string(body), "\r\n\r\n")
		lines := headLines("interlock: ", []byte(head+"\r\n"))
		if rest != "" {
			lines = append(lines, "  "+transcript.Printable([]byte(rest), 200))
		}
		return lines
	case MsgWebSocketUp, MsgWebSocketDown:
		return []string{fmt.Sprintf("websocket %d bytes: %s", len(body), transcript.Printable(body, 200))}
	case MsgRequestBody, MsgResponseBody:
		return []string{fmt.Sprintf("body (first %d bytes): %s", len(body), transcript.Printable(body, 200))}
	case MsgPassthrough, MsgPassthroughEnd:
		return []string{string(body)}
	}
	return transcript.Generic{}.Describe(false, typ, body)
}

// Finish implements transcript.Describer; Transcript keeps no state.
func (Transcript) Finish() []string { return nil }

// headLines is a recorded head's start line, then its header lines,
// indented.
func headLines(prefix string, head []byte) []string {
	lines := strings.Split(strings.TrimRight(string(head), "\r\n"), "\r\n")
	out := []string{prefix + transcript.Printable([]byte(lines[0]), 200)}
	for i, l := range lines[1:] {
		if i == maxTranscriptHeaders {
			out = append(out, fmt.Sprintf("  ... %d more header lines", len(lines)-1-i))
			break
		}
		out = append(out, "  "+transcript.Printable([]byte(l), 200))
	}
	return out
}
