package session

import (
	"errors"
	"fmt"
	"slices"

	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/decoders/ssh"
)

// sshTarget gives the SSH decoder a session's target: a host certificate
// for the names the agent may have dialed (the target's hosts and the
// address it connected to, since an SSH client sends no server name), and
// the target's upstream settings.
func (p *Pipeline) sshTarget(s *protocol.Session) (ssh.Target, error) {
	if p.cfg.SSHHost == nil {
		return ssh.Target{}, errors.New("no SSH host CA: this interlockd cannot terminate SSH")
	}
	t := p.cfg.Policy.Current().Target(s.Target)
	if t == nil {
		return ssh.Target{}, fmt.Errorf("target %q is no longer in the policy", s.Target)
	}
	key, err := p.cfg.SSHHost(append(slices.Clone(t.Names), s.Dst.Addr().Unmap().String()))
	if err != nil {
		return ssh.Target{}, fmt.Errorf("ssh host certificate: %w", err)
	}
	return ssh.Target{HostKey: key, User: t.User, KnownHosts: t.KnownHosts}, nil
}
