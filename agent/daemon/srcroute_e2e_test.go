package daemon_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/daemontest"
)

// rthdrScript sets a type-4 IPv6 segment list (one segment, fd00::99) on a
// UDP socket and prints the errno (0 on success).
const rthdrScript = `
import socket, struct
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
srh = struct.pack("BBBBBBH", 0, 2, 4, 0, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, "fd00::99")
try:
    s.setsockopt(socket.IPPROTO_IPV6, 57, srh)
    print(0)
except OSError as e:
    print(e.errno)
`

// TestSourceRouteOptionRefused: through the CLI and daemon, an unprivileged
// tagged agent cannot set IPV6_RTHDR, and the refusal
// is audited. TestSourceRoutesRefused in agent/datapath shows where the
// packets would have gone.
func TestSourceRouteOptionRefused(t *testing.T) {
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte("version: 1\nidentities:\n  - name: ci-bot\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol})
	argv := append(append([]string{}, unprivileged...), "/usr/bin/python3", "-c", rthdrScript)
	if out, code := d.Exec("ci-bot", argv...); code != 0 || strings.TrimSpace(out) != "1" {
		t.Fatalf("tagged setsockopt(IPV6_RTHDR): %q (exit %d), want errno 1", out, code)
	}
	waitEvent(t, d, "kernel_deny", func(e map[string]any) bool {
		return e["reason"] == "sockopt" && e["identity"] == "ci-bot"
	})
}
