package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/daemon"
)

const caUsage = "usage: interlock ca export [--state-dir DIR] | ca rotate"

// caCommand prints or replaces Interlock's certificate authority.
func caCommand(ctx context.Context, c *control.Client, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(caUsage)
	}
	switch args[0] {
	case "export":
		fs := flag.NewFlagSet("ca export", flag.ContinueOnError)
		fs.SetOutput(stderr)
		stateDir := fs.String("state-dir", "/var/lib/interlock", "state directory, read when the daemon is not running")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		var info daemon.CAInfo
		err := c.Call(ctx, "/v1/ca", nil, &info)
		if errors.Is(err, control.ErrNotRunning) {
			// The authority outlives the daemon; root reads it directly.
			pem, err := ca.ReadCertificate(daemon.CADir(*stateDir))
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
	case "rotate":
		if len(args) != 1 {
			return errors.New(caUsage)
		}
		var info daemon.CAInfo
		if err := c.Call(ctx, "/v1/ca/rotate", struct{}{}, &info); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "new certificate authority %q (sha256 %s), published at %s\n", info.Subject, info.Fingerprint, info.Path)
		fmt.Fprintln(stdout, "clients that copied the old certificate must fetch it again (interlock ca export)")
		return nil
	}
	return errors.New(caUsage)
}

// caEnv returns env with PGSSLROOTCERT pointing at Interlock's certificate
// authority, so a client asking for sslmode=verify-full can verify the
// certificate interlockd presents. A value the caller set is kept.
func caEnv(ctx context.Context, c *control.Client, env []string) ([]string, error) {
	if os.Getenv("PGSSLROOTCERT") != "" {
		return env, nil
	}
	var info daemon.CAInfo
	if err := c.Call(ctx, "/v1/ca", nil, &info); err != nil {
		return nil, fmt.Errorf("get certificate authority: %w", err)
	}
	return append(env, "PGSSLROOTCERT="+info.Path), nil
}
