package ca

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestSSHHostAuthority(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	a, err := OpenSSHHost(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, SSHHostKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, st.Mode())
	}
	// A second start uses the same authority.
	b, err := OpenSSHHost(dir)
	if err != nil || string(b.PublicKey().Marshal()) != string(a.PublicKey().Marshal()) {
		t.Fatalf("reopen: %v, same key %v", err, err == nil && string(b.PublicKey().Marshal()) == string(a.PublicKey().Marshal()))
	}
	// The known_hosts line is one OpenSSH and knownhosts read: it makes a
	// host certificate for the name trusted, and only for that name.
	line := a.KnownHostsLine()
	if !strings.HasPrefix(line, "@cert-authority * ssh-ed25519 ") {
		t.Errorf("line %q", line)
	}
	kh := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(kh, []byte(line+"\n"), 0o644)
	check, err := knownhosts.New(kh)
	if err != nil {
		t.Fatal(err)
	}
	s, err := a.HostSigner([]string{"web-1.internal", "10.0.0.5"})
	if err != nil {
		t.Fatal(err)
	}
	cert := s.PublicKey().(*ssh.Certificate)
	if cert.CertType != ssh.HostCert {
		t.Errorf("certificate type %d", cert.CertType)
	}
	remote := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 22}
	for _, host := range []string{"web-1.internal:22", "10.0.0.5:22"} {
		if err := check(host, remote, s.PublicKey()); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if err := check("other:22", remote, s.PublicKey()); err == nil {
		t.Error("certificate accepted for a name it does not hold")
	}
}

func TestSSHHostAuthorityRefusesExposedKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if _, err := OpenSSHHost(dir); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, SSHHostKeyFile), 0o644)
	if _, err := OpenSSHHost(dir); err == nil || !strings.Contains(err.Error(), "must be 0600") {
		t.Errorf("exposed key: %v", err)
	}
}

// The user CA certifies a session key for one login, briefly, and keeps
// its key across restarts.
func TestSSHUserCA(t *testing.T) {
	dir := t.TempDir()
	a, err := OpenSSHUser(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(key)
	raw, err := a.SignUser(ssh.MarshalAuthorizedKey(signer.PublicKey()), "deploy", "interlock session s1")
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	cert := pub.(*ssh.Certificate)
	checker := ssh.CertChecker{IsUserAuthority: func(k ssh.PublicKey) bool {
		return bytes.Equal(k.Marshal(), a.PublicKey().Marshal())
	}}
	if _, err := checker.Authenticate(connMeta("deploy"), cert); err != nil {
		t.Errorf("the certificate does not log in deploy: %v", err)
	}
	if _, err := checker.Authenticate(connMeta("root"), cert); err == nil {
		t.Error("the certificate logs in root too")
	}
	if life := time.Until(time.Unix(int64(cert.ValidBefore), 0)); life > SSHUserCertLifetime {
		t.Errorf("valid for %v, want at most %v", life, SSHUserCertLifetime)
	}
	if _, err := a.SignUser(ssh.MarshalAuthorizedKey(signer.PublicKey()), "", "x"); err == nil {
		t.Error("a certificate for no login user was signed")
	}
	again, err := OpenSSHUser(dir)
	if err != nil || !bytes.Equal(again.PublicKey().Marshal(), a.PublicKey().Marshal()) {
		t.Errorf("reopened user CA differs: %v", err)
	}
}

type connMeta string

func (c connMeta) User() string        { return string(c) }
func (connMeta) SessionID() []byte     { return nil }
func (connMeta) ClientVersion() []byte { return nil }
func (connMeta) ServerVersion() []byte { return nil }
func (connMeta) RemoteAddr() net.Addr  { return &net.TCPAddr{} }
func (connMeta) LocalAddr() net.Addr   { return &net.TCPAddr{} }
