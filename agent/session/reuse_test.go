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
		if pk, _ := s.take(other); pk != nil {
			t.Fatalf("take(%+v) got a connection parked under %+v", other, k)
		}
	}
	if pk, _ := s.take(k); pk != b {
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

// A connection being reset to be parked is waited for: take says what
// will be closed once it is parked (or given up), and nothing once none
// is being reset.
func TestResetServersWaitedFor(t *testing.T) {
	var s servers
	k := serverKey{identity: "ci", target: &policy.Target{Name: "db"}, key: "postgres"}
	if pk, settled := s.take(k); pk != nil || settled != nil {
		t.Fatal("take with nothing parked or being reset")
	}
	s.reset(k)
	s.reset(k)
	_, first := s.take(k)
	if first == nil {
		t.Fatal("take does not say a connection is being reset")
	}
	pk := &parked{k: k, conn: &closer{}}
	go func() {
		s.put(pk, 2, time.Hour, func(*parked) {})
		s.settle(k)
	}()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("not woken when the connection was parked")
	}
	if got, _ := s.take(k); got != pk {
		t.Fatal("woken, but the connection parked is not there")
	}
	// The second reset is still going: waited for anew.
	_, second := s.take(k)
	if second == nil || second == first {
		t.Fatal("the second reset is not waited for")
	}
	s.settle(k) // given up
	select {
	case <-second:
	default:
		t.Fatal("a reset given up wakes nobody")
	}
	if pk, settled := s.take(k); pk != nil || settled != nil {
		t.Fatal("still waiting once every reset settled")
	}
}
