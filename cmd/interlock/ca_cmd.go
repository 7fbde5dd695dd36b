package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

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
directory; its certificate is published beside the control socket, alone and
in a bundle with the system roots, and interlock exec points the runtimes'
CA variables at them. install adds it to the host's trust store.`,
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
	var remove bool
	install := &cobra.Command{
		Use:   "install [--remove]",
		Short: "Add the CA to the host's trust store (or remove it)",
		Long: `install writes the CA certificate to ` + hostTrustDir + `
and runs update-ca-certificates (Debian and Ubuntu), so every program on the
host trusts it, inside interlock exec or not. Programs with their own store
(Java, Python's certifi, Node's built-in roots) still need the variables
interlock exec sets, or their own import. After interlock ca rotate, run it
again. --remove takes the certificate out. Needs root.`,
		Example: `  sudo interlock ca install
  sudo interlock ca install --remove`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if remove {
				return caUninstall(cmd.Context(), hostTrustDir, a.stdout)
			}
			return caInstall(cmd.Context(), a.client(), stateDir, hostTrustDir, a.stdout)
		},
	}
	install.Flags().BoolVar(&remove, "remove", false, "remove the certificate from the trust store")
	install.Flags().StringVar(&stateDir, "state-dir", "/var/lib/interlock", "state directory, read when the daemon is not running")
	cmd.AddCommand(export, rotate, install)
	return cmd
}

const caUsage = "usage: interlock ca export [--state-dir DIR] | ca rotate | ca install [--remove]"

// hostTrustDir is where Debian's update-ca-certificates takes local
// authorities from (files ending in .crt).
const hostTrustDir = "/usr/local/share/ca-certificates"

// hostTrustFile is Interlock's file in hostTrustDir.
const hostTrustFile = "interlock.crt"

// updateCACertificates is the command that rebuilds the host's trust store
// from hostTrustDir; a variable so tests need not rebuild the real one.
var updateCACertificates = []string{"update-ca-certificates"}

// caInstall adds Interlock's CA to the host's trust store.
func caInstall(ctx context.Context, c *control.Client, stateDir, dir string, stdout io.Writer) error {
	var pem bytes.Buffer
	if err := caExport(ctx, c, stateDir, &pem); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, hostTrustFile)
	if err := os.WriteFile(path, pem.Bytes(), 0o644); err != nil {
		return fmt.Errorf("install ca certificate: %w", err)
	}
	if err := updateTrustStore(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed %s; the host trusts Interlock's CA (run again after interlock ca rotate)\n", path)
	return nil
}

// caUninstall removes Interlock's CA from the host's trust store.
func caUninstall(ctx context.Context, dir string, stdout io.Writer) error {
	path := filepath.Join(dir, hostTrustFile)
	if err := os.Remove(path); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stdout, "%s is not installed\n", path)
		return nil
	} else if err != nil {
		return fmt.Errorf("remove ca certificate: %w", err)
	}
	// update-ca-certificates drops the links of files no longer there.
	if err := updateTrustStore(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed %s\n", path)
	return nil
}

func updateTrustStore(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, updateCACertificates[0], updateCACertificates[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(updateCACertificates, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

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

// caEnv returns env with the runtimes' CA variables pointing at what
// interlockd publishes (see caVars), so clients verify the certificates
// interlockd presents, intercepted HTTPS included, with no flag of their own.
func caEnv(ctx context.Context, c *control.Client, env []string, stderr io.Writer) ([]string, error) {
	var info control.CAInfo
	if err := c.Call(ctx, "/v1/ca", nil, &info); err != nil {
		return nil, fmt.Errorf("get certificate authority: %w", err)
	}
	env, replaced := withCAVars(env, caVars(info.Path, info.Bundle))
	for _, kv := range replaced {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(stderr, "interlock: %s was %s; it now names Interlock's CA (with the system roots); --no-ca-env keeps yours\n", k, v)
	}
	return env, nil
}

// caVars are the variables that point the common runtimes at Interlock's
// CA, given the certificate alone (cert) and the bundle of the system roots
// plus the certificate (bundle). Each takes the file its runtime needs:
// Node adds NODE_EXTRA_CA_CERTS to its own roots, libpq trusts only
// PGSSLROOTCERT for verify-full, and the others replace their roots with
// the file, so they get the bundle. Go reads SSL_CERT_FILE too.
func caVars(cert, bundle string) []string {
	return []string{
		"PGSSLROOTCERT=" + cert,
		"SSL_CERT_FILE=" + bundle,      // OpenSSL, Go, Ruby
		"REQUESTS_CA_BUNDLE=" + bundle, // Python requests (instead of certifi)
		"CURL_CA_BUNDLE=" + bundle,     // curl
		"NODE_EXTRA_CA_CERTS=" + cert,  // Node: added to its built-in roots
		"GIT_SSL_CAINFO=" + bundle,     // git over HTTPS
		"AWS_CA_BUNDLE=" + bundle,      // AWS CLI and SDKs (instead of certifi)
	}
}

// withCAVars sets vars ("KEY=VALUE") in env. PGSSLROOTCERT is kept when env
// sets it (a verify-full client with a CA of its own). The others are
// replaced: images and CI runners commonly point them at the system roots,
// which the bundle holds already, and a value kept would leave intercepted
// HTTPS unverifiable. It returns the replaced "KEY=OLD" that named something
// other than a system trust store, which the caller may want to hear about.
func withCAVars(env, vars []string) ([]string, []string) {
	want := map[string]string{}
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		want[k] = v
	}
	var out, replaced []string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, ours := want[k]; !ours {
			out = append(out, kv)
			continue
		}
		if k == "PGSSLROOTCERT" && v != "" {
			out = append(out, kv)
			delete(want, k)
			continue
		}
		if v != "" && !ca.IsSystemRoots(v) {
			replaced = append(replaced, kv)
		}
	}
	for _, kv := range vars {
		if k, _, _ := strings.Cut(kv, "="); want[k] != "" { // still wanted
			out = append(out, kv)
		}
	}
	return out, replaced
}
