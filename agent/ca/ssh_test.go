package ca

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
