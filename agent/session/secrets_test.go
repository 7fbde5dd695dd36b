package session

import (
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"
)

func TestScannerReplacesAcrossReads(t *testing.T) {
	var set secretSet
	set.add("s3cr3t-value-1", "forge")
	set.add("short", "forge") // under minSecretLen: not looked for
	body := strings.Repeat("x", 40<<10) + "s3cr3t-value-1" + "short" + strings.Repeat("y", 100) + "s3cr3t-value-1"
	show := func(s *secret) ([]byte, error) { return s.shown, nil }
	// One byte per read: every secret straddles reads.
	sc := newScanner(io.NopCloser(iotest.OneByteReader(strings.NewReader(body))), set.load(), show)
	got, err := io.ReadAll(sc)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.ReplaceAll(body, "s3cr3t-value-1", "**************")
	if string(got) != want {
		t.Errorf("scrubbed body differs (len %d, want %d)", len(got), len(want))
	}
}

func TestScannerRefusesBeforeTheSecretLeaves(t *testing.T) {
	var set secretSet
	set.add("s3cr3t-value-1", "forge")
	errLeak := errors.New("leak")
	refuse := func(*secret) ([]byte, error) { return nil, errLeak }
	sc := newScanner(io.NopCloser(iotest.HalfReader(strings.NewReader("hello s3cr3t-value-1 tail"))), set.load(), refuse)
	got, err := io.ReadAll(sc)
	if !errors.Is(err, errLeak) {
		t.Fatalf("err = %v", err)
	}
	if string(got) != "hello " {
		t.Errorf("passed %q before refusing", got)
	}
}

func TestSecretSetPlaceholders(t *testing.T) {
	var set secretSet
	rel := set.add("ghp_RealToken123456", "forge")
	ph := newPlaceholder("ghp_RealToken123456")
	if !regexp.MustCompile(`^ghp_[A-Z][a-z]{3}[A-Z][a-z]{4}[0-9]{6}$`).MatchString(ph) {
		t.Errorf("placeholder %q is not of the token's shape", ph)
	}
	relPH := set.addPlaceholder(ph, "ghp_RealToken123456", "forge")
	secrets := set.load()
	if len(secrets) != 2 {
		t.Fatalf("%d entries", len(secrets))
	}
	for _, s := range secrets {
		if string(s.shown) != ph {
			t.Errorf("%q shown as %q, want the placeholder", s.value, s.shown)
		}
	}
	relPH()
	rel()
	if n := len(set.load()); n != 0 {
		t.Errorf("%d entries after release", n)
	}
	// The same value held for two targets may go to either.
	r1, r2 := set.add("shared-secret-1", "a"), set.add("shared-secret-1", "b")
	if s := set.load(); len(s) != 1 || !s[0].ownedBy("a") || !s[0].ownedBy("b") {
		t.Errorf("shared secret: %+v", s)
	}
	r1()
	if s := set.load(); len(s) != 1 || s[0].ownedBy("a") {
		t.Errorf("after one release: %+v", s)
	}
	r2()
}
