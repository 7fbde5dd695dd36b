package credentials

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
)

// keyStore is the account store of a test S3 server.
type keyStore struct {
	mu   sync.Mutex
	keys map[string]string
}

func (k *keyStore) AddKey(id, secret, _ string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keys[id] = secret
}

func (k *keyStore) RemoveKey(id string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.keys, id)
}

func (k *keyStore) has(id string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.keys[id]
	return ok
}

// TestVaultAWS: aws/creds and aws/sts keys are journaled leases: closing
// the lease deletes the key, and a key a crashed daemon left behind is
// deleted by the next start's Recover.
func TestVaultAWS(t *testing.T) {
	keys := &keyStore{keys: map[string]string{}}
	srv, err := vaultcompat.New(vaultcompat.Config{RootToken: "root-token", AWS: &vaultcompat.AWS{
		Roles: map[string]vaultcompat.AWSRole{"s3-rw": {DefaultTTL: time.Minute}}, Keys: keys}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	vc := tokenAuth(srv)
	m := vaultManager(t, vc)
	ctx := t.Context()
	l, err := m.Issue(ctx, Request{Ref: Ref{Source: "vault", Kind: "aws", Role: "s3-rw"}, Target: "s3", Session: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	c := l.Credential()
	if !strings.HasPrefix(c.Username, "AKIA") || len(c.Username) != 20 || len(c.Password) != 40 || !keys.has(c.Username) || c.Expires.IsZero() {
		t.Fatalf("aws/creds credential %+v", c)
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if keys.has(c.Username) {
		t.Error("the key outlived its lease")
	}
	l, err = m.Issue(ctx, Request{Ref: Ref{Source: "vault", Kind: "aws", Path: "aws/sts/s3-rw"}, Target: "s3", Session: "s2"})
	if err != nil {
		t.Fatal(err)
	}
	if c := l.Credential(); !strings.HasPrefix(c.Username, "ASIA") || c.Data["security_token"] == "" {
		t.Errorf("aws/sts credential %+v", c)
	}
	l.Close(ctx)
	for _, bad := range []Ref{{Source: "vault", Kind: "aws"}, {Source: "vault", Kind: "aws", Path: "aws/roles/x"}} {
		if err := m.CheckRef(bad); err == nil {
			t.Errorf("CheckRef(%+v) passed", bad)
		}
	}
	if _, err := m.Issue(ctx, Request{Ref: Ref{Source: "vault", Kind: "aws", Role: "nope"}, Target: "s3"}); err == nil || !strings.Contains(err.Error(), `role "nope" not found`) {
		t.Errorf("missing role: %v", err)
	}

	// A generic read of any path (a plugin's, here the AWS engine's) keeps
	// its fields and its lease.
	gen := Ref{Source: "vault", Kind: "generic", Path: "aws/sts/s3-rw", Field: "secret_key"}
	l, err = m.Issue(ctx, Request{Ref: gen, Target: "api", Session: "s4"})
	if err != nil {
		t.Fatal(err)
	}
	if c := l.Credential(); len(c.Password) != 40 || !keys.has(c.Data["access_key"]) || c.Data["security_token"] == "" {
		t.Errorf("generic credential %+v", c)
	} else {
		l.Close(ctx)
		if keys.has(c.Data["access_key"]) {
			t.Error("the generic lease was not revoked")
		}
	}
	gen.Field = "nope"
	if _, err := m.Issue(ctx, Request{Ref: gen, Target: "api"}); err == nil || !strings.Contains(err.Error(), `no field "nope"`) {
		t.Errorf("missing field: %v", err)
	}
	if len(srv.Leases()) != 0 {
		t.Errorf("leases left: %v", srv.Leases())
	}

	// A daemon that dies holding a key: the next start deletes it.
	dir := t.TempDir()
	crashed, err := NewManager(Config{Vault: &vc}, dir)
	if err != nil {
		t.Fatal(err)
	}
	l, err = crashed.Issue(ctx, Request{Ref: Ref{Source: "vault", Kind: "aws", Role: "s3-rw"}, Target: "s3", Session: "s3"})
	if err != nil {
		t.Fatal(err)
	}
	orphan := l.Credential().Username
	crashed.journal.close() // as a SIGKILL leaves it: nothing revoked
	crashed.cancel()
	next, err := NewManager(Config{Vault: &vc}, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if next.Outstanding() != 1 || !keys.has(orphan) {
		t.Fatalf("outstanding %d", next.Outstanding())
	}
	if err := next.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if keys.has(orphan) {
		t.Error("Recover left the orphaned key working")
	}
}
