package daemon_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// reasonPolicy's uid-4242 identity may match a task of any tag (the
// kernel does not know the uid at connect), and may reach any address: so
// the kernel refuses nothing and every refusal below is interlockd's (the
// tests run as root, not uid 4242). TestNoRuleAllowsGivesEPERM has the
// kernel refuse.
const reasonPolicy = `version: 1
identities:
  - name: ci-bot
  - name: uid-4242
    uid: [4242]
targets:
  - {name: blocked, protocol: tcp, addresses: [127.0.0.1], port: %d}
  - {name: open, protocol: tcp, addresses: [127.0.0.1], port: %d}
  - {name: closed, protocol: tcp, addresses: [127.0.0.1], port: %d}
rules:
  - name: no-blocked
    identity: ci-bot
    target: blocked
    action: deny
    message: not this one
  - name: open-and-closed
    identity: ci-bot
    target: [open, closed]
    action: allow
  - name: uid-4242-anywhere
    identity: uid-4242
    protocol: [tcp]
    action: allow
`

// TestTCPRefusalReasons: where the kernel cannot refuse, a plain TCP agent
// sees a reset for an identity the policy does not know, for a destination
// no rule allows, for a deny rule and for an upstream that refuses; the
// audit line and the chain say which.
func TestTCPRefusalReasons(t *testing.T) {
	blocked := newTarget(t, "tcp", "127.0.0.1:0")
	open := newTarget(t, "tcp", "127.0.0.1:0")
	unlisted := newTarget(t, "tcp", "127.0.0.1:0")
	closedPort := testenv.FreePort(t)
	port := func(tg *target) int { return tg.l.Addr().(*net.TCPAddr).Port }
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(reasonPolicy, port(blocked), port(open), closedPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fixture{d: daemontest.Start(t, daemontest.Options{Policy: pol}), agent: agentBinary(t)}

	if r := f.run(t, "ci-bot", "tcp", open.addr()); r.Line != "hello from target" {
		t.Fatalf("allowed destination: %+v", r)
	}
	for _, tc := range []struct {
		identity, dst, outcome, reason string
	}{
		{"stranger", open.addr(), "denied", `unknown identity: no identity of the policy matches tag "stranger"`},
		{"ci-bot", unlisted.addr(), "denied", "no rule allows this destination (default-deny)"},
		{"ci-bot", blocked.addr(), "denied", `denied by rule "no-blocked": not this one`},
		{"ci-bot", fmt.Sprintf("127.0.0.1:%d", closedPort), "upstream unreachable", "connection refused"},
	} {
		r := f.run(t, tc.identity, "tcp", tc.dst)
		if r.Line != "" || r.Err == "" {
			t.Errorf("%s -> %s: the agent got %+v, want a reset", tc.identity, tc.dst, r)
		}
		waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
			return m["identity"] == tc.identity && m["dst"] == tc.dst && m["outcome"] == tc.outcome &&
				strings.Contains(fmt.Sprint(m["reason"]), tc.reason)
		})
	}
	if n := len(blocked.accepted()) + len(unlisted.accepted()); n != 0 {
		t.Fatalf("%d refused connections reached their destination", n)
	}
	out, _, _ := f.d.CLI("audit", "export")
	if !strings.Contains(out, `denied by rule \"no-blocked\"`) || !strings.Contains(out, "unknown identity") {
		t.Fatalf("the audit chain lacks the reasons:\n%s", out)
	}
}
