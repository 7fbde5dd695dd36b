package daemon

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/control"
)

// openCA loads the authority, creating it at first start. Its certificate,
// alone and in a bundle with the system roots, is published beside the
// control socket, whose directory every local user can read, so agents of
// any user can trust it.
func (d *Daemon) openCA() error {
	host := d.cfg.Host
	if host == "" {
		host, _ = os.Hostname()
	}
	a, err := ca.Open(ca.Config{
		Dir:          ca.Dir(d.cfg.StateDir),
		PublicCert:   filepath.Join(filepath.Dir(d.cfg.Socket), control.CACertFile),
		PublicBundle: filepath.Join(filepath.Dir(d.cfg.Socket), control.CABundleFile),
		Subject:      host,
	})
	if err != nil {
		// The socket's directory is named: a publishing error is about it,
		// and nothing else says the certificate goes there.
		return fmt.Errorf("open certificate authority (its certificate is published beside the control socket, in %s): %w", filepath.Dir(d.cfg.Socket), err)
	}
	d.ca = a
	// The SSH host and user CAs live beside it, created at first start too.
	if d.sshHost, err = ca.OpenSSHHost(ca.Dir(d.cfg.StateDir)); err != nil {
		return fmt.Errorf("open ssh host ca: %w", err)
	}
	if d.sshUser, err = ca.OpenSSHUser(ca.Dir(d.cfg.StateDir)); err != nil {
		return fmt.Errorf("open ssh user ca: %w", err)
	}
	return nil
}

func (d *Daemon) caInfo() control.CAInfo {
	c := d.ca.Certificate()
	return control.CAInfo{PEM: string(d.ca.CertificatePEM()), Path: d.ca.PublicCertPath(), Bundle: d.ca.PublicBundlePath(), Subject: c.Subject.CommonName,
		Fingerprint: ca.Fingerprint(c), NotAfter: c.NotAfter}
}

func (d *Daemon) handleCA(w http.ResponseWriter, r *http.Request) {
	control.WriteJSON(w, http.StatusOK, d.caInfo())
}

func (d *Daemon) handleCARotate(w http.ResponseWriter, r *http.Request) {
	old := ca.Fingerprint(d.ca.Certificate())
	if err := d.ca.Rotate(); err != nil {
		control.WriteError(w, http.StatusInternalServerError, "rotate ca: %v", err)
		return
	}
	info := d.caInfo()
	p, _ := control.PeerFrom(r.Context())
	d.chain.Record(audit.CARotated{UID: p.UID, PID: p.PID, Old: old, New: info.Fingerprint})
	control.WriteJSON(w, http.StatusOK, info)
}

// handleSSH answers what `interlock ssh known-hosts` and `interlock ssh
// user-ca` print.
func (d *Daemon) handleSSH(w http.ResponseWriter, r *http.Request) {
	control.WriteJSON(w, http.StatusOK, control.SSHInfo{KnownHosts: d.sshHost.KnownHostsLine(),
		Fingerprint: ssh.FingerprintSHA256(d.sshHost.PublicKey()),
		UserCA:      strings.TrimSpace(string(ssh.MarshalAuthorizedKey(d.sshUser.PublicKey()))) + " interlock-user-ca"})
}
