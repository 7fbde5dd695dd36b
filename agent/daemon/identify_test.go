package daemon

import (
	"testing"
	"time"
)

// TestSettledAt: a connect's identity stands without another tag lookup
// only when the kernel read its clock for that connect after every change
// of the tag map had returned, by more than tagSettle.
func TestSettledAt(t *testing.T) {
	d := &Daemon{}
	tags := tagTable{d}
	connect := time.Now()
	if g, ok := tags.SettledAt(connect); !ok || g != 0 {
		t.Fatalf("no change yet: generation %d, settled %v; want 0, true", g, ok)
	}
	if _, ok := tags.SettledAt(time.Time{}); ok {
		t.Fatal("a connect of unknown time was taken as settled")
	}
	untag := func(at time.Time) { d.tagsChanged(at); d.tagGen.Add(1) }
	untag(connect.Add(-time.Second))
	if g, ok := tags.SettledAt(connect); !ok || g != 1 {
		t.Fatalf("untag a second before the connect: generation %d, settled %v; want 1, true", g, ok)
	}
	untag(connect.Add(-tagSettle / 2))
	if _, ok := tags.SettledAt(connect); ok {
		t.Fatal("an untag within tagSettle before the connect was taken as settled")
	}
	// A tag (which may name another identity) counts as a change too.
	d.tagsChanged(connect.Add(time.Second))
	// A change that ends later but records first is not hidden by one
	// that ended earlier and records after it.
	untag(connect.Add(-time.Minute))
	if g, ok := tags.SettledAt(connect.Add(2 * tagSettle)); ok || g != 3 {
		t.Fatalf("tag after the connect: generation %d, settled %v; want 3, false", g, ok)
	}
	if _, ok := tags.SettledAt(connect.Add(time.Second + 2*tagSettle)); !ok {
		t.Fatal("a connect after every change was not taken as settled")
	}
}
