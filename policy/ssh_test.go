package policy

import (
	"strings"
	"testing"
)

const sshPolicy = `
identities: [{name: ci}, {name: ops}]
targets:
  - name: web-1
    protocol: ssh
    hosts: [web-1.internal]
    addresses: [10.0.0.5]
    port: 22
    known_hosts: /etc/interlock/known_hosts
    user: deploy
rules:
  - name: no-rm
    target: web-1
    ssh: {exec: ["rm *"]}
    action: deny
  - name: inspect
    identity: ci
    target: web-1
    ssh: {exec: ["uname *", "cat /var/log/app/*", "echo *"]}
    action: allow
  - name: restart-approved
    identity: ci
    target: web-1
    ssh: {exec: ["systemctl restart app"]}
    action: approve
    approve: {reviewers: [alice]}
  - name: ops-shell
    identity: ops
    target: web-1
    ssh: {shell: true}
    action: allow
`

func TestDecideSSH(t *testing.T) {
	p := mustParse(t, sshPolicy)
	web := p.Target("web-1")
	if web.User != "deploy" || web.KnownHosts != "/etc/interlock/known_hosts" || len(web.Names) != 1 || web.Names[0] != "web-1.internal" {
		t.Fatalf("target: %+v", web)
	}
	ci, ops := &Subject{Tag: "ci"}, &Subject{Tag: "ops"}
	cases := []struct {
		s        *Subject
		req      string
		line     string
		action   Action
		rule     string
		inReason string
	}{
		{ci, "exec", "uname -a", Allow, "inspect", ""},
		{ci, "exec", "uname", Allow, "inspect", ""},
		{ci, "exec", "cat /var/log/app/app.log", Allow, "inspect", ""},
		{ci, "exec", "cat /var/log/app/../../../etc/shadow", Deny, "default-deny", ""},
		{ci, "exec", "cat /etc/shadow", Deny, "default-deny", ""},
		{ci, "exec", "rm -rf /tmp/x", Deny, "no-rm", ""},
		{ci, "exec", "uname; rm -rf /tmp/x", Deny, "no-rm", ""},
		{ci, "exec", "uname && reboot", Deny, "default-deny", ""},
		{ci, "exec", "uname | sh", Deny, "default-deny", ""},
		{ci, "exec", "uname $(curl x)", Deny, "shell-syntax", "command substitution"},
		{ci, "exec", "uname `id`", Deny, "shell-syntax", "command substitution"},
		{ci, "exec", "uname > /etc/x", Deny, "shell-syntax", "redirection >"},
		{ci, "exec", "echo x > /etc/passwd", Deny, "shell-syntax", "redirection"},
		{ci, "exec", "echo $SECRET", Deny, "shell-syntax", "parameter expansion"},
		{ci, "exec", "LD_PRELOAD=/tmp/x uname", Deny, "shell-syntax", "variable assignment"},
		{ci, "exec", "uname 'unterminated", Deny, "unparseable", "does not parse"},
		{ci, "exec", "f() { rm x; }; f", Deny, "unparseable", "function"},
		{ci, "exec", "  # nothing", Deny, "empty-command", ""},
		{ci, "exec", "uname '; rm -rf /'", Allow, "inspect", ""},
		{ci, "exec", "uname; systemctl restart app", Approve, "restart-approved", ""},
		{ci, "exec", "systemctl restart app; rm x", Deny, "no-rm", ""},
		{ci, "shell", "", Deny, "default-deny", ""},
		{ops, "shell", "", Allow, "ops-shell", ""},
		{ops, "exec", "uname", Deny, "default-deny", ""},
		{ci, "subsystem", "sftp", Deny, "unsupported-operation", ""},
	}
	for _, c := range cases {
		d := p.DecideSSH(c.s, web, c.req, c.line)
		if d.Action != c.action || d.Rule != c.rule || !strings.Contains(d.Message, c.inReason) {
			t.Errorf("%s %s %q: %v by %s (%s), want %v by %s (%q)", c.s.Tag, c.req, c.line, d.Action, d.Rule, d.Message, c.action, c.rule, c.inReason)
		}
	}
	// Explain and shipped tests decide an ssh test as an exec request.
	if d, _ := p.Explain(&Test{Identity: "ci", Target: "web-1", SSH: "uname; rm x"}); d.Rule != "no-rm" {
		t.Errorf("explain: %+v", d)
	}
}

func TestSSHPolicyErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{"targets:\n  - {name: box, protocol: ssh, addresses: [10.0.0.1]}\n", `target "box": an ssh target needs known_hosts`},
		{"targets:\n  - {name: box, protocol: ssh, addresses: [10.0.0.1], known_hosts: kh}\n", `known_hosts "kh" is not an absolute path`},
		{"targets:\n  - {name: box, protocol: ssh, addresses: [10.0.0.1], known_hosts: /kh, hosts: [\"a b\"]}\n", `hosts entry "a b" is not a host name`},
		{"targets:\n  - {name: db, protocol: postgres, addresses: [10.0.0.1], user: x}\n", `target "db": user is only for ssh targets`},
		{"targets:\n  - {name: db, protocol: postgres, addresses: [10.0.0.1], hosts: [db]}\n", `target "db": hosts is only for ssh and http targets`},
		{"rules:\n  - {name: r, ssh: {}, action: allow}\n", `rule "r": ssh needs exec: [patterns], shell: true, sftp: {read, write}, git_fetch: or git_push: [repositories]`},
		{"rules:\n  - {name: r, ssh: {exec: [\"uname; rm\"]}, action: allow}\n", `rule "r": ssh exec pattern "uname; rm": a pattern is one simple command`},
		{"rules:\n  - {name: r, ssh: {exec: [\"cat $(x)\"]}, action: allow}\n", `a pattern holds no command substitution`},
		{"rules:\n  - {name: r, ssh: {command: [uptime]}, action: allow}\n", `unknown key "command" (known: exec, git_fetch, git_push, sftp, shell)`},
	}
	for _, c := range cases {
		_, err := load("test.yaml", c.src, fakeResolver{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q:\n got: %v\nwant: %s", c.src, err, c.want)
		}
	}
}
