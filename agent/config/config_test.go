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
		{"typo is an error", "listen_prot: 16000\n", `c.yaml:1:1: unknown key "listen_prot"; did you mean "listen_port"?`},
		{"nested typo", "credentials:\n  embedded:\n    pg: {admin_dsn_file: /x, tll: 5m}\n", `c.yaml:3:30: unknown key "tll"; did you mean "ttl"?`},
		{"wrong type", "listen_port: many\n", `c.yaml:1:14: expected a whole number from 0 to 65535, got "many"`},
		{"indentation error at its line", "socket: /x\napprovals:\n  web_listen: 127.0.0.1:1\n  webhook: http://h/\n reviewer_tokens: []\n", "c.yaml:5:2: invalid YAML"},
		{"metrics on loopback", "metrics_listen: 127.0.0.1:9464\n", ""},
		{"metrics beyond the host", "metrics_listen: 0.0.0.0:9464\n", `c.yaml:1:17: metrics_listen: "0.0.0.0:9464" must be a loopback address and port`},
		{"web page beyond the host", "socket: /s\napprovals:\n  web_listen: \"10.0.0.1:80\"\n", `c.yaml:3:15: approvals.web_listen: "10.0.0.1:80" must be`},
		{"console logs", "log_format: console\n", ""},
		{"unknown log format", "log_format: text\n", `c.yaml:1:13: log_format: "text" is neither json nor console`},
		{"unknown log level", "log_level: verbose\n", "log_level"},
		{"credentials block", "credentials:\n  static:\n    legacy: {username: app, password: x}\n", ""},
		{"dns resolvers", "dns_resolvers: [127.0.0.1:5353, \"[::1]:53\"]\n", ""},
		{"dns resolver without port", "dns_resolvers: [127.0.0.1]\n", `c.yaml:1:16: dns_resolvers: "127.0.0.1" is not an address and port`},
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
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.HasPrefix(err.Error(), "config: ") && !strings.HasPrefix(err.Error(), p) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
			}
		})
	}
}
