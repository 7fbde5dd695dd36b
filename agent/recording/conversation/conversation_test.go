package conversation_test

import (
	"bytes"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/recording/conversation"
)

// log is a Conn that writes down what it was given.
type log struct{ calls []string }

func (l *log) Open(c conversation.Capture) error {
	l.calls = append(l.calls, fmt.Sprintf("open %s %s %q %d", c.Client, c.Server, c.Comment, c.Start.UnixNano()))
	return nil
}

func (l *log) Send(fromClient bool, b []byte, t time.Time) error {
	l.calls = append(l.calls, fmt.Sprintf("send %v %q %d", fromClient, b, t.UnixNano()))
	return nil
}

func (l *log) Close(t time.Time) error {
	l.calls = append(l.calls, fmt.Sprintf("close %d", t.UnixNano()))
	return nil
}

func encode(t *testing.T, want *log) []byte {
	t.Helper()
	var buf bytes.Buffer
	e := conversation.NewEncoder(&buf)
	start := time.Unix(1700000000, 5)
	for _, err := range []error{
		e.Open(conversation.Capture{Client: netip.MustParseAddrPort("[::1]:40000"), Server: netip.MustParseAddrPort("[::1]:5432"),
			Comment: "interlock session x", Start: start}),
		e.Send(true, []byte("Q\x00\x00\x00\x0dSELECT 1\x00"), start.Add(time.Millisecond)),
		e.Send(false, bytes.Repeat([]byte("D"), 70000), start.Add(2*time.Millisecond)),
		e.Send(true, nil, start.Add(3*time.Millisecond)),
		e.Close(start.Add(time.Second)),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	want.Open(conversation.Capture{Client: netip.MustParseAddrPort("[::1]:40000"), Server: netip.MustParseAddrPort("[::1]:5432"),
		Comment: "interlock session x", Start: start})
	want.Send(true, []byte("Q\x00\x00\x00\x0dSELECT 1\x00"), start.Add(time.Millisecond))
	want.Send(false, bytes.Repeat([]byte("D"), 70000), start.Add(2*time.Millisecond))
	want.Send(true, nil, start.Add(3*time.Millisecond))
	want.Close(start.Add(time.Second))
	return buf.Bytes()
}

// What the daemon encodes, the command decodes, call for call.
func TestRoundTrip(t *testing.T) {
	var want, got log
	b := encode(t, &want)
	if err := conversation.Decode(bytes.NewReader(b), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.calls, want.calls) {
		t.Fatalf("decoded\n%s\nwant\n%s", strings.Join(got.calls, "\n"), strings.Join(want.calls, "\n"))
	}
}

// A stream cut anywhere (the daemon failed half-way) is an error, never a
// capture that looks whole: nothing is closed.
func TestCutStreamIsAnError(t *testing.T) {
	b := encode(t, &log{})
	for cut := 0; cut < len(b); cut += max(1, cut/16) {
		var got log
		err := conversation.Decode(bytes.NewReader(b[:cut]), &got)
		if err == nil {
			t.Fatalf("stream cut at %d of %d bytes decoded without error", cut, len(b))
		}
		for _, c := range got.calls {
			if strings.HasPrefix(c, "close") {
				t.Fatalf("stream cut at %d closed the capture", cut)
			}
		}
	}
}
