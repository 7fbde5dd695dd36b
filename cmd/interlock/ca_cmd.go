package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/control"
)

func newCACmd(a *cli) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "ca",
		Short: "Print or replace Interlock's certificate authority",
		Long: `Interlock's certificate authority signs the certificates interlockd presents to
agents (PostgreSQL over TLS, HTTPS it intercepts). Its key stays in the state
directory; its certificate is published beside the control socket, and
interlock exec points PGSSLROOTCERT at it.`,
	})
	var stateDir string
	export := &cobra.Command{
		Use:   "export",
		Short: "Print the CA certificate (PEM)",
		Long: `export prints the certificate agents must trust, from the running interlockd,
or, when it is down, from the state directory (which takes the daemon user's
rights to read).`,
		Example: `  interlock ca export > /usr/local/share/ca-certificates/interlock.crt
  interlock ca export --state-dir /var/lib/interlock`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return caExport(cmd.Context(), a.client(), stateDir, a.stdout)
		},
	}
	export.Flags().StringVar(&stateDir, "state-dir", "/var/lib/interlock", "state directory, read when the daemon is not running")
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Replace the CA; new certificates are signed by the new one",
		Long: `rotate makes interlockd create a new authority and sign every new certificate
with it. Clients that copied the old certificate must fetch it again.`,
		Example: `  interlock ca rotate && interlock ca export > interlock.crt`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 0 {
				return errors.New(caUsage)
			}
			return caRotate(cmd.Context(), a.client(), a.stdout)
		},
	}
	cmd.AddCommand(export, rotate)
	return cmd
}

const caUsage = "usage: interlock ca export [--state-dir DIR] | ca rotate"

// caExport prints Interlock's certificate authority.
func caExport(ctx context.Context, c *control.Client, stateDir string, stdout io.Writer) error {
	var info control.CAInfo
	err := c.Call(ctx, "/v1/ca", nil, &info)
	if errors.Is(err, control.ErrNotRunning) {
		// The authority outlives the daemon; root reads it directly.
		pem, err := ca.ReadCertificate(ca.Dir(stateDir))
		if err != nil {
			return err
		}
		_, err = stdout.Write(pem)
		return err
	}
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, info.PEM)
	return err
}

// caRotate replaces Interlock's certificate authority.
func caRotate(ctx context.Context, c *control.Client, stdout io.Writer) error {
	var info control.CAInfo
	if err := c.Call(ctx, "/v1/ca/rotate", struct{}{}, &info); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "new certificate authority %q (sha256 %s), published at %s\n", info.Subject, info.Fingerprint, info.Path)
	fmt.Fprintln(stdout, "clients that copied the old certificate must fetch it again (interlock ca export)")
	return nil
}

// caEnv returns env with PGSSLROOTCERT pointing at Interlock's certificate
// authority, so a client asking for sslmode=verify-full can verify the
// certificate interlockd presents. A value the caller set is kept.
func caEnv(ctx context.Context, c *control.Client, env []string) ([]string, error) {
	if os.Getenv("PGSSLROOTCERT") != "" {
		return env, nil
	}
	var info control.CAInfo
	if err := c.Call(ctx, "/v1/ca", nil, &info); err != nil {
		return nil, fmt.Errorf("get certificate authority: %w", err)
	}
	return append(env, "PGSSLROOTCERT="+info.Path), nil
}
