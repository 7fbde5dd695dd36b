package credentials

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// renewingSource is a backend whose credentials live ttl and renew by ttl
// until maxRenewals; with hang set, a renewal waits for its ctx to end.
type renewingSource struct {
	ttl         time.Duration
	maxRenewals int

	mu       sync.Mutex
	hang     bool
	renewals int
	inFlight chan struct{} // told when a hung renewal starts
	revoked  []string
}

func (s *renewingSource) issue(_ context.Context, _ Request, commit func(string) error) (grant, error) {
	if err := commit("h1"); err != nil {
		return grant{}, err
	}
	return grant{cred: Credential{Username: "u", Password: "p", Expires: time.Now().Add(s.ttl)}, handle: "h1", renewTTL: s.ttl}, nil
}

func (s *renewingSource) renew(ctx context.Context, _ string, ttl time.Duration) (time.Time, error) {
	s.mu.Lock()
	hang := s.hang
	s.renewals++
	n := s.renewals
	s.mu.Unlock()
	if hang {
		s.inFlight <- struct{}{}
		<-ctx.Done()
		return time.Time{}, ctx.Err()
	}
	if s.maxRenewals > 0 && n > s.maxRenewals {
		return time.Now(), nil // a maximum TTL reached: no longer extended
	}
	return time.Now().Add(ttl), nil
}

func (s *renewingSource) revoke(_ context.Context, handle string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.revoked = append(s.revoked, handle)
	return nil
}

func (s *renewingSource) count() (renewals, revoked int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.renewals, len(s.revoked)
}

func (s *renewingSource) checkRef(Ref) error                       { return nil }
func (s *renewingSource) checkAccess(context.Context, []Ref) error { return nil }
func (s *renewingSource) close() error                             { return nil }

func renewingManager(t *testing.T, s *renewingSource) *Manager {
	m, err := NewManager(Config{}, filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	m.backends["renewing"], m.kinds["renewing"] = s, "renewing"
	t.Cleanup(func() { m.Close() })
	return m
}

// TestLeaseRenewals: a lease renews at half its remaining life, stops when
// renewal no longer extends it, and closing it (or the Manager) ends its
// renewals at once, a renewal under way included.
func TestLeaseRenewals(t *testing.T) {
	ref := Ref{Source: "renewing"}
	t.Run("renews while open", func(t *testing.T) {
		s := &renewingSource{ttl: 200 * time.Millisecond}
		m := renewingManager(t, s)
		l, err := m.Issue(t.Context(), Request{Ref: ref, Target: "db"})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond)
		if n, _ := s.count(); n < 3 {
			t.Errorf("%d renewals in 3.5 TTLs", n)
		}
		if exp := l.Credential().Expires; time.Until(exp) <= 0 {
			t.Errorf("expired at %v although renewed", exp)
		}
		if err := l.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		n, revoked := s.count()
		time.Sleep(300 * time.Millisecond)
		if again, _ := s.count(); again != n || revoked != 1 {
			t.Errorf("after Close: %d renewals then %d, %d revoked", n, again, revoked)
		}
	})
	t.Run("ends at the maximum", func(t *testing.T) {
		s := &renewingSource{ttl: 100 * time.Millisecond, maxRenewals: 2}
		m := renewingManager(t, s)
		l, err := m.Issue(t.Context(), Request{Ref: ref, Target: "db"})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if n, _ := s.count(); n != 3 {
			t.Errorf("%d renewals, want 3 (the last one did not extend)", n)
		}
		if err := l.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
	for _, by := range []string{"lease", "manager"} {
		t.Run("closed by the "+by+" during a renewal", func(t *testing.T) {
			s := &renewingSource{ttl: 100 * time.Millisecond, hang: true, inFlight: make(chan struct{}, 1)}
			m := renewingManager(t, s)
			l, err := m.Issue(t.Context(), Request{Ref: ref, Target: "db"})
			if err != nil {
				t.Fatal(err)
			}
			<-s.inFlight
			start := time.Now()
			if by == "lease" {
				err = l.Close(t.Context())
			} else {
				err = m.Close()
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Close waited %v for the renewal under way", d)
			}
			if n, revoked := s.count(); n != 1 || revoked != 1 {
				t.Errorf("%d renewals, %d revoked", n, revoked)
			}
		})
	}
}
