package daemon_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/daemontest"
)

const unixPolicy = `version: 1
identities:
  - name: locked
    allow_unix_paths: [%[1]s/ok.sock]
  - name: open
deny_unix_paths: [%[1]s/denied.dgram]
`

// unixScript connects to (stream) or sends a datagram to (dgram) the path
// sys.argv[2] and prints the errno (0 on success).
const unixScript = `
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "stream" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_UNIX, kind)
try:
    if kind == socket.SOCK_STREAM:
        s.connect(sys.argv[2])
    else:
        s.sendto(b"x", sys.argv[2])
    print(0)
except OSError as e:
    print(e.errno)
`

// TestUnixAllowListAndSendto: through the CLI, daemon and policy, an
// identity with allow_unix_paths reaches only those sockets, and a
// datagram sendto() to a denied path is refused however it is spelled.
func TestUnixAllowListAndSendto(t *testing.T) {
	dir, err := os.MkdirTemp("", "interlock-unix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(unixPolicy, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol})
	for _, name := range []string{"ok.sock", "other.sock"} {
		serveUnix(t, filepath.Join(dir, name))
	}
	dgram, err := net.ListenPacket("unixgram", filepath.Join(dir, "denied.dgram"))
	if err != nil {
		t.Fatal(err)
	}
	defer dgram.Close()
	for _, name := range []string{"ok.sock", "other.sock", "denied.dgram"} {
		os.Chmod(filepath.Join(dir, name), 0o777)
	}

	for _, c := range []struct{ identity, kind, path, want string }{
		{"locked", "stream", dir + "/ok.sock", "0"},
		{"locked", "stream", dir + "//ok.sock", "0"},
		{"locked", "stream", dir + "/other.sock", "1"},
		{"open", "stream", dir + "/other.sock", "0"},
		{"open", "dgram", dir + "/denied.dgram", "1"},
		{"open", "dgram", dir + "/./denied.dgram", "1"},
	} {
		argv := append(append([]string{}, unprivileged...), "/usr/bin/python3", "-c", unixScript, c.kind, c.path)
		out, code := d.Exec(c.identity, argv...)
		if code != 0 || strings.TrimSpace(out) != c.want {
			t.Errorf("%s: %s %s: %q (exit %d), want errno %s", c.identity, c.kind, c.path, out, code, c.want)
		}
	}
	waitEvent(t, d, "kernel_deny", func(e map[string]any) bool {
		return e["reason"] == "unix-path" && e["identity"] == "open"
	})
}

// serveUnix listens on a unix stream socket at path that anyone may reach,
// and closes every connection it accepts, until the test ends.
func serveUnix(t *testing.T, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}
