package recording

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/decoders/transcript"
)

// Replay writes the transcript of session id to w (`interlock replay ID`).
// The header says whether the recording still matches its sealed hash.
func Replay(ctx context.Context, st *store.Store, id string, w io.Writer) error {
	ss, rd, err := OpenSession(ctx, st, id)
	if err != nil {
		return err
	}
	defer rd.Close()
	seal := "open (not sealed yet)"
	if ss.RecordingSHA256 != "" {
		if err := Verify(ctx, st, id); err != nil {
			seal = "TAMPERED: " + err.Error()
		} else {
			seal = "sha256 " + ss.RecordingSHA256 + " (verified)"
		}
	}
	return Transcript(w, ss, seal, rd)
}

// Transcript writes a readable account of a recording: a header from the
// session row, then the decisions with their rule and, for each message,
// the lines its protocol's describer gives (see readBacks), each with its
// seq and its offset from the session start. seal describes the
// recording's integrity for the header.
func Transcript(w io.Writer, ss store.Session, seal string, rd *Reader) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "session %s  %s -> %s (%s) on %s\n", ss.ID, ss.Identity, ss.Target, ss.Protocol, transcript.Line(ss.Host))
	fmt.Fprintf(bw, "  process pid %d uid %d exe %s cgroup %s\n", ss.PID, ss.UID, transcript.Line(ss.Exe), transcript.Line(ss.Cgroup))
	fmt.Fprintf(bw, "  client %s  upstream %s\n", ss.ClientAddr, ss.UpstreamAddr)
	fmt.Fprintf(bw, "  started %s", ss.Started.Format(time.RFC3339Nano))
	if !ss.Ended.IsZero() {
		fmt.Fprintf(bw, "  ended %s (%s)  outcome %s  %d messages  in %d B  out %d B",
			ss.Ended.Format(time.RFC3339Nano), ss.Ended.Sub(ss.Started).Round(time.Microsecond), ss.Outcome,
			ss.Messages, ss.BytesIn, ss.BytesOut)
	}
	fmt.Fprintf(bw, "\n  recording %s\n\n", seal)

	rn := describer(ss.Protocol, rd.Header().Protocol)
	start := ss.Started
	if start.IsZero() {
		start = time.Unix(0, rd.Header().Started)
	}
	for {
		fr, err := rd.Next()
		if err == io.EOF {
			break
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			fmt.Fprintf(bw, "(recording ends inside a frame: the session was cut short)\n")
			break
		}
		if err != nil {
			bw.Flush()
			return err
		}
		prefix := fmt.Sprintf("#%-4d +%10.6fs ", fr.Seq, fr.Time.Sub(start).Seconds())
		if fr.IsVerdict {
			v := fr.Verdict
			act := v.Action
			if !v.Enforced {
				act = "would " + act + " (audit mode)"
			}
			fmt.Fprintf(bw, "%s   decision: %s", strings.Repeat(" ", len(prefix)), act)
			if v.Rule != "" {
				fmt.Fprintf(bw, " by rule %s", v.Rule)
			}
			if v.Reason != "" {
				fmt.Fprintf(bw, ": %s", transcript.Line(v.Reason))
			}
			if v.ApprovalID != "" {
				fmt.Fprintf(bw, " [approval %s]", v.ApprovalID)
			}
			fmt.Fprintf(bw, " (request #%d)\n", fr.Seq)
			continue
		}
		dir := "<-"
		if fr.FromClient {
			dir = "->"
		}
		for _, line := range rn.Describe(fr.FromClient, fr.Type, fr.Body) {
			fmt.Fprintf(bw, "%s%s %s\n", prefix, dir, transcript.Line(line))
			prefix = strings.Repeat(" ", len(prefix))
		}
	}
	for _, line := range rn.Finish() {
		fmt.Fprintf(bw, "%s\n", transcript.Line(line))
	}
	return bw.Flush()
}

// describer returns a fresh describer for the first protocol, of the
// session row's and the recording header's, whose decoder has one.
func describer(protocols ...string) transcript.Describer {
	for _, p := range protocols {
		if rb, ok := readBacks[p]; ok {
			return rb.describer()
		}
	}
	return transcript.Generic{}
}
