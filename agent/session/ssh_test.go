package session

import (
	"context"
	"net/netip"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
)

const sshPolicy = `version: 1
identities: [{name: ci}]
targets:
  - name: web
    protocol: ssh
    hosts: [web.internal]
    addresses: [127.0.0.3]
    port: 22
    known_hosts: /etc/interlock/known_hosts
    user: deploy
rules:
  - {name: no-rm, target: web, ssh: {exec: ["rm *"]}, action: deny}
  - {name: inspect, identity: ci, target: web, ssh: {exec: ["uname *"]}, action: allow}
`

// TestDecideSSH: an ssh target's requests are decided by the policy's
// ssh rules, command by command; what they cannot express is refused.
func TestDecideSSH(t *testing.T) {
	e := newEnv(t, nil)
	pol, err := policy.Load(context.Background(), policy.Source{Name: "ssh.yaml", Text: []byte(sshPolicy)}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.p.cfg.Policy.Swap(pol)
	c := &conn{id: "s", identity: &proxy.Identity{Name: "ci"}, target: pol.Target("web"), subject: policy.Subject{Tag: "ci"}}
	en := &enforcer{p: e.p, c: c, rec: &recorder{p: e.p, c: c}}
	for _, tc := range []struct {
		op, text string
		action   protocol.Action
		rule     string
	}{
		{"exec", "uname -a", protocol.Allow, "inspect"},
		{"exec", "uname; rm -rf /", protocol.Deny, "no-rm"},
		{"exec", "uname $(id)", protocol.Deny, "shell-syntax"},
		{"exec", "reboot", protocol.Deny, "default-deny"},
		{"shell", "", protocol.Deny, "default-deny"},
		{"direct-tcpip", "10.0.0.1:5432", protocol.Deny, "unsupported-operation"},
		{"subsystem", "sftp", protocol.Deny, "unsupported-operation"},
	} {
		v := en.Decide(context.Background(), protocol.Request{Operation: tc.op, Text: tc.text})
		if v.Action != tc.action || v.Rule != tc.rule {
			t.Errorf("%s %q: %v by %s, want %v by %s", tc.op, tc.text, v.Action, v.Rule, tc.action, tc.rule)
		}
	}
}

// TestSSHTarget: the decoder gets a host certificate for the target's
// hosts and the address the agent dialed, and the target's settings.
func TestSSHTarget(t *testing.T) {
	e := newEnv(t, nil)
	pol, err := policy.Load(context.Background(), policy.Source{Name: "ssh.yaml", Text: []byte(sshPolicy)}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.p.cfg.Policy.Swap(pol)
	if _, err := e.p.sshTarget(&protocol.Session{Target: "web"}); err == nil {
		t.Error("a target without an SSH host CA")
	}
	hostCA, err := ca.OpenSSHHost(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e.p.cfg.SSHHost = hostCA.HostSigner
	tg, err := e.p.sshTarget(&protocol.Session{Target: "web", Dst: netip.MustParseAddrPort("127.0.0.3:22")})
	if err != nil {
		t.Fatal(err)
	}
	cert := tg.HostKey.PublicKey().(*ssh.Certificate)
	if got := cert.ValidPrincipals; len(got) != 2 || got[0] != "web.internal" || got[1] != "127.0.0.3" {
		t.Errorf("principals %v", got)
	}
	if tg.User != "deploy" || tg.KnownHosts != "/etc/interlock/known_hosts" {
		t.Errorf("target %+v", tg)
	}
}
