package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

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
	var file string
	setup := &cobra.Command{
		Use:   "setup [--file PATH]",
		Short: "Trust Interlock's SSH host CA for every user of this host",
		Long: `setup adds the @cert-authority line of interlock ssh known-hosts to the
system-wide known_hosts (/etc/ssh/ssh_known_hosts), once: running it again
changes nothing, and a line of an earlier CA (before the state directory was
made anew) is replaced.`,
		Example: `  sudo interlock ssh setup`,
		Args:    usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var info control.SSHInfo
			if err := a.client().Call(cmd.Context(), "/v1/ssh", nil, &info); err != nil {
				return err
			}
			added, err := trustHostCA(file, info.KnownHosts)
			if err != nil {
				return err
			}
			if added {
				fmt.Fprintf(a.stdout, "added Interlock's SSH host CA to %s\n", file)
			} else {
				fmt.Fprintf(a.stdout, "%s already trusts Interlock's SSH host CA\n", file)
			}
			return nil
		},
	}
	setup.Flags().StringVar(&file, "file", "/etc/ssh/ssh_known_hosts", "the known_hosts file to add the line to")
	cmd.AddCommand(knownHosts, userCA, setup)
	return cmd
}

// trustHostCA makes file hold line, the CA's @cert-authority line, once:
// it keeps every other line, drops Interlock's lines of other CAs (they end
// in " interlock"), and reports whether it changed the file.
func trustHostCA(file, line string) (bool, error) {
	data, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if l == line {
			return false, nil
		}
		if l == "" && len(keep) == 0 {
			continue
		}
		if strings.HasPrefix(l, "@cert-authority ") && strings.HasSuffix(l, " interlock") {
			continue
		}
		keep = append(keep, l)
	}
	keep = append(keep, line)
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return false, err
	}
	return true, os.WriteFile(file, []byte(strings.Join(keep, "\n")+"\n"), 0o644)
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
