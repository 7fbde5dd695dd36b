package daemon_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

const inboundPolicy = `version: 1
identities:
  - name: web
    intercept:
      - {to: 10.99.0.1, action: pass}
    listen:
      - {addresses: 0.0.0.0, ports: "%d"}
  - name: closed
`

// bindScript binds a TCP socket to sys.argv[1]:sys.argv[2] and prints the
// errno (0 on success).
const bindScript = `
import socket, sys
s = socket.socket()
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
    print(0)
except OSError as e:
    print(e.errno)
`

// serveScript listens on 0.0.0.0:sys.argv[1], connects to itself by way
// of 10.99.0.1 (another host, as far as the listener can tell), and prints
// what the accepted connection carried and where it came from.
const serveScript = `
import socket, sys
port = int(sys.argv[1])
l = socket.socket()
l.bind(("0.0.0.0", port))
l.listen(1)
c = socket.create_connection(("10.99.0.1", port), timeout=3)
c.sendall(b"inbound\n")
a, peer = l.accept()
a.settimeout(3)
print(a.recv(64).decode().strip(), "%s:%d" % peer)
`

// unprivileged prefixes a command so that it runs as nobody.
var unprivileged = []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}

// TestInboundListening: through the CLI, daemon and policy, a tagged agent
// may not listen beyond loopback (nc and Python both get EPERM, audited),
// unless its identity's listen rule allows it; connections such a listener
// accepts from another host are audited.
func TestInboundListening(t *testing.T) {
	// Ports free on the host's loopback and reserved from other tests:
	// the one web's rule allows, one no rule names, and nc's. (A fixed
	// port was now and then one another test had bound: EADDRINUSE.)
	allowed, other, ncPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(inboundPolicy, allowed)), 0o644); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol})
	py := "/usr/bin/python3"

	for _, c := range []struct {
		identity, addr string
		port           int
		want           string
	}{
		{"closed", "0.0.0.0", other, "1"},
		{"closed", "::", other, "1"},
		{"closed", "127.0.0.1", other, "0"},
		{"web", "0.0.0.0", other, "1"}, // a port its rule does not name
		{"web", "0.0.0.0", allowed, "0"},
	} {
		argv := append(append([]string{}, unprivileged...), py, "-c", bindScript, c.addr, strconv.Itoa(c.port))
		if c.addr == "::" {
			argv = append(append([]string{}, unprivileged...), py, "-c", strings.Replace(bindScript, "socket.socket()", "socket.socket(socket.AF_INET6)", 1), c.addr, strconv.Itoa(c.port))
		}
		out, code := d.Exec(c.identity, argv...)
		if code != 0 || strings.TrimSpace(out) != c.want {
			t.Errorf("%s: bind %s:%d: %q (exit %d), want errno %s", c.identity, c.addr, c.port, out, code, c.want)
		}
	}
	waitEvent(t, d, "kernel_deny", func(e map[string]any) bool {
		return e["reason"] == "bind" && e["identity"] == "closed" && e["dst"] == fmt.Sprintf("0.0.0.0:%d", other)
	})

	out, code := d.Exec("closed", append(append([]string{}, unprivileged...), "nc", "-l", "0.0.0.0", strconv.Itoa(ncPort))...)
	if code == 0 || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("tagged nc -l 0.0.0.0: %q (exit %d), want EPERM", out, code)
	}

	// Another host, in a network namespace of the agent's own: 10.99.0.1.
	netns := "ip link set lo up && ip addr add 10.99.0.1/32 dev lo && exec " + strings.Join(unprivileged, " ") + " " + py + ` -c "$0" "$1"`
	out, code = d.Exec("web", "unshare", "-n", "sh", "-c", netns, serveScript, strconv.Itoa(allowed))
	f := strings.Fields(out)
	if code != 0 || len(f) != 2 || f[0] != "inbound" || !strings.HasPrefix(f[1], "10.99.0.1:") {
		t.Fatalf("allowed listener: %q (exit %d), want a connection from 10.99.0.1", out, code)
	}
	waitEvent(t, d, "kernel_accept", func(e map[string]any) bool {
		return e["identity"] == "web" && e["peer"] == f[1]
	})
}
