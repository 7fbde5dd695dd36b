package daemon

import (
	"context"
	"slices"
	"testing"

	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/policy"
)

// TestCredentialWarnings: a pool or reuse entry that the policy leaves
// without effect is named, and one that works is not.
func TestCredentialWarnings(t *testing.T) {
	p, err := policy.Load(context.Background(), policy.Source{Name: "policy.yaml", Text: []byte(`version: 1
identities: [{name: ci}]
targets:
  - {name: appdb, protocol: postgres, addresses: [127.0.0.1/32], port: 5432}
  - {name: forge, protocol: http, hosts: [forge.test], port: 443, tls: passthrough}
`)}, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := credentials.Config{
		Pool:  map[string]int{"appdb": 4, "forge": 2, "apdb": 4},
		Reuse: map[string]credentials.ReuseConfig{"appdb": {Servers: 4}, "forge": {Servers: 4}, "appdb2": {Servers: 2}},
	}
	got := credentialWarnings(cfg, p)
	want := []string{
		`credentials.pool names target "apdb", which the policy does not have: nothing is issued ahead for it`,
		`credentials.reuse names target "appdb2", which the policy does not have: no server connection is kept for it`,
		`credentials.reuse names target "forge" of protocol "http": only postgres targets keep server connections between sessions`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%q\nwant\n%q", got, want)
	}
	if ws := credentialWarnings(credentials.Config{Pool: map[string]int{"appdb": 4}, Reuse: map[string]credentials.ReuseConfig{"appdb": {Servers: 4}}}, p); len(ws) != 0 {
		t.Errorf("warnings for entries that work: %q", ws)
	}
}
