package ca

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	// SSHHostKeyFile is the file in the authority's directory holding the
	// SSH host CA's private key (OpenSSH format). It never leaves that
	// directory.
	SSHHostKeyFile = "ssh-host-ca"
	// SSHHostCertLifetime is how long a host certificate interlockd
	// presents is valid: one is made for each session, and a client checks
	// it only during the key exchange.
	SSHHostCertLifetime = time.Hour
)

// SSHHostAuthority is Interlock's SSH host CA: it certifies the host keys
// interlockd presents to agents when it terminates their SSH, so a client
// that trusts it (one @cert-authority line in known_hosts) accepts
// interlockd for the servers it stands in for. Safe for concurrent use.
type SSHHostAuthority struct {
	signer ssh.Signer
}

// OpenSSHHost loads the SSH host CA kept in dir (ca.Dir of the state
// directory), creating it at first use. Like the X.509 authority's, a key
// file that others could read or that another user owns is refused.
func OpenSSHHost(dir string) (*SSHHostAuthority, error) {
	signer, err := openSSHKey(dir, SSHHostKeyFile, "ssh host ca")
	if err != nil {
		return nil, err
	}
	return &SSHHostAuthority{signer: signer}, nil
}

// openSSHKey loads the CA key file name of dir, creating it at first use;
// what names the key in errors and in the file's comment.
func openSSHKey(dir, name, what string) (ssh.Signer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ca dir: %w", err)
	}
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return createSSHKey(path, what)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s key: %w", what, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s key: %w", what, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s key %s has mode %04o; it must be 0600", what, path, st.Mode().Perm())
	}
	if uid := fileOwner(st); uid != uint32(os.Geteuid()) {
		return nil, fmt.Errorf("%s key %s is owned by uid %d, not by the daemon's uid %d", what, path, uid, os.Geteuid())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s key: %w", what, err)
	}
	signer, err := ssh.ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("parse %s key %s: %w", what, path, err)
	}
	return signer, nil
}

func createSSHKey(path, what string) (ssh.Signer, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", what, err)
	}
	block, err := ssh.MarshalPrivateKey(key, "interlock "+what)
	if err != nil {
		return nil, fmt.Errorf("encode %s key: %w", what, err)
	}
	if err := writeFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("write %s key: %w", what, err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return signer, nil
}

// PublicKey returns the CA's public key.
func (a *SSHHostAuthority) PublicKey() ssh.PublicKey { return a.signer.PublicKey() }

// KnownHostsLine returns the line a known_hosts file needs to trust every
// host certificate of the CA: "@cert-authority * ssh-ed25519 ...".
func (a *SSHHostAuthority) KnownHostsLine() string {
	return "@cert-authority * " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(a.PublicKey()))) + " interlock"
}

// HostSigner makes a fresh host key and returns it with a certificate for
// principals (host names and addresses), valid for SSHHostCertLifetime.
func (a *SSHHostAuthority) HostSigner(principals []string) (ssh.Signer, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ssh host key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	var serial [8]byte
	rand.Read(serial[:])
	now := time.Now()
	cert := &ssh.Certificate{
		Key: signer.PublicKey(), Serial: binary.BigEndian.Uint64(serial[:]), CertType: ssh.HostCert,
		KeyId: "interlock " + strings.Join(principals, ","), ValidPrincipals: principals,
		ValidAfter: uint64(now.Add(-clockSkew).Unix()), ValidBefore: uint64(now.Add(SSHHostCertLifetime).Unix()),
	}
	if err := cert.SignCert(rand.Reader, a.signer); err != nil {
		return nil, fmt.Errorf("sign ssh host certificate: %w", err)
	}
	return ssh.NewCertSigner(cert, signer)
}

// SSHUserKeyFile is the file in the authority's directory holding the SSH
// user CA's private key (OpenSSH format).
const SSHUserKeyFile = "ssh-user-ca"

// SSHUserCertLifetime is how long a user certificate interlockd logs in
// with is valid: a server checks it only at login, which follows at once.
const SSHUserCertLifetime = 5 * time.Minute

// SSHUserAuthority is Interlock's SSH user CA: the default credential of
// an SSH target with no credential block. It certifies the key interlockd
// makes for each session, for the login user alone; a server trusts it
// with one TrustedUserCAKeys line (`interlock ssh user-ca`). Safe for
// concurrent use.
type SSHUserAuthority struct {
	signer ssh.Signer
}

// OpenSSHUser loads the SSH user CA kept in dir, creating it at first use,
// with the same checks as OpenSSHHost.
func OpenSSHUser(dir string) (*SSHUserAuthority, error) {
	signer, err := openSSHKey(dir, SSHUserKeyFile, "ssh user ca")
	if err != nil {
		return nil, err
	}
	return &SSHUserAuthority{signer: signer}, nil
}

// PublicKey returns the CA's public key.
func (a *SSHUserAuthority) PublicKey() ssh.PublicKey { return a.signer.PublicKey() }

// SignUser certifies publicKey (authorized_keys form) for one login,
// principal user, valid for SSHUserCertLifetime; keyID names the session
// in the server's log. It returns the certificate in authorized_keys form.
func (a *SSHUserAuthority) SignUser(publicKey []byte, user, keyID string) ([]byte, error) {
	if user == "" {
		return nil, errors.New("ssh user certificate: no login user")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(publicKey)
	if err != nil {
		return nil, fmt.Errorf("ssh user certificate: %w", err)
	}
	var serial [8]byte
	rand.Read(serial[:])
	now := time.Now()
	cert := &ssh.Certificate{
		Key: pub, Serial: binary.BigEndian.Uint64(serial[:]), CertType: ssh.UserCert, KeyId: keyID,
		ValidPrincipals: []string{user},
		ValidAfter:      uint64(now.Add(-clockSkew).Unix()), ValidBefore: uint64(now.Add(SSHUserCertLifetime).Unix()),
		Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}},
	}
	if err := cert.SignCert(rand.Reader, a.signer); err != nil {
		return nil, fmt.Errorf("sign ssh user certificate: %w", err)
	}
	return ssh.MarshalAuthorizedKey(cert), nil
}
