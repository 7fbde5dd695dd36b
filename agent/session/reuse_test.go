package session

import (
	"testing"
	"time"

	"github.com/interlock-dev/interlock/policy"
)

// closer stands for a parked connection; servers never closes one itself.
type closer struct{}

func (closer) Close() error { return nil }

// Parked connections are kept per identity, target and key, at most max
// of a key, handed out last parked first, expired after their idle time
// unless taken, and all given back at close.
func TestParkedServers(t *testing.T) {
	var s servers
	db := &policy.Target{Name: "db"}
	k := serverKey{identity: "ci", target: db, key: "postgres"}
	never := func(*parked) { t.Error("expired too early") }
	a, b, c := &parked{k: k, conn: &closer{}}, &parked{k: k, conn: &closer{}}, &parked{k: k, conn: &closer{}}
	if !s.put(a, 2, time.Hour, never) || !s.put(b, 2, time.Hour, never) {
		t.Fatal("put refused below max")
	}
	if s.put(c, 2, time.Hour, never) {
		t.Fatal("put accepted a third connection with max 2")
	}
	for _, other := range []serverKey{
		{identity: "nightly", target: db, key: "postgres"},
		{identity: "ci", target: &policy.Target{Name: "db"}, key: "postgres"}, // the same name, reloaded
		{identity: "ci", target: db, key: "other"},
	} {
		if pk := s.take(other); pk != nil {
			t.Fatalf("take(%+v) got a connection parked under %+v", other, k)
		}
	}
	if pk := s.take(k); pk != b {
		t.Fatal("take did not return the connection parked last")
	}

	expired := make(chan *parked, 1)
	d := &parked{k: k, conn: &closer{}}
	if !s.put(d, 2, 10*time.Millisecond, func(pk *parked) { expired <- pk }) {
		t.Fatal("put refused")
	}
	select {
	case pk := <-expired:
		if pk != d || !s.remove(d) {
			t.Fatal("expired the wrong connection, or one no longer parked")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not expired")
	}
	if s.remove(d) {
		t.Fatal("removed twice")
	}

	all := s.closeAll()
	if len(all) != 1 || all[0] != a {
		t.Fatalf("closeAll returned %d connections, want the one left parked", len(all))
	}
	if s.put(c, 2, time.Hour, never) {
		t.Fatal("put accepted after close")
	}
}
