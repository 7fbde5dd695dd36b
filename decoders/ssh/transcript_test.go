package ssh

import (
	"fmt"
	"strings"
	"testing"
)

func TestTranscript(t *testing.T) {
	var tr Transcript
	var lines []string
	describe := func(fromClient bool, typ byte, body string) {
		lines = append(lines, tr.Describe(fromClient, typ, []byte(body))...)
	}
	describe(true, MsgChannelRequest, "pty-req")
	describe(true, MsgChannelRequest, "exec uname -a")
	describe(false, MsgStdout, "Linux host 6.1.0\n")
	describe(false, MsgBytes, "stdin 0, stdout 17, stderr 0 bytes")
	describe(false, MsgExit, "exit-status 0")
	describe(true, MsgChannelRequest, "exec rm -rf /srv")
	describe(false, MsgInterlock, "interlock: denied by policy rule \"no-rm\"\n")
	describe(false, MsgExit, "exit-status 126")
	describe(true, MsgChannelRequest, "exec seq 30")
	var out strings.Builder
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&out, "%d\n", i)
	}
	describe(false, MsgStdout, out.String()[:20]) // output arrives in chunks, lines cut anywhere
	describe(false, MsgStdout, out.String()[20:])
	describe(false, MsgStderr, "warning\n")
	describe(false, MsgBytes, "stdin 0, stdout 81, stderr 8 bytes")
	describe(true, MsgChannelRequest, "subsystem sftp")
	describe(true, MsgSFTP, "open-write /srv/upload/a.txt")
	describe(true, MsgChannelOpen, "direct-tcpip 127.0.0.1:5432")
	lines = append(lines, tr.Finish()...)
	got := strings.Join(lines, "\n")
	for _, want := range []string{
		"request pty-req\n$ uname -a\n| Linux host 6.1.0\nstdin 0, stdout 17, stderr 0 bytes\nexit-status 0\n",
		"$ rm -rf /srv\ninterlock: denied by policy rule \"no-rm\"\nexit-status 126\n",
		"$ seq 30\n| 1\n| 2\n",
		"| 20\n! warning\n... 10 more lines of stdout\nstdin 0, stdout 81, stderr 8 bytes\n",
		"request subsystem sftp\nsftp open-write /srv/upload/a.txt\nopen channel direct-tcpip 127.0.0.1:5432",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("transcript lacks %q:\n%s", want, got)
		}
	}
}

func TestTranscriptEscapes(t *testing.T) {
	var tr Transcript
	got := tr.Describe(false, MsgStdout, []byte("\x1b]0;pwned\x07ok \"quoted\"\r\n"))
	if len(got) != 1 || got[0] != `| \x1b]0;pwned\aok "quoted"` {
		t.Errorf("got %q", got)
	}
}
