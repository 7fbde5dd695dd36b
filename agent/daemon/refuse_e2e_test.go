package daemon_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/interlock-dev/interlock/agent/daemontest"
)

// refusePolicy lets ci-bot and auditor reach one target, "open"; "later"
// is a target no rule allows until the policy is reloaded with laterRule.
// 127.0.0.3 is denied by ci-bot's own intercept entry.
const refusePolicy = `version: 1
identities:
  - name: ci-bot
    intercept:
      - {to: [127.0.0.3/32], action: deny}
  - name: auditor
    mode: audit
targets:
  - {name: open, protocol: tcp, addresses: [127.0.0.1], port: %d}
  - {name: later, protocol: tcp, addresses: [127.0.0.1], port: %d}
rules:
  - {name: open, identity: [ci-bot, auditor], target: open, action: allow}
`

const laterRule = `  - {name: later, identity: ci-bot, target: later, action: allow}
`

// TestNoRuleAllowsGivesEPERM: a destination no rule could allow is refused
// by the kernel at connect() (EPERM, a kernel_deny event saying why), not
// redirected to interlockd only to be reset; an allowed target still works,
// an identity in audit mode is never refused, and a reload that allows the
// destination redirects it again.
func TestNoRuleAllowsGivesEPERM(t *testing.T) {
	open := newTarget(t, "tcp", "127.0.0.1:0")
	later := newTarget(t, "tcp", "127.0.0.1:0")
	intercepted := newTarget(t, "tcp", "127.0.0.3:0")
	port := func(tg *target) int { return tg.l.Addr().(*net.TCPAddr).Port }
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	text := fmt.Sprintf(refusePolicy, port(open), port(later))
	if err := os.WriteFile(pol, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fixture{d: daemontest.Start(t, daemontest.Options{Policy: pol}), agent: agentBinary(t)}
	// The agent runs as nobody: refusal must not depend on its privileges.
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}

	if r := f.run(t, "ci-bot", "tcp", open.addr(), nobody...); r.Line != "hello from target" || r.Peer != open.addr() {
		t.Fatalf("allowed target: %+v\n%s", r, f.d.Logs())
	}
	for _, c := range []struct{ identity, dst, reason string }{
		{"ci-bot", later.addr(), "no-rule-allows"},
		{"stranger", open.addr(), "unknown-identity"},
		{"ci-bot", intercepted.addr(), "tcp-rule"},
	} {
		r := f.run(t, c.identity, "tcp", c.dst, nobody...)
		if r.Errno != int(syscall.EPERM) {
			t.Fatalf("%s -> %s: %+v, want EPERM at connect", c.identity, c.dst, r)
		}
		waitEvent(t, f.d, "kernel_deny", func(m map[string]any) bool {
			return m["identity"] == c.identity && m["dst"] == c.dst && m["reason"] == c.reason && m["uid"] == float64(65534)
		})
	}
	for _, e := range auditEvents(f.d, "connection_open") {
		if e["dst"] == later.addr() || e["identity"] == "stranger" {
			t.Errorf("a connect the kernel refused reached interlockd: %v", e)
		}
	}

	// Audit mode: the connect reaches interlockd, which records "would
	// deny" and lets it through.
	if r := f.run(t, "auditor", "tcp", later.addr(), nobody...); r.Line != "hello from target" {
		t.Fatalf("audited identity to a destination no rule allows: %+v\n%s", r, f.d.Logs())
	}
	waitEvent(t, f.d, "decision", func(m map[string]any) bool {
		return m["identity"] == "auditor" && m["action"] == "would deny" && m["rule"] == "default-deny"
	})

	// A reload that allows the destination: redirected, relayed.
	if err := os.WriteFile(pol, []byte(text+laterRule), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := f.d.CLI("policy", "reload"); err != nil {
		t.Fatalf("policy reload: %v %s", err, stderr)
	}
	if r := f.run(t, "ci-bot", "tcp", later.addr(), nobody...); r.Line != "hello from target" || r.Peer != later.addr() {
		t.Fatalf("after the reload that allows it: %+v\n%s", r, f.d.Logs())
	}
	waitEvent(t, f.d, "connection_open", func(m map[string]any) bool {
		return m["identity"] == "ci-bot" && m["dst"] == later.addr()
	})
	if n := len(intercepted.accepted()); n != 0 {
		t.Fatalf("%d refused connections reached their destination", n)
	}
	if got := later.accepted(); len(got) != 2 {
		t.Fatalf("later accepted %v: want the audited connection and the one after the reload", got)
	}
}
