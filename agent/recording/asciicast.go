package recording

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/decoders/ssh"
)

// ExportAsciicast writes the SSH session id's terminal as an asciicast v2
// file (decoders/ssh.Asciicast).
func ExportAsciicast(ctx context.Context, st *store.Store, id string, w io.Writer) error {
	ss, rd, err := OpenSession(ctx, st, id)
	if err != nil {
		return err
	}
	defer rd.Close()
	if p := firstNonEmpty(ss.Protocol, rd.Header().Protocol); p != "ssh" {
		return fmt.Errorf("session %s is %s: only SSH sessions have a terminal to export", id, p)
	}
	start := ss.Started
	if start.IsZero() {
		start = time.Unix(0, rd.Header().Started)
	}
	a := ssh.NewAsciicast(w, start)
	for {
		fr, err := rd.Next()
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			// A session cut short still plays up to where it ended.
			return a.Close()
		}
		if err != nil {
			return err
		}
		if fr.IsVerdict {
			continue
		}
		if err := a.Message(fr.FromClient, fr.Type, fr.Body, fr.Time); err != nil {
			return err
		}
	}
}
