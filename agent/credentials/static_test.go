package credentials

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestStaticPrivateKey: a static source with a private key hands SSH
// targets that key, and refuses a key file others may read.
func TestStaticPrivateKey(t *testing.T) {
	dir := t.TempDir()
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := NewManager(Config{Static: map[string]StaticConfig{"old-hosts": {PrivateKeyFile: keyFile}}}, filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l, err := m.Issue(t.Context(), Request{Ref: Ref{Source: "old-hosts"}, Target: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	if c := l.Credential(); !bytes.Equal(c.PrivateKey, pem.EncodeToMemory(block)) || c.Username != "" || c.Password != "" {
		t.Errorf("credential %+v", c)
	}

	os.Chmod(keyFile, 0o644)
	if _, err := NewManager(Config{Static: map[string]StaticConfig{"old-hosts": {PrivateKeyFile: keyFile}}}, filepath.Join(dir, "state2")); err == nil || !strings.Contains(err.Error(), "must be 0600") {
		t.Errorf("a key others may read: %v", err)
	}
	os.Chmod(keyFile, 0o600)
	if _, err := NewManager(Config{Static: map[string]StaticConfig{"old-hosts": {PrivateKeyFile: keyFile, Username: "u"}}}, filepath.Join(dir, "state3")); err == nil || !strings.Contains(err.Error(), "stands alone") {
		t.Errorf("a key with a username: %v", err)
	}
	notKey := filepath.Join(dir, "notkey")
	os.WriteFile(notKey, []byte("hello"), 0o600)
	if _, err := NewManager(Config{Static: map[string]StaticConfig{"old-hosts": {PrivateKeyFile: notKey}}}, filepath.Join(dir, "state4")); err == nil {
		t.Error("a file that holds no key: accepted")
	}
}
