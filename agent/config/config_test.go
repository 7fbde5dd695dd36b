package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, err string
	}{
		{"defaults kept", "listen_port: 16000\n", ""},
		{"typo is an error", "listen_prot: 16000\n", "listen_prot"},
		{"metrics on loopback", "metrics_listen: 127.0.0.1:9464\n", ""},
		{"metrics beyond the host", "metrics_listen: 0.0.0.0:9464\n", "loopback"},
		{"web page beyond the host", "approvals: {web_listen: \"10.0.0.1:80\"}\n", "loopback"},
		{"credentials block", "credentials:\n  static:\n    legacy: {username: app, password: x}\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o600)
			cfg, err := Load(p)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.Socket != Default().Socket {
					t.Errorf("socket default lost: %q", cfg.Socket)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
			}
		})
	}
}
