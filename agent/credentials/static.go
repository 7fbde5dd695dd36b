package credentials

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/crypto/ssh"
)

// static hands every session the same configured credential. It has nothing
// to revoke or renew; use it for tests and legacy targets only.
type static struct{ cred Credential }

func newStatic(c StaticConfig) (*static, error) {
	if c.PrivateKeyFile != "" {
		key, err := privateKey(c.PrivateKeyFile)
		if err != nil {
			return nil, err
		}
		return &static{cred: Credential{PrivateKey: key}}, nil
	}
	pw, err := secret(c.Password, c.PasswordFile)
	if err != nil {
		return nil, err
	}
	return &static{cred: Credential{Username: c.Username, Password: pw}}, nil
}

func (s *static) issue(context.Context, Request, func(string) error) (grant, error) {
	return grant{cred: s.cred}, nil
}

func (s *static) renew(context.Context, string, time.Duration) (time.Time, error) {
	return time.Time{}, nil
}

func (s *static) revoke(context.Context, string) error     { return nil }
func (s *static) checkRef(Ref) error                       { return nil }
func (s *static) checkAccess(context.Context, []Ref) error { return nil }
func (s *static) close() error                             { return nil }

// privateKey reads an SSH private key file, refusing one that others may
// read: whoever reads it logs in wherever interlockd does with it.
func privateKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("private key %s has mode %04o; it must be 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read private key: %w", err)
	}
	if _, err := ssh.ParseRawPrivateKey(b); err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	return b, nil
}
