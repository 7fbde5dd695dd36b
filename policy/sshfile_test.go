package policy

import (
	"strings"
	"testing"
)

const sshFilePolicy = `
identities: [{name: ci}]
targets:
  - name: web-1
    protocol: ssh
    addresses: [10.0.0.5]
    port: 22
    known_hosts: /etc/interlock/known_hosts
rules:
  - name: no-keys
    target: web-1
    ssh: {sftp: {write: ["/srv/upload/*.key"]}}
    action: deny
  - name: no-secrets
    target: web-1
    ssh: {sftp: {read: ["/srv/share/secret/**"]}}
    action: deny
  - name: files
    identity: ci
    target: web-1
    ssh: {sftp: {read: ["/var/log/app/*", "/srv/share/**"], write: ["/srv/upload/**", "/tmp/*.txt"]}}
    action: allow
  - name: repos
    identity: ci
    target: web-1
    ssh: {git_fetch: ["acme/*"], git_push: ["acme/infra.git"]}
    action: allow
`

func TestDecideSSHFiles(t *testing.T) {
	p := mustParse(t, sshFilePolicy)
	web := p.Target("web-1")
	ci := &Subject{Tag: "ci"}
	for _, c := range []struct {
		req, line string
		action    Action
		rule      string
	}{
		{SFTPRead, "/var/log/app/app.log", Allow, "files"},
		{SFTPRead, "/var/log/app/sub/app.log", Deny, "default-deny"}, // * stays within a name
		{SFTPRead, "/srv/share", Allow, "files"},                     // /** covers the directory itself
		{SFTPRead, "/srv/share/a/b/c", Allow, "files"},
		{SFTPRead, "/srv/shared", Deny, "default-deny"},
		{SFTPRead, "/srv/share/secret/key", Deny, "no-secrets"},
		{SFTPRead, "/srv/upload/x", Deny, "default-deny"}, // write-only
		{SFTPWrite, "/srv/upload/x", Allow, "files"},
		{SFTPWrite, "/tmp/a.txt", Allow, "files"},
		{SFTPWrite, "/tmp/a.sh", Deny, "default-deny"},
		{SFTPWrite, "/var/log/app/app.log", Deny, "default-deny"},
		{SFTPStat, "/srv/upload", Allow, "files"}, // stat where writing is allowed
		{SFTPStat, "/etc/passwd", Deny, "default-deny"},
		{SFTPRead, "/srv/share/../../etc/passwd", Deny, "sftp-path"},
		{SFTPRead, "relative", Deny, "sftp-path"},
		{"exec", "git-upload-pack 'acme/web.git'", Allow, "repos"},
		{"exec", "git-upload-pack '/acme/web.git'", Allow, "repos"}, // ssh://host/acme/web.git
		{"exec", "git-upload-pack 'other/web.git'", Deny, "default-deny"},
		{"exec", "git-receive-pack 'acme/infra.git'", Allow, "repos"},
		{"exec", "git-receive-pack 'acme/web.git'", Deny, "default-deny"},
		{"exec", "git-receive-pack 'acme/infra.git'; rm -rf /", Deny, "default-deny"},
		{SFTPWrite, "/srv/upload/a.key", Deny, "no-keys"},
		{"exec", "scp -t /srv/upload/", Deny, "no-keys"},      // the name sent could be a.key
		{"exec", "scp -t /srv/upload/x/", Allow, "files"},     // no-keys names nothing in x/
		{"exec", "scp -t /srv/upload/a.key", Deny, "no-keys"}, // PATH may be the file
		{"exec", "scp -t /srv/upload/a.bin", Allow, "files"},
		{"exec", "scp -t /etc/", Deny, "default-deny"},
		{"exec", "scp -t /tmp/", Deny, "default-deny"},      // /tmp/*.txt allows some names only
		{"exec", "scp -t /tmp/a.txt", Deny, "default-deny"}, // it may be a directory: /tmp/a.txt/* is not allowed
		{"exec", "scp -f /var/log/app/app.log", Allow, "files"},
		{"exec", "scp -f /etc/shadow", Deny, "default-deny"},
		{"exec", "scp -r -t /srv/upload", Deny, "scp-recursive"},
		{"exec", "scp -t .", Deny, "scp-relative-path"},
		{"exec", "rsync --server -vlogDtpre.iLsfxCIvu . /srv/upload/", Deny, "no-keys"}, // it could write /srv/upload/x.key
		{"exec", "rsync --server -vlogDtpre.iLsfxCIvu --delete . /srv/upload/site", Allow, "files"},
		{"exec", "rsync --server -vlogDtpre.iLsfxCIvu . /srv/", Deny, "no-keys"}, // /srv/upload/x.key is under /srv
		{"exec", "rsync --server -vlogDtpre.iLsfxCIvu . /tmp/", Deny, "default-deny"},
		{"exec", "rsync --server --sender -vlogDtpre.iLsfxCIvu . /srv/share/docs", Allow, "files"},
		{"exec", "rsync --server --sender -vlogDtpre.iLsfxCIvu . /srv/share", Deny, "no-secrets"},      // secret/ is under it
		{"exec", "rsync --server --sender -vlogDtpre.iLsfxCIvu . /var/log/app/", Deny, "default-deny"}, // only its files, not a tree
		{"exec", "rsync --server --sender --remove-source-files -vlogDtpre.iLsfxCIvu . /srv/share/docs", Deny, "rsync-option"},
		{"exec", "rsync --server -vlogDtpre.iLsfxCIvu --log-file=/etc/cron.d/x . /srv/upload/", Deny, "rsync-option"},
		{"exec", "rsync --server -vlogDtpre.iLsfxCIvu . upload", Deny, "rsync-relative-path"},
	} {
		d := p.DecideSSH(ci, web, c.req, c.line)
		if d.Action != c.action || d.Rule != c.rule {
			t.Errorf("%s %q = %v by %q (%s), want %v by %q", c.req, c.line, d.Action, d.Rule, d.Message, c.action, c.rule)
		}
	}
}

func TestSSHFileRulesErrors(t *testing.T) {
	for _, c := range []struct{ rule, want string }{
		{`ssh: {sftp: {read: ["relative/*"]}}`, "clean absolute path glob"},
		{`ssh: {sftp: {write: ["/a/../b"]}}`, "clean absolute path glob"},
		{`ssh: {sftp: {write: ["/a/**/b"]}}`, "clean absolute path glob"},
		{`ssh: {sftp: {}}`, "sftp needs read: or write:"},
		{`ssh: {git_push: ["[acme"]}`, "want a path glob"},
	} {
		src := strings.Replace(sshFilePolicy, `ssh: {git_fetch: ["acme/*"], git_push: ["acme/infra.git"]}`, c.rule, 1)
		if _, err := compile("test.yaml", []byte(src), protocols); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.rule, err, c.want)
		}
	}
}
