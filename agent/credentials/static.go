package credentials

import (
	"context"
	"time"
)

// static hands every session the same configured credential. It has nothing
// to revoke or renew; use it for tests and legacy targets only.
type static struct{ cred Credential }

func newStatic(c StaticConfig) (*static, error) {
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
