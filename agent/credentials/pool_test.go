package credentials

import (
	"context"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/vaultcompat"
	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/jackc/pgx/v5"
)

// waitPoolFull waits until target's pool holds its configured size.
func waitPoolFull(tb testing.TB, m *Manager, target string) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m.mu.Lock()
		p := m.pools[target]
		m.mu.Unlock()
		if p != nil && len(p.ch) == p.size {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("pool for %s not refilled", target)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func countIssued(t *testing.T, pg *testenv.Postgres) string {
	return pg.Psql(t, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'interlock_%'")
}

func testPoolHandsOutEachCredentialOnce(t *testing.T, pg *testenv.Postgres) {
	m := embeddedManager(t, pg, t.TempDir(), map[string]int{"orders-db": 2})
	ctx := t.Context()
	req := Request{Target: "orders-db", Session: "s1", Identity: "bot"}
	first, err := m.Issue(ctx, req) // a miss: starts the pool
	if err != nil {
		t.Fatal(err)
	}
	waitPoolFull(t, m, "orders-db")
	if got := countIssued(t, pg); got != "3" {
		t.Errorf("%s roles with one session and a pool of 2, want 3", got)
	}
	seen := map[string]bool{first.Credential().Username: true}
	for i := range 4 {
		start := time.Now()
		l, err := m.Issue(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		u := l.Credential().Username
		if seen[u] {
			t.Fatalf("credential %s handed out twice", u)
		}
		seen[u] = true
		conn, _, err := login(ctx, pg, l.Credential())
		if err != nil {
			t.Fatalf("pooled credential %d: %v", i, err)
		}
		conn.Close(ctx)
		if took > 5*time.Millisecond {
			t.Logf("pooled Issue took %v", took)
		}
		if err := l.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if roleExists(t, pg, u) {
			t.Fatalf("pooled role %s survived Close", u)
		}
		waitPoolFull(t, m, "orders-db")
	}
	// Another template bypasses the pool.
	other, err := m.Issue(ctx, Request{Ref: Ref{Template: "agent_writer"}, Target: "orders-db"})
	if err != nil {
		t.Fatal(err)
	}
	if got := pg.Psql(t, "SELECT pg_has_role('"+other.Credential().Username+"', 'agent_writer', 'MEMBER')"); got != "t" {
		t.Error("a request for another template got a pooled credential")
	}
	first.Close(ctx)
	other.Close(ctx)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if got := countIssued(t, pg); got != "0" {
		t.Errorf("%s roles left after Manager.Close drained the pool", got)
	}
}

// BenchmarkIssue measures what issuing a credential adds to a session's
// connect, for each source, with and without a pool. With a pool the
// benchmark waits (timer stopped) for the refill between sessions: it
// measures a connect that finds the pool warm.
func BenchmarkIssue(b *testing.B) {
	pg := testenv.StartPostgres(b)
	pg.Psql(b, "CREATE ROLE agent_readonly NOLOGIN")
	srv, err := vaultcompat.New(vaultcompat.Config{Database: &vaultcompat.Database{AdminDSN: pg.AdminDSN(),
		Roles: map[string]vaultcompat.DatabaseRole{"readonly": {Grants: []string{"agent_readonly"}}}},
		KV:  map[string]map[string]any{"ci/forge": {"token": "kv-forge-token-0123456789"}},
		AWS: &vaultcompat.AWS{Roles: map[string]vaultcompat.AWSRole{"s3-rw": {}}, Keys: &keyStore{keys: map[string]string{}}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start("127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	// The http targets' kinds beside the databases': a KV read (nothing
	// to revoke) and an AWS key pair (a lease).
	sources := map[string]Ref{
		"embedded":  {Source: "embedded", Template: "agent_readonly"},
		"vault":     {Source: "vault", Kind: "database", Role: "readonly"},
		"vault-kv":  {Source: "vault", Kind: "kv", Path: "secret/data/ci/forge", Field: "token"},
		"vault-aws": {Source: "vault", Kind: "aws", Role: "s3-rw"},
	}
	for _, name := range []string{"embedded", "vault", "vault-kv", "vault-aws"} {
		for _, pooled := range []bool{false, true} {
			label := name + "/fresh"
			if pooled {
				label = name + "/pooled"
			}
			b.Run(label, func(b *testing.B) {
				cfg := Config{
					Embedded: map[string]EmbeddedConfig{"embedded": {AdminDSN: pg.AdminDSN()}},
					Vault:    &VaultConfig{Address: srv.URL(), Auth: VaultAuth{Method: "token", Token: srv.RootToken()}},
				}
				if pooled {
					cfg.Pool = map[string]int{"db": 2}
				}
				m, err := NewManager(cfg, b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				defer m.Close()
				ctx := context.Background()
				req := Request{Ref: sources[name], Target: "db", Session: "bench"}
				warm, err := m.Issue(ctx, req) // log in, dial the admin connection, start the pool
				if err != nil {
					b.Fatal(err)
				}
				warm.Close(ctx)
				if pooled {
					waitPoolFull(b, m, "db")
				}
				b.ResetTimer()
				for b.Loop() {
					l, err := m.Issue(ctx, req)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					l.Close(ctx)
					if pooled {
						waitPoolFull(b, m, "db")
					}
					b.StartTimer()
				}
			})
		}
	}
}

// BenchmarkConnect puts the figures in proportion: a login with a
// standing password against issue-then-login.
func BenchmarkConnect(b *testing.B) {
	pg := testenv.StartPostgres(b)
	pg.Psql(b, "CREATE ROLE agent_readonly NOLOGIN")
	ctx := context.Background()
	b.Run("standing-password", func(b *testing.B) {
		for b.Loop() {
			c, err := pgx.Connect(ctx, pg.AdminDSN())
			if err != nil {
				b.Fatal(err)
			}
			c.Close(ctx)
		}
	})
	for _, pooled := range []bool{false, true} {
		label := "embedded-fresh"
		cfg := Config{Embedded: map[string]EmbeddedConfig{"embedded": {AdminDSN: pg.AdminDSN(), Template: "agent_readonly"}}}
		if pooled {
			label = "embedded-pooled"
			cfg.Pool = map[string]int{"db": 2}
		}
		b.Run(label, func(b *testing.B) {
			m, err := NewManager(cfg, b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			req := Request{Target: "db"}
			warm, err := m.Issue(ctx, req)
			if err != nil {
				b.Fatal(err)
			}
			warm.Close(ctx)
			if pooled {
				waitPoolFull(b, m, "db")
			}
			b.ResetTimer()
			for b.Loop() {
				l, err := m.Issue(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				cred := l.Credential()
				c, err := pgx.Connect(ctx, pg.DSN(cred.Username, cred.Password, "postgres"))
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				c.Close(ctx)
				l.Close(ctx)
				if pooled {
					waitPoolFull(b, m, "db")
				}
				b.StartTimer()
			}
		})
	}
}
