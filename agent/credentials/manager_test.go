package credentials

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestStaticSource(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "pw")
	os.WriteFile(pwFile, []byte("s3cret\n"), 0o600)
	m, err := NewManager(Config{Static: map[string]StaticConfig{
		"legacy": {Username: "app", PasswordFile: pwFile},
	}}, filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	l, err := m.Issue(t.Context(), Request{Target: "legacy-db"})
	if err != nil {
		t.Fatal(err)
	}
	if c := l.Credential(); c.Username != "app" || c.Password != "s3cret" || !c.Expires.IsZero() {
		t.Errorf("credential %+v", c)
	}
	if err := l.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The kind names the only static source.
	if l, err := m.Issue(t.Context(), Request{Ref: Ref{Source: "static"}}); err != nil || l.Credential().Username != "app" {
		t.Errorf("source by kind: %v", err)
	}
	// A token for an HTTP API is a password without a user name.
	tok, err := NewManager(Config{Static: map[string]StaticConfig{"forge-token": {PasswordFile: pwFile}}}, filepath.Join(dir, "state2"))
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	if l, err := tok.Issue(t.Context(), Request{Ref: Ref{Source: "forge-token"}}); err != nil || l.Credential().Password != "s3cret" {
		t.Errorf("token source: %v", err)
	}
	_, err = m.Issue(t.Context(), Request{Ref: Ref{Source: "vault"}, Target: "x"})
	if !errors.Is(err, ErrNotIssued) || !errors.Is(err, ErrUnconfigured) || !strings.Contains(err.Error(), `source "vault" is not one of [legacy]`) {
		t.Errorf("unknown source: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for name, cfg := range map[string]Config{
		"static with nothing": {Static: map[string]StaticConfig{"a": {}}},
		"embedded both dsns":  {Embedded: map[string]EmbeddedConfig{"a": {AdminDSN: "x", AdminDSNFile: "y"}}},
		"duplicate names": {Static: map[string]StaticConfig{"a": {Username: "u"}},
			Embedded: map[string]EmbeddedConfig{"a": {AdminDSN: "x"}}},
		"unknown default": {Default: "b", Static: map[string]StaticConfig{"a": {Username: "u"}}},
		"vault no auth":   {Vault: &VaultConfig{Address: "http://127.0.0.1:1"}},
		"pool too big":    {Pool: map[string]int{"t": 1000}},
	} {
		if _, err := NewManager(cfg, t.TempDir()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestJournalTornLastLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, journalName)
	content := `{"op":"issue","id":"a","source":"embedded","handle":"r_a"}
{"op":"issue","id":"b","source":"embedded","handle":"r_b"}
{"op":"revoke","id":"a"}
{"op":"issue","id":"c","source":"embedded","han`
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	j, out, err := openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 1 || out[0].Handle != "r_b" {
		t.Fatalf("outstanding %+v, want only r_b", out)
	}
	if err := j.append(record{Op: opRevoke, ID: "b"}); err != nil {
		t.Fatal(err)
	}
	// A second daemon on the same state dir is refused.
	if _, _, err := openJournal(dir); err == nil {
		t.Error("second openJournal on a locked state dir succeeded")
	}
	j.close()
	_, out, err = openJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 0 {
		t.Errorf("outstanding after revoke: %+v", out)
	}
}

func TestJournalCorruptMiddleLine(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, journalName), []byte("{\"op\":\"issue\"\ngarbage\n"), 0o600)
	if _, _, err := openJournal(dir); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("corrupt journal: %v", err)
	}
}

// BenchmarkJournalAppend is the fsync each issued lease pays.
func BenchmarkJournalAppend(b *testing.B) {
	j, _, err := openJournal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer j.close()
	for b.Loop() {
		if err := j.append(record{Op: opIssue, ID: "x", Source: "embedded", Handle: "interlock_bench"}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestExampleConfig keeps the documented daemon config block parseable and
// valid.
func TestExampleConfig(t *testing.T) {
	b, err := os.ReadFile("testdata/daemon-credentials.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Credentials Config `yaml:"credentials"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	c := doc.Credentials
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if c.Embedded["local"].TTL != 15*time.Minute || c.Pool["orders-db"] != 2 || c.Vault.Auth.Method != "approle" {
		t.Errorf("parsed %+v", c)
	}
	var ref Ref
	if err := yaml.Unmarshal([]byte("{source: vault, kind: database, role: readonly, ttl: 2m}"), &ref); err != nil {
		t.Fatal(err)
	}
	if !sameRef(ref, Ref{Source: "vault", Kind: "database", Role: "readonly", TTL: 2 * time.Minute}) {
		t.Errorf("ref %+v", ref)
	}
}

// FuzzReadJournal: whatever a crash or a disk leaves in the journal, reading
// it returns records or an error, never a panic.
func FuzzReadJournal(f *testing.F) {
	f.Add([]byte("{\"op\":\"issue\",\"id\":\"a\",\"source\":\"embedded\",\"handle\":\"r\"}\n{\"op\":\"revoke\",\"id\":\"a\"}\n"))
	f.Add([]byte("{\"op\":\"issue\",\"id\":\"a\"}\n{\"op\":\"iss"))
	f.Add([]byte("\n\n{}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), journalName)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		recs, err := readJournal(path)
		if err != nil {
			return
		}
		for _, r := range recs {
			if r.Op != opIssue {
				t.Fatalf("outstanding record with op %q", r.Op)
			}
		}
	})
}

// TestCheckRef: what a target's credential lacks is found without touching
// the network, with the missing key named.
func TestCheckRef(t *testing.T) {
	m, err := NewManager(Config{
		Embedded: map[string]EmbeddedConfig{"pg": {AdminDSN: "postgres://a@127.0.0.1:1/postgres"}},
		Vault:    &VaultConfig{Address: "http://127.0.0.1:1", Auth: VaultAuth{Method: "token", Token: "t"}},
	}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tc := range []struct {
		ref  Ref
		want string // "" when the ref is complete
	}{
		{Ref{Source: "pg"}, `credential source "pg": no template role: set template in the target's credential block or credentials.embedded.pg.template`},
		{Ref{Source: "embedded", Template: "agent_readonly"}, ""},
		{Ref{Source: "vault"}, "vault database credential: role is required"},
		{Ref{Source: "vault", Kind: "ssh"}, "vault ssh credential: role is required"},
		{Ref{Source: "vault", Kind: "kv"}, "vault kv credential: path is required"},
		{Ref{Source: "vault", Kind: "kv", Path: "secret/data/app"}, ""},
		{Ref{Source: "vault", Kind: "aws", Role: "x"}, ""},
		{Ref{Source: "vault", Kind: "aws", Path: "aws/roles/x"}, `path "aws/roles/x": want aws/creds/ROLE or aws/sts/ROLE`},
		{Ref{Source: "vault", Kind: "generic"}, "vault generic credential: path is required"},
		{Ref{Source: "vault", Kind: "nomad", Role: "x"}, `kind "nomad": want database, ssh, kv, aws or generic`},
		{Ref{Source: "legacy"}, `no credential source is configured for it: source "legacy" is not one of [pg vault]`},
		{Ref{}, "no credential source is configured for it (none named, and no default)"},
	} {
		err := m.CheckRef(tc.ref)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckRef(%+v) = %v, want %q", tc.ref, err, tc.want)
		}
	}
}
