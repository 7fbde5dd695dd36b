package config

import (
	"strings"
	"testing"
	"time"
)

func TestLimits(t *testing.T) {
	cfg, err := loadYAML(t, `limits:
  sessions: 10
  session_buffer: 2MiB
  identities:
    ci-runner: {sessions: 40, connections: 4096, identity_buffer: 128 MiB}
    batch: {sessions: 0, message_timeout: 2m}
`)
	if err != nil {
		t.Fatal(err)
	}
	def := DefaultLimits()
	if got := cfg.Limits.For("demo"); got.Sessions != 10 || got.Connections != def.Connections || got.SessionBuffer != 2<<20 ||
		got.IdentityBuffer != def.IdentityBuffer || got.MessageTimeout != def.MessageTimeout {
		t.Errorf("limits of an identity without overrides: %+v", got)
	}
	if got := cfg.Limits.For("ci-runner"); got.Sessions != 40 || got.Connections != 4096 || got.IdentityBuffer != 128<<20 || got.SessionBuffer != 2<<20 {
		t.Errorf("ci-runner's limits: %+v", got)
	}
	if got := cfg.Limits.For("batch"); got.Sessions != 0 || got.MessageTimeout != 2*time.Minute {
		t.Errorf("batch's limits: %+v", got)
	}
	if cfg, err := loadYAML(t, "listen_port: 16000\n"); err != nil || cfg.Limits.For("x").Sessions != def.Sessions {
		t.Errorf("defaults without a limits block: %+v, %v", cfg.Limits, err)
	}
	for name, tc := range map[string]struct{ yaml, err string }{
		"negative sessions":          {"limits: {sessions: -1}\n", "limits.sessions"},
		"negative connections":       {"limits: {identities: {ci: {connections: -1}}}\n", "limits.identities.ci.connections"},
		"size without a number":      {"limits: {session_buffer: lots}\n", "not a size"},
		"tiny session buffer":        {"limits: {session_buffer: 1KiB}\n", "below 64KiB"},
		"identity below session":     {"limits: {session_buffer: 8MiB, identity_buffer: 4MiB}\n", "smaller than session_buffer"},
		"override breaks the rule":   {"limits: {identities: {ci: {identity_buffer: 1MiB}}}\n", "limits.identities.ci"},
		"negative timeout":           {"limits: {message_timeout: -1s}\n", "c.yaml:1:27: \"-1s\" is not a duration"},
		"unknown key in an override": {"limits: {identities: {ci: {sesions: 3}}}\n", "sesions"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := loadYAML(t, tc.yaml)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
			}
		})
	}
}
