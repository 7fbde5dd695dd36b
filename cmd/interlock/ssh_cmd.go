package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/control"
)

func newSSHCmd(a *cli) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "ssh",
		Short: "Set up SSH clients for the sessions interlockd terminates",
		Long: `interlockd terminates the SSH sessions of tagged agents and presents host
certificates signed by Interlock's SSH host CA. A client trusts them with one
@cert-authority line in its known_hosts (or /etc/ssh/ssh_known_hosts).`,
	})
	knownHosts := &cobra.Command{
		Use:   "known-hosts",
		Short: "Print the known_hosts line that trusts Interlock's SSH host CA",
		Long: `known-hosts prints "@cert-authority * ssh-ed25519 ..." from the running
interlockd. With it in known_hosts, ssh accepts interlockd for the hosts a
policy's ssh targets name, even where known_hosts also holds the real
server's key.`,
		Example: `  interlock ssh known-hosts >> /etc/ssh/ssh_known_hosts
  interlock ssh known-hosts >> ~/.ssh/known_hosts`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sshKnownHosts(cmd.Context(), a.client(), a.stdout)
		},
	}
	userCA := &cobra.Command{
		Use:   "user-ca",
		Short: "Print Interlock's SSH user CA, for a server's TrustedUserCAKeys",
		Long: `user-ca prints the public key of Interlock's SSH user CA from the running
interlockd. An ssh target with no credential block logs in with a certificate
from it, made for the session's own key and its login user, valid for five
minutes. A server trusts it with TrustedUserCAKeys.`,
		Example: `  interlock ssh user-ca > /etc/ssh/interlock_user_ca.pub
  echo 'TrustedUserCAKeys /etc/ssh/interlock_user_ca.pub' >> /etc/ssh/sshd_config`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var info control.SSHInfo
			if err := a.client().Call(cmd.Context(), "/v1/ssh", nil, &info); err != nil {
				return err
			}
			_, err := fmt.Fprintln(a.stdout, info.UserCA)
			return err
		},
	}
	cmd.AddCommand(knownHosts, userCA)
	return cmd
}

// sshKnownHosts prints the @cert-authority line of interlockd's SSH host
// CA.
func sshKnownHosts(ctx context.Context, c *control.Client, stdout io.Writer) error {
	var info control.SSHInfo
	if err := c.Call(ctx, "/v1/ssh", nil, &info); err != nil {
		return err
	}
	_, err := fmt.Fprintln(stdout, info.KnownHosts)
	return err
}
