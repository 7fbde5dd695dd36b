package ssh

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestAsciicast(t *testing.T) {
	start := time.Unix(1700000000, 0)
	var out strings.Builder
	a := NewAsciicast(&out, start)
	for _, m := range []struct {
		fromClient bool
		typ        byte
		body       string
		after      time.Duration
	}{
		{true, MsgChannelRequest, "pty-req xterm-256color 120x40", 0},
		{true, MsgChannelRequest, "shell", 0},
		{false, MsgStdout, "$ ", 100 * time.Millisecond},
		{true, MsgStdin, "ls\r", 1500 * time.Millisecond},
		{false, MsgStderr, "ls: \xff\n", 1600 * time.Millisecond},
		{false, MsgExit, "exit-status 0", 1700 * time.Millisecond},
	} {
		if err := a.Message(m.fromClient, m.typ, []byte(m.body), start.Add(m.after)); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 events:\n%s", out.String())
	}
	var h struct{ Version, Width, Height, Timestamp int }
	if err := json.Unmarshal([]byte(lines[0]), &h); err != nil || h != (struct{ Version, Width, Height, Timestamp int }{2, 120, 40, 1700000000}) {
		t.Errorf("header %s: %+v %v", lines[0], h, err)
	}
	for i, want := range []struct {
		at         float64
		code, data string
	}{{0.1, "o", "$ "}, {1.5, "i", "ls\r"}, {1.6, "o", "ls: \ufffd\n"}} {
		var ev []any
		if err := json.Unmarshal([]byte(lines[i+1]), &ev); err != nil || len(ev) != 3 || ev[0] != want.at || ev[1] != want.code || ev[2] != want.data {
			t.Errorf("event %d: %s, want %v", i, lines[i+1], want)
		}
	}

	// No terminal asked for: 80x24.
	out.Reset()
	NewAsciicast(&out, start).Close()
	if !strings.Contains(out.String(), `"width":80`) || !strings.Contains(out.String(), `"height":24`) {
		t.Errorf("header without a pty: %s", out.String())
	}
}
