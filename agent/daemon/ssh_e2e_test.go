package daemon_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
	"golang.org/x/sys/cpu"

	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// sshFixture is a real sshd on a loopback port that trusts the Vault test
// server's SSH CA, and interlockd in front of it with an ssh target.
type sshFixture struct {
	d       *daemontest.Daemon
	dir     string
	port    int
	sshdLog *daemontest.Buffer
	vaultCA ssh.PublicKey
	// staticKey is the public half of the old-hosts source's key.
	staticKey ssh.PublicKey
	caFile    string // sshd's TrustedUserCAKeys
	clientFF  string // the agent's ssh_config
	knownUp   string // interlockd's known_hosts for sshd
	// runs counts the ssh clients run, each one connection.
	runs int
}

func startSSH(t testing.TB) *sshFixture { return startSSHWith(t, vaultCredential) }

// The target's credential lines startSSHWith takes: Vault's SSH CA, and a
// static key (sshd authorizes it for root in every fixture).
const (
	vaultCredential  = "    credential: {source: vault, kind: ssh, role: agents}"
	staticCredential = "    credential: {source: old-hosts}"
)

// startSSHWith starts the fixture with the target's credential lines; with
// none the target names no credential, so interlockd logs in with its own
// SSH user CA, which sshd then trusts too.
func startSSHWith(t testing.TB, credential string) *sshFixture {
	testenv.Privileged(t)
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		testenv.Unavailable(t, "no sshd (apt-get install openssh-server): %v", err)
	}
	dir := t.TempDir()
	// The agent runs as nobody and reads its ssh_config and known_hosts
	// here.
	for p := dir; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f := &sshFixture{dir: dir, port: testenv.FreePort(t), sshdLog: &daemontest.Buffer{}}

	vault, err := vaultcompat.New(vaultcompat.Config{SSH: &vaultcompat.SSH{Roles: map[string]vaultcompat.SSHRole{
		"agents": {AllowedUsers: []string{"interlock-agents"}, DefaultUser: "interlock-agents", DefaultTTL: 5 * time.Minute},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := vault.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vault.Close() })
	f.vaultCA = vault.CAPublicKey()

	// sshd: its own host key, the Vault CA for user certificates, root may
	// log in with a certificate for the principal interlock-agents.
	_, hostKey, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(hostKey, "test sshd")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hostKeyFile := write("sshd_host_key", string(pem.EncodeToMemory(block)), 0o600)
	hostSigner, _ := ssh.NewSignerFromKey(hostKey)
	caFile := write("user_ca.pub", string(ssh.MarshalAuthorizedKey(f.vaultCA)), 0o644)
	f.caFile = caFile
	// Vault's role certifies interlock-agents; Interlock's user CA the
	// login user itself.
	principals := write("principals", "interlock-agents\nroot\n", 0o644)
	// The static key of the old-hosts source, for hosts that trust no CA.
	_, staticKey, _ := ed25519.GenerateKey(rand.Reader)
	staticBlock, err := ssh.MarshalPrivateKey(staticKey, "")
	if err != nil {
		t.Fatal(err)
	}
	staticKeyFile := write("static_key", string(pem.EncodeToMemory(staticBlock)), 0o600)
	staticSigner, _ := ssh.NewSignerFromKey(staticKey)
	f.staticKey = staticSigner.PublicKey()
	authorized := write("authorized_keys", string(ssh.MarshalAuthorizedKey(f.staticKey)), 0o644)
	cfg := write("sshd_config", fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
TrustedUserCAKeys %s
AuthorizedPrincipalsFile %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
LogLevel VERBOSE
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
Subsystem sftp internal-sftp
`, f.port, hostKeyFile, caFile, principals, authorized), 0o644)
	// sshd refuses to start without its privilege separation directory,
	// which the package's service would create.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	sshd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", cfg)
	sshd.Stdout, sshd.Stderr = f.sshdLog, f.sshdLog
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sshd.Process.Kill()
		sshd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", f.sshdLog.String())
		}
	})
	waitFor(t, "sshd to listen", func() bool { return strings.Contains(f.sshdLog.String(), "Server listening") })

	// interlockd verifies sshd's host key against this file.
	f.knownUp = write("upstream_known_hosts", knownhosts.Line([]string{fmt.Sprintf("127.0.0.1:%d", f.port)}, hostSigner.PublicKey())+"\n", 0o644)
	pol := write("policy.yaml", fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - name: web-1
    protocol: ssh
    hosts: [web-1.internal]
    addresses: [127.0.0.1]
    port: %d
    known_hosts: %s
    user: root
%s
rules:
  - name: no-rm
    identity: ci-bot
    target: web-1
    ssh: {exec: ["rm *"]}
    action: deny
  - name: inspect
    identity: ci-bot
    target: web-1
    ssh: {exec: ["uname *", "cat", "cat %s/*", "ls *", "printenv *", "true"]}
    action: allow
  - name: touch-reviewed
    identity: ci-bot
    target: web-1
    ssh: {exec: ["touch %s/*"]}
    action: approve
    approve: {reviewers: [root], quorum: 1, timeout: 60s}
  - name: files
    identity: ci-bot
    target: web-1
    ssh: {sftp: {read: ["%s/share/**"], write: ["%s/upload/**"]}}
    action: allow
  - name: repos
    identity: ci-bot
    target: web-1
    ssh: {git_fetch: ["%s/repos/acme/*"], git_push: ["%s/repos/acme/infra.git"]}
    action: allow
  - name: shell
    identity: ci-bot
    target: web-1
    ssh: {shell: true}
    action: allow
`, f.port, f.knownUp, credential, dir, dir, dir, dir, dir[1:], dir[1:]), 0o644)
	token := write("token", vault.RootToken(), 0o600)
	conf := write("interlockd.yaml", fmt.Sprintf("credentials:\n  vault:\n    address: %s\n    auth: {method: token, token_file: %s}\n"+
		"  static:\n    old-hosts: {private_key_file: %s}\n", vault.URL(), token, staticKeyFile), 0o600)
	f.d = daemontest.Start(t, daemontest.Options{Policy: pol, Config: conf})

	// The agent's known_hosts: Interlock's @cert-authority line, and the
	// real server's plain key, which a user who logged in before has.
	caLine, _, err := f.d.CLI("ssh", "known-hosts")
	if err != nil || !strings.HasPrefix(caLine, "@cert-authority * ssh-ed25519 ") {
		t.Fatalf("interlock ssh known-hosts: %v %q", err, caLine)
	}
	known := write("known_hosts", caLine+knownhosts.Line([]string{fmt.Sprintf("127.0.0.1:%d", f.port)}, hostSigner.PublicKey())+"\n", 0o644)
	f.clientFF = write("ssh_config", fmt.Sprintf(`UserKnownHostsFile %s
GlobalKnownHostsFile /dev/null
StrictHostKeyChecking yes
BatchMode yes
`, known), 0o644)
	return f
}

// ssh runs the real ssh client as nobody under `interlock exec` and returns
// its stdout, stderr and exit status.
func (f *sshFixture) ssh(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	f.runs++
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, errOut, status, err := f.runSSH(ctx, stdin, args...)
	if err != nil {
		t.Fatalf("ssh %v: %v", args, err)
	}
	return out, errOut, status
}

// runSSH runs the agent's ssh; err is set only when it could not run.
func (f *sshFixture) runSSH(ctx context.Context, stdin string, args ...string) (string, string, int, error) {
	argv := append([]string{"exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"ssh", "-F", f.clientFF, "-p", strconv.Itoa(f.port)}, args...)
	cmd := f.d.Command(ctx, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, strings.NewReader(stdin)
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode(), nil
	}
	return out.String(), errb.String(), 0, err
}

// TestSSHExec: exec requests through interlockd to a real sshd, decided
// per simple command, logged in upstream with a certificate Vault signed
// for the session.
func TestSSHExec(t *testing.T) {
	f := startSSH(t)
	victim := filepath.Join(f.dir, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}

	out, errOut, st := f.ssh(t, "", "-v", "127.0.0.1", "uname -a")
	if st != 0 || !strings.HasPrefix(out, "Linux ") {
		t.Fatalf("uname -a: status %d\n%s\n%s\n%s", st, out, errOut, f.d.Logs())
	}
	// The agent authenticated with nothing: it holds no key.
	if !strings.Contains(errOut, `using "none"`) {
		t.Errorf("the agent authenticated with something other than none:\n%s", errOut)
	}
	// OpenSSH lists chacha20 and AES-CTR first; interlockd offered it only
	// the cheapest cipher it accepts.
	if cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ && !strings.Contains(errOut, "client->server cipher: aes128-gcm@openssh.com") {
		t.Errorf("the agent's cipher is not AES-GCM:\n%s", errOut)
	}

	// A host name of the target's hosts is in the certificate too.
	if out, errOut, st := f.ssh(t, "", "-o", "HostKeyAlias=web-1.internal", "127.0.0.1", "uname"); st != 0 || out != "Linux\n" {
		t.Errorf("as web-1.internal: status %d %q %s", st, out, errOut)
	}

	for _, line := range []string{"rm -rf " + victim, "uname; rm -rf " + victim, "uname && rm -rf " + victim} {
		out, errOut, st := f.ssh(t, "", "127.0.0.1", line)
		if st != 126 || out != "" || !strings.Contains(errOut, `denied by policy rule "no-rm"`) {
			t.Errorf("%q: status %d, stdout %q, stderr %q", line, st, out, errOut)
		}
	}
	for _, line := range []string{"uname $(rm -rf " + victim + ")", "uname > " + victim + "/x", "uname `rm -rf " + victim + "`"} {
		if _, errOut, st := f.ssh(t, "", "127.0.0.1", line); st != 126 || !strings.Contains(errOut, "shell-syntax") {
			t.Errorf("%q: status %d, stderr %q", line, st, errOut)
		}
	}
	if _, errOut, st := f.ssh(t, "", "127.0.0.1", "reboot"); st != 126 || !strings.Contains(errOut, `"default-deny"`) {
		t.Errorf("reboot: status %d, stderr %q", st, errOut)
	}
	if _, err := os.Stat(victim); err != nil {
		t.Fatalf("a denied command ran: %v", err)
	}

	// stdin reaches the command and its end is EOF.
	if out, errOut, st := f.ssh(t, "hi\n", "127.0.0.1", "cat"); st != 0 || out != "hi\n" {
		t.Errorf("echo hi | ssh host cat: status %d %q %s", st, out, errOut)
	}
	// Lots of output arrives whole.
	big := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB
	os.WriteFile(filepath.Join(f.dir, "big"), big, 0o644)
	if out, _, st := f.ssh(t, "", "127.0.0.1", "cat "+filepath.Join(f.dir, "big")); st != 0 || out != string(big) {
		t.Errorf("cat big: status %d, %d bytes of %d", st, len(out), len(big))
	}
	// A failing command's status comes back.
	if _, _, st := f.ssh(t, "", "127.0.0.1", "ls /nonexistent-interlock"); st != 2 {
		t.Errorf("ls of a missing file: status %d, want 2", st)
	}

	// Every login upstream used a certificate of the Vault CA, a new one
	// for each session.
	accepted := regexp.MustCompile(`Accepted publickey for root from \S+ port \d+ ssh2: ED25519-CERT \S+ ID (\S+) \(serial (\d+)\) CA ED25519 (\S+)`).
		FindAllStringSubmatch(f.sshdLog.String(), -1)
	sessions := f.runs
	if len(accepted) != sessions {
		t.Fatalf("sshd accepted %d certificate logins, want %d\n%s", len(accepted), sessions, f.sshdLog.String())
	}
	serials := map[string]bool{}
	for _, m := range accepted {
		if m[3] != ssh.FingerprintSHA256(f.vaultCA) {
			t.Errorf("certificate signed by %s, not the Vault CA", m[3])
		}
		serials[m[2]] = true
	}
	if len(serials) != sessions {
		t.Errorf("%d distinct certificates for %d sessions", len(serials), sessions)
	}
	// The audit trail has each session's credential.
	issued := strings.Count(f.d.Logs(), `"event":"credential_issued"`)
	if issued < sessions {
		t.Errorf("%d credentials issued in the audit log, want %d", issued, sessions)
	}
}

// agent runs argv as the agent (nobody, under interlock exec) in dir and
// returns its combined output and exit status.
func (f *sshFixture) agent(t testing.TB, env []string, argv ...string) (string, int) {
	t.Helper()
	f.runs++
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := f.d.Command(ctx, append([]string{"exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}, argv...)...)
	cmd.Dir = filepath.Join(f.dir, "agent")
	cmd.Env = append(os.Environ(), append([]string{"HOME=" + cmd.Dir}, env...)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%v: %v", argv, err)
	}
	return string(out), 0
}

// mkdirs makes directories of the fixture, open to the agent.
func (f *sshFixture) mkdirs(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(f.dir, n)
		if err := os.MkdirAll(p, 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o777)
	}
}

// TestSSHSFTP: sftp, scp over sftp and legacy scp through interlockd to a
// real sshd, each operation decided on its path.
func TestSSHSFTP(t *testing.T) {
	if _, err := exec.LookPath("rsync"); err != nil {
		testenv.Unavailable(t, "rsync not installed (apt-get install rsync)")
	}
	f := startSSH(t)
	f.mkdirs(t, "agent", "share", "upload", "other")
	if err := os.WriteFile(filepath.Join(f.dir, "share", "notes.txt"), []byte("shared notes\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "agent", "report.txt"), []byte("agent report\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sftpBatch := func(batch string) (string, int) {
		t.Helper()
		b := filepath.Join(f.dir, "agent", "batch")
		if err := os.WriteFile(b, []byte(batch), 0o644); err != nil {
			t.Fatal(err)
		}
		return f.agent(t, nil, "sftp", "-F", f.clientFF, "-P", strconv.Itoa(f.port), "-b", b, "127.0.0.1")
	}
	// Upload, download, list, rename and remove where the rules allow.
	out, st := sftpBatch(fmt.Sprintf("put report.txt %[1]s/upload/report.txt\nrename %[1]s/upload/report.txt %[1]s/upload/r2.txt\nls %[1]s/share\nget %[1]s/share/notes.txt notes.txt\nmkdir %[1]s/upload/sub\nrmdir %[1]s/upload/sub\n", f.dir))
	if st != 0 || !strings.Contains(out, "notes.txt") {
		t.Fatalf("sftp batch: status %d\n%s\n%s", st, out, f.d.Logs())
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "upload", "r2.txt")); err != nil || string(b) != "agent report\n" {
		t.Errorf("uploaded file: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "agent", "notes.txt")); err != nil || string(b) != "shared notes\n" {
		t.Errorf("downloaded file: %q, %v", b, err)
	}
	// Each denied operation fails on its own, naming the rule.
	for _, cmd := range []string{
		fmt.Sprintf("put report.txt %s/other/report.txt", f.dir),
		fmt.Sprintf("get %s/upload/r2.txt x.txt", f.dir), // write-only
		fmt.Sprintf("rm %s/share/notes.txt", f.dir),      // read-only
		fmt.Sprintf("rename %[1]s/upload/r2.txt %[1]s/other/r2.txt", f.dir),
		"get /etc/shadow shadow",
	} {
		out, st := sftpBatch(cmd + "\n")
		if st == 0 || !strings.Contains(out, `denied by policy rule "default-deny"`) {
			t.Errorf("%s: status %d\n%s", cmd, st, out)
		}
	}
	if _, err := os.Stat(filepath.Join(f.dir, "other", "report.txt")); err == nil {
		t.Error("a denied upload arrived")
	}
	if _, err := os.Stat(filepath.Join(f.dir, "share", "notes.txt")); err != nil {
		t.Errorf("a denied remove removed: %v", err)
	}

	// scp: OpenSSH 9 runs it over sftp; -O is the legacy protocol, run as
	// `scp -t PATH` on the server and decided as a write of PATH.
	for _, legacy := range []bool{false, true} {
		args := []string{"scp", "-F", f.clientFF, "-P", strconv.Itoa(f.port)}
		if legacy {
			args = append(args, "-O")
		}
		out, st := f.agent(t, nil, append(args, "report.txt", "127.0.0.1:"+f.dir+"/upload/")...)
		if st != 0 {
			t.Errorf("scp (legacy %v) to upload/: status %d\n%s", legacy, st, out)
		}
		out, st = f.agent(t, nil, append(args, "report.txt", "127.0.0.1:"+f.dir+"/other/")...)
		if st == 0 || !strings.Contains(out, "denied by policy rule") {
			t.Errorf("scp (legacy %v) to other/: status %d\n%s", legacy, st, out)
		}
	}
	if _, err := os.Stat(filepath.Join(f.dir, "upload", "report.txt")); err != nil {
		t.Errorf("scp upload: %v", err)
	}

	// rsync -e ssh runs `rsync --server` on the server: an upload is a
	// write of its destination tree, a download a read of its source's.
	rsh := fmt.Sprintf("ssh -F %s -p %d", f.clientFF, f.port)
	if out, st := f.agent(t, nil, "rsync", "-a", "-e", rsh, "report.txt", "127.0.0.1:"+f.dir+"/upload/site/"); st != 0 {
		t.Errorf("rsync to upload/site/: status %d\n%s", st, out)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "upload", "site", "report.txt")); err != nil || string(b) != "agent report\n" {
		t.Errorf("rsync upload: %q, %v", b, err)
	}
	if out, st := f.agent(t, nil, "rsync", "-a", "-e", rsh, "127.0.0.1:"+f.dir+"/share/", "fetched/"); st != 0 {
		t.Errorf("rsync from share/: status %d\n%s", st, out)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "agent", "fetched", "notes.txt")); err != nil || string(b) != "shared notes\n" {
		t.Errorf("rsync download: %q, %v", b, err)
	}
	if out, st := f.agent(t, nil, "rsync", "-a", "-e", rsh, "report.txt", "127.0.0.1:"+f.dir+"/other/"); st == 0 || !strings.Contains(out, `denied by policy rule "default-deny"`) {
		t.Errorf("rsync to other/: status %d\n%s", st, out)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "other", "report.txt")); err == nil {
		t.Error("a denied scp upload arrived")
	}
	// The denials are in the audit trail: one per refused batch and scp
	// (a refused stat before a download counts too).
	if n := strings.Count(f.d.Logs(), `"action":"deny","mode":"enforce","rule":"default-deny"`); n < 7 {
		t.Errorf("%d sftp denials in the audit log, want 7 or more", n)
	}
}

// TestSSHGit: git clone and push over SSH through interlockd to bare
// repositories on a real sshd: fetch allowed from both, push to one.
func TestSSHGit(t *testing.T) {
	f := startSSH(t)
	f.mkdirs(t, "agent", "repos/acme")
	for _, name := range []string{"infra.git", "web.git"} {
		repo := filepath.Join(f.dir, "repos", "acme", name)
		if out, err := exec.Command("git", "init", "-q", "--bare", "-b", "main", repo).CombinedOutput(); err != nil {
			t.Fatalf("git init: %v\n%s", err, out)
		}
	}
	env := []string{"GIT_SSH_COMMAND=ssh -F " + f.clientFF, "GIT_AUTHOR_NAME=agent", "GIT_AUTHOR_EMAIL=agent@example.com",
		"GIT_COMMITTER_NAME=agent", "GIT_COMMITTER_EMAIL=agent@example.com"}
	url := func(name string) string {
		return fmt.Sprintf("ssh://127.0.0.1:%d%s/repos/acme/%s", f.port, f.dir, name)
	}
	for _, name := range []string{"infra", "web"} {
		if out, st := f.agent(t, env, "git", "clone", "-q", url(name+".git"), name); st != 0 {
			t.Fatalf("git clone %s: status %d\n%s\n%s", name, st, out, f.d.Logs())
		}
		script := "cd " + name + " && echo hello > README && git add README && git commit -qm first && git push -q origin HEAD:main"
		out, st := f.agent(t, env, "sh", "-c", script)
		switch name {
		case "infra":
			if st != 0 {
				t.Errorf("git push to infra: status %d\n%s", st, out)
			}
		case "web":
			if st == 0 || !strings.Contains(out, `denied by policy rule "default-deny"`) {
				t.Errorf("git push to web: status %d\n%s", st, out)
			}
		}
	}
	// The pushed commit is in infra; a fresh clone fetches it.
	if out, st := f.agent(t, env, "git", "clone", "-q", url("infra.git"), "infra2"); st != 0 {
		t.Fatalf("git clone infra again: status %d\n%s", st, out)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "agent", "infra2", "README")); err != nil || string(b) != "hello\n" {
		t.Errorf("the pushed README: %q, %v", b, err)
	}
	if out, err := exec.Command("git", "-C", filepath.Join(f.dir, "repos", "acme", "web.git"), "rev-parse", "--verify", "-q", "main").CombinedOutput(); err == nil {
		t.Errorf("the denied push reached web.git: %s", out)
	}
	if n := strings.Count(f.d.Logs(), `"action":"deny","mode":"enforce","rule":"default-deny"`); n != 1 {
		t.Errorf("%d denials in the audit log, want the push to web.git alone", n)
	}
}

// TestSSHReplay: `interlock replay` prints an SSH session readably: the
// command lines as prompts, their output, counts and exit statuses, the
// decisions and denials, and sftp operations.
func TestSSHReplay(t *testing.T) {
	f := startSSH(t)
	f.mkdirs(t, "agent", "upload")
	os.WriteFile(filepath.Join(f.dir, "agent", "r.txt"), []byte("r\n"), 0o644)
	if out, _, st := f.ssh(t, "", "127.0.0.1", "uname -s; rm -rf /srv/nothing"); st != 126 || out != "" {
		t.Fatalf("denied line: status %d %q", st, out)
	}
	if out, _, st := f.ssh(t, "", "127.0.0.1", "uname -s"); st != 0 || out != "Linux\n" {
		t.Fatalf("uname: status %d %q", st, out)
	}
	if out, st := f.agent(t, nil, "scp", "-F", f.clientFF, "-P", strconv.Itoa(f.port), "r.txt", "127.0.0.1:"+f.dir+"/upload/"); st != 0 {
		t.Fatalf("scp: status %d\n%s", st, out)
	}
	sessions := endedSessions(t, f.d, "ci-bot", 3)
	// Newest first: scp, uname, the denied line.
	for i, want := range [][]string{
		{"-> request subsystem sftp", "-> sftp open-write " + f.dir + "/upload/r.txt", "decision: allow by rule files", "exit-status 0"},
		{"-> $ uname -s", "decision: allow by rule inspect", "<- | Linux", "<- stdin 0, stdout 6, stderr 0 bytes", "<- exit-status 0"},
		{"-> $ uname -s; rm -rf /srv/nothing", `decision: deny by rule no-rm`, `<- interlock: denied by policy rule "no-rm"`, "<- exit-status 126"},
	} {
		out, stderr, err := f.d.CLI("replay", sessions[i].ID)
		for _, w := range want {
			if err != nil || !strings.Contains(out, w) {
				t.Errorf("replay of session %d lacks %q: %v %s\n%s", i, w, err, stderr, out)
				break
			}
		}
	}

	// Under a policy that no longer lets ci-bot run uname or upload, the
	// recorded sessions' requests are decided again as what they were (an
	// exec line, sftp operations): they are newly denied, and the line
	// no-rm denied stays denied.
	pol, err := os.ReadFile(filepath.Join(f.dir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	uploads := `, write: ["` + f.dir + `/upload/**"]`
	if !strings.Contains(string(pol), `"uname *", `) || !strings.Contains(string(pol), uploads) {
		t.Fatalf("the fixture's policy changed; the stricter one is made from it:\n%s", pol)
	}
	stricter := filepath.Join(t.TempDir(), "stricter.yaml")
	os.WriteFile(stricter, []byte(strings.Replace(strings.Replace(string(pol), `"uname *", `, "", 1), uploads, "", 1)), 0o644)
	if got := replayedChanges(t, f.d, stricter); !slices.Equal(got, []string{
		"newly denied exec uname -s: allow/inspect -> deny/default-deny",
		// scp's look at the directory, then its open and its setstat of the file
		"newly denied sftp-stat " + f.dir + "/upload: allow/files -> deny/default-deny",
		"newly denied sftp-write " + f.dir + "/upload/r.txt: allow/files -> deny/default-deny",
		"newly denied sftp-write " + f.dir + "/upload/r.txt: allow/files -> deny/default-deny",
	}) {
		t.Errorf("policy replay --since:\n%s", strings.Join(got, "\n"))
	}
}

// replayedChanges returns what `interlock policy replay --since 1h` under
// policy lists as changed, one line each: "<change> <op> <statement>:
// <old action>/<old rule> -> <new action>/<new rule>", in the order it
// lists them (the sessions' start, then their decisions').
func replayedChanges(t *testing.T, d *daemontest.Daemon, policy string) []string {
	t.Helper()
	out, stderr, err := d.CLI("policy", "replay", "--policy", policy, "--since", "1h", "--json")
	if err != nil {
		t.Fatalf("policy replay: %v\n%s%s", err, out, stderr)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var c struct {
			Change, Op, Statement string
			OldAction             string `json:"old_action"`
			OldRule               string `json:"old_rule"`
			NewAction             string `json:"new_action"`
			NewRule               string `json:"new_rule"`
		}
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatalf("policy replay --json: %v: %q", err, line)
		}
		got = append(got, fmt.Sprintf("%s %s: %s/%s -> %s/%s", c.Change, strings.TrimSpace(c.Op+" "+c.Statement),
			c.OldAction, c.OldRule, c.NewAction, c.NewRule))
	}
	return got
}

// TestSSHStaticKey: a target whose credential is a static source's private
// key logs in with that key, for hosts that trust no certificate authority;
// the agent still holds nothing.
func TestSSHStaticKey(t *testing.T) {
	f := startSSHWith(t, staticCredential)
	out, errOut, st := f.ssh(t, "", "127.0.0.1", "uname")
	if st != 0 || out != "Linux\n" {
		t.Fatalf("uname: status %d %q\n%s\n%s", st, out, errOut, f.d.Logs())
	}
	if _, errOut, st := f.ssh(t, "", "127.0.0.1", "rm -rf /tmp/x"); st != 126 || !strings.Contains(errOut, `"no-rm"`) {
		t.Errorf("rm: status %d, stderr %q", st, errOut)
	}
	want := "Accepted publickey for root from 127.0.0.1 port "
	fp := "ssh2: ED25519 " + ssh.FingerprintSHA256(f.staticKey)
	if n := strings.Count(f.sshdLog.String(), fp); n != 2 || !strings.Contains(f.sshdLog.String(), want) {
		t.Errorf("sshd accepted the static key %d times, want 2:\n%s", n, f.sshdLog.String())
	}
	if !strings.Contains(f.d.Logs(), `"source":"old-hosts"`) {
		t.Errorf("no credential from old-hosts in the audit log")
	}
}

// TestSSHShellReplay: an interactive shell on a pseudo-terminal, allowed
// as a whole, is recorded and replayed with what the agent typed and saw.
func TestSSHShellReplay(t *testing.T) {
	f := startSSH(t)
	f.mkdirs(t, "agent")
	// -tt: a terminal although stdin is not one; the shell reads the
	// lines as typed.
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := f.d.Command(ctx, "exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"ssh", "-tt", "-F", f.clientFF, "-p", strconv.Itoa(f.port), "127.0.0.1")
	cmd.Stdin = strings.NewReader("echo interlock-$((6*7))\nexit\n")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "interlock-42") {
		t.Fatalf("ssh -tt: %v\n%s\n%s", err, out, f.d.Logs())
	}
	sessions := endedSessions(t, f.d, "ci-bot", 1)
	replay, stderr, err := f.d.CLI("replay", sessions[0].ID)
	for _, w := range []string{"-> request pty-req", "-> request shell", "decision: allow by rule shell", "-> stdin echo interlock-$((6*7))", "interlock-42\n"} {
		if err != nil || !strings.Contains(replay, w) {
			t.Errorf("replay lacks %q: %v %s\n%s", w, err, stderr, replay)
			break
		}
	}

	// The same session as an asciicast v2 file: a header, then events.
	cast := filepath.Join(t.TempDir(), "s.cast")
	if out, stderr, err := f.d.CLI("export", sessions[0].ID, "--asciicast", cast); err != nil {
		t.Fatalf("export --asciicast: %v %s %s", err, out, stderr)
	}
	data, err := os.ReadFile(cast)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	var h struct{ Version, Width, Height int }
	if err := json.Unmarshal([]byte(lines[0]), &h); err != nil || h.Version != 2 || h.Width <= 0 || h.Height <= 0 {
		t.Fatalf("asciicast header %s: %v", lines[0], err)
	}
	output := ""
	for _, l := range lines[1:] {
		var ev []any
		if err := json.Unmarshal([]byte(l), &ev); err != nil || len(ev) != 3 {
			t.Fatalf("asciicast event %s: %v", l, err)
		}
		if ev[1] == "o" {
			output += ev[2].(string)
		}
	}
	if !strings.Contains(output, "interlock-42") {
		t.Errorf("the asciicast's output lacks the command's:\n%s", data)
	}
}

// TestSSHForwardingRefused: port and agent forwarding never reach the
// server.
func TestSSHForwardingRefused(t *testing.T) {
	f := startSSH(t)
	// -W opens a direct-tcpip channel.
	if _, errOut, st := f.ssh(t, "", "-W", fmt.Sprintf("127.0.0.1:%d", f.port), "127.0.0.1"); st != 255 || !strings.Contains(errOut, "direct-tcpip channels are not allowed") {
		t.Errorf("ssh -W: status %d, %s", st, errOut)
	}
	// -R asks the server to listen.
	lport := testenv.FreePort(t)
	if _, errOut, st := f.ssh(t, "", "-o", "ExitOnForwardFailure=yes", "-R", fmt.Sprintf("0:127.0.0.1:%d", lport), "127.0.0.1", "uname"); st != 255 || !strings.Contains(errOut, "remote port forwarding failed") {
		t.Errorf("ssh -R: status %d, %s", st, errOut)
	}
	// -A with an agent holding a key: the command upstream has no
	// SSH_AUTH_SOCK (printenv exits 1), so no agent was forwarded.
	keyFile := filepath.Join(f.dir, "agent_key")
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	block, _ := ssh.MarshalPrivateKey(k, "")
	os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600)
	os.Chown(keyFile, 65534, 65534)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	script := fmt.Sprintf(`ssh-add %s 2>/dev/null && ssh -A -F %s -p %d 127.0.0.1 'printenv SSH_AUTH_SOCK'; echo "status $?"`, keyFile, f.clientFF, f.port)
	cmd := f.d.Command(ctx, "exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
		"ssh-agent", "sh", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "status 1") {
		t.Errorf("ssh -A: %v\n%s", err, out)
	}
	// The refusals are in the audit trail.
	for _, op := range []string{"direct-tcpip", "tcpip-forward", "auth-agent-req@openssh.com"} {
		if !strings.Contains(f.d.Logs(), "interlock cannot decide ssh "+op+" requests") {
			t.Errorf("no decision on %s in the audit log", op)
		}
	}
}

// TestSSHHeldCommandApproved: a command a rule holds prints its approval id
// on stderr, waits, and runs once a reviewer approves it with the CLI.
func TestSSHHeldCommandApproved(t *testing.T) {
	f := startSSH(t)
	marker := filepath.Join(f.dir, "reviewed")
	type result struct {
		stderr string
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		_, errOut, st, err := f.runSSH(t.Context(), "", "127.0.0.1", "touch "+marker)
		done <- result{errOut, st, err}
	}()
	var pending []struct{ ID, Statement string }
	waitFor(t, "the held command's approval", func() bool {
		out, _, err := f.d.CLI("approvals", "--json")
		return err == nil && json.Unmarshal([]byte(out), &pending) == nil && len(pending) > 0
	})
	if pending[0].Statement != "touch "+marker {
		t.Fatalf("pending approval: %+v", pending[0])
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the held command ran before its approval")
	}
	if out, stderr, err := f.d.CLI("approve", pending[0].ID, "--comment", "fine"); err != nil {
		t.Fatalf("approve: %v\n%s%s", err, out, stderr)
	}
	r := <-done
	if r.err != nil || r.status != 0 || !strings.Contains(r.stderr, "held for approval "+pending[0].ID) {
		t.Fatalf("held ssh after approval: %v, status %d\n%s", r.err, r.status, r.stderr)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the approved command did not run: %v", err)
	}
}

// TestSSHUpstreamHostKeyMismatch: when sshd's host key is not the one
// interlockd's known_hosts holds, no certificate is presented to it and the
// agent is told why.
func TestSSHUpstreamHostKeyMismatch(t *testing.T) {
	f := startSSH(t)
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	other, _ := ssh.NewSignerFromKey(k)
	line := knownhosts.Line([]string{fmt.Sprintf("127.0.0.1:%d", f.port)}, other.PublicKey())
	if err := os.WriteFile(f.knownUp, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, st := f.ssh(t, "", "127.0.0.1", "uname")
	if st != 255 || !strings.Contains(errOut, "is not the one "+f.knownUp+" holds for it") {
		t.Errorf("status %d, stderr %q", st, errOut)
	}
	if strings.Contains(f.sshdLog.String(), "Accepted") {
		t.Errorf("sshd accepted a login:\n%s", f.sshdLog.String())
	}
	if !strings.Contains(f.d.Logs(), `"outcome":"upstream host key"`) {
		t.Errorf("no session closed with outcome upstream host key in the audit log")
	}
}

// TestSSHRecordingReserve: with the recordings' file system under its
// reserve, an ssh login is refused in SSH's words before any credential is
// issued or the server is logged in to; once space is freed, it works.
func TestSSHRecordingReserve(t *testing.T) {
	f := startSSH(t)
	free := fillRecordings(t, f.d)
	_, errOut, st := f.ssh(t, "", "127.0.0.1", "uname")
	if st != 255 || !strings.Contains(errOut, "the session cannot be recorded") {
		t.Fatalf("ssh under the reserve: status %d, stderr %q", st, errOut)
	}
	if strings.Contains(f.sshdLog.String(), "Accepted") || strings.Contains(f.d.Logs(), `"event":"credential_issued"`) {
		t.Errorf("a login refused for its recording reached the server or cost a credential:\n%s\n%s", f.sshdLog.String(), f.d.Logs())
	}
	waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
		return m["outcome"] == "recording unavailable" && strings.Contains(fmt.Sprint(m["reason"]), "kept free")
	})
	free()
	if out, errOut, st := f.ssh(t, "", "127.0.0.1", "uname"); st != 0 || out != "Linux\n" {
		t.Fatalf("ssh once space was freed: status %d %q %q", st, out, errOut)
	}
}

// TestSSHInterlockUserCA: an ssh target with no credential block logs in
// with a certificate from Interlock's own SSH user CA (what `interlock ssh
// user-ca` prints for the server's TrustedUserCAKeys), made for the
// session's key and its login user.
func TestSSHInterlockUserCA(t *testing.T) {
	f := startSSHWith(t, "")
	userCA, errOut, err := f.d.CLI("ssh", "user-ca")
	if err != nil || !strings.HasPrefix(userCA, "ssh-ed25519 ") {
		t.Fatalf("interlock ssh user-ca: %v %q %s", err, userCA, errOut)
	}
	caKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(userCA))
	if err != nil {
		t.Fatal(err)
	}
	// sshd reads TrustedUserCAKeys at each login.
	if err := os.WriteFile(f.caFile, []byte(userCA), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if out, errOut, st := f.ssh(t, "", "127.0.0.1", "uname"); st != 0 || out != "Linux\n" {
			t.Fatalf("uname: status %d %q\n%s\n%s", st, out, errOut, f.d.Logs())
		}
	}
	if _, errOut, st := f.ssh(t, "", "127.0.0.1", "rm -rf /tmp/x"); st != 126 || !strings.Contains(errOut, `"no-rm"`) {
		t.Errorf("rm: status %d, stderr %q", st, errOut)
	}
	accepted := regexp.MustCompile(`Accepted publickey for root from \S+ port \d+ ssh2: ED25519-CERT \S+ ID (.+) \(serial (\d+)\) CA ED25519 (\S+)`).
		FindAllStringSubmatch(f.sshdLog.String(), -1)
	if len(accepted) != f.runs {
		t.Fatalf("sshd accepted %d certificate logins, want %d\n%s", len(accepted), f.runs, f.sshdLog.String())
	}
	serials := map[string]bool{}
	for _, m := range accepted {
		if m[3] != ssh.FingerprintSHA256(caKey) {
			t.Errorf("certificate signed by %s, not Interlock's user CA %s", m[3], ssh.FingerprintSHA256(caKey))
		}
		if !strings.Contains(m[1], "identity ci-bot") {
			t.Errorf("certificate ID %q does not name the session's identity", m[1])
		}
		serials[m[2]] = true
	}
	if len(serials) != f.runs {
		t.Errorf("%d distinct certificates for %d sessions", len(serials), f.runs)
	}
	if n := strings.Count(f.d.Logs(), `"source":"interlock-ssh-ca"`); n != f.runs {
		t.Errorf("%d credential_issued events from interlock-ssh-ca, want %d", n, f.runs)
	}
}
