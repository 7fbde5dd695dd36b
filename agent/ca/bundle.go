package ca

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// systemRootFiles are where Linux distributions keep their trust store as
// one PEM file, in the order crypto/x509 tries them (root_linux.go).
var systemRootFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian/Ubuntu/Gentoo etc.
	"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora/RHEL 6
	"/etc/ssl/ca-bundle.pem",                            // OpenSUSE
	"/etc/pki/tls/cacert.pem",                           // OpenELEC
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS/RHEL 7
	"/etc/ssl/cert.pem",                                 // Alpine Linux
}

// IsSystemRoots reports whether path is one of the distributions' trust
// store files, whose certificates the bundle holds already.
func IsSystemRoots(path string) bool {
	return slices.Contains(systemRootFiles, filepath.Clean(path))
}

// systemRoots returns the host's trust store as PEM: the file SSL_CERT_FILE
// names, as crypto/x509 reads it, or the first distribution file present.
// No file at all gives nil: the bundle then holds Interlock's CA alone,
// which is still what intercepted connections need.
func systemRoots() ([]byte, error) {
	files := systemRootFiles
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		files = []string{f}
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read system roots: %w", err)
		}
		return data, nil
	}
	return nil, nil
}

// bundle returns the system roots followed by certPEM: the file clients that
// take one CA file (curl, Python requests, git, OpenSSL's SSL_CERT_FILE)
// read, so trusting Interlock's CA does not cost them the public roots.
func bundle(certPEM []byte) ([]byte, error) {
	roots, err := systemRoots()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Write(roots)
	if len(roots) > 0 && roots[len(roots)-1] != '\n' {
		b.WriteByte('\n')
	}
	b.WriteString("# Interlock\n")
	b.Write(certPEM)
	return b.Bytes(), nil
}
