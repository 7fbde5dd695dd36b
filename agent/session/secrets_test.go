package session

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"regexp"
	"slices"
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

// plain is secrets without their base64 forms.
func plain(secrets []secret) []secret {
	var out []secret
	for _, s := range secrets {
		if !s.encoded {
			out = append(out, s)
		}
	}
	return out
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
	secrets := plain(set.load())
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
	if s := plain(set.load()); len(s) != 1 || !s[0].ownedBy("a") || !s[0].ownedBy("b") {
		t.Errorf("shared secret: %+v", s)
	}
	r1()
	if s := plain(set.load()); len(s) != 1 || s[0].ownedBy("a") {
		t.Errorf("after one release: %+v", s)
	}
	r2()
}

// TestGuardInbound: held secrets are replaced in a response's head and
// body, a gzip body is decompressed to be checked, an encoding that cannot
// be checked is refused, and an upgrade's connection is left alone.
func TestGuardInbound(t *testing.T) {
	p := &Pipeline{}
	p.secrets.add("s3cr3t-value-1", "forge")
	g := httpGuard{p}
	resp := func(enc string, body []byte) *nethttp.Response {
		h := nethttp.Header{"X-Echo": {"Bearer s3cr3t-value-1"}}
		if enc != "" {
			h.Set("Content-Encoding", enc)
		}
		return &nethttp.Response{StatusCode: 200, Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
	}
	r := resp("", []byte(`{"token":"s3cr3t-value-1"}`))
	if err := g.Inbound(nil, "other", r); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r.Body); string(b) != `{"token":"**************"}` || r.Header.Get("X-Echo") != "Bearer **************" {
		t.Errorf("scrubbed: %s %v", b, r.Header)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("echo s3cr3t-value-1"))
	zw.Close()
	r = resp("gzip", gz.Bytes())
	if err := g.Inbound(nil, "other", r); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(r.Body); string(b) != "echo **************" || r.Header.Get("Content-Encoding") != "" || r.ContentLength != -1 {
		t.Errorf("gzip: %q %v", b, r.Header)
	}
	if err := g.Inbound(nil, "other", resp("br", []byte("x"))); err == nil {
		t.Error("a brotli body went unchecked")
	}
	up := resp("", nil)
	up.StatusCode = nethttp.StatusSwitchingProtocols
	body := up.Body
	if err := g.Inbound(nil, "other", up); err != nil || up.Body != body {
		t.Errorf("upgrade: %v", err)
	}
}

// TestSecretFoundInBase64: a secret inside base64 text (Basic auth) is
// found at each of the three offsets it can take, in both alphabets.
func TestSecretFoundInBase64(t *testing.T) {
	var set secretSet
	set.add("ghp_StaticForgeToken0123456789abcdef", "forge")
	errLeak := errors.New("leak")
	found := func(*secret) ([]byte, error) { return nil, errLeak }
	for _, user := range []string{"x", "xy", "xyz", "x-access-token"} {
		raw := []byte(user + ":ghp_StaticForgeToken0123456789abcdef?>")
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			if _, err := replaceAll("Basic "+enc.EncodeToString(raw), set.load(), found); !errors.Is(err, errLeak) {
				t.Errorf("user %q: the base64 form went unseen", user)
			}
		}
	}
	if _, err := replaceAll("Basic "+base64.StdEncoding.EncodeToString([]byte("x:another-token-entirely")), set.load(), found); err != nil {
		t.Errorf("another token: %v", err)
	}
}

// TestSecretSetChangeCostsNoRebuild: registering a session's credential
// and forgetting it cost the same with thousands held, until something
// reads the set; a read after changes sees all of them.
func TestSecretSetChangeCostsNoRebuild(t *testing.T) {
	var set secretSet
	for i := range 2000 {
		set.add(fmt.Sprintf("held-secret-%06d", i), "db")
	}
	allocs := testing.AllocsPerRun(50, func() { set.add("one-more-secret", "db")() })
	if allocs > 40 {
		t.Fatalf("registering and forgetting a secret with 2000 held: %.0f allocations", allocs)
	}
	forget := set.add("latest-secret", "db")
	if got := set.load(); len(got) != 7*2001 || !slices.ContainsFunc(got, func(s secret) bool { return string(s.value) == "latest-secret" }) {
		t.Fatalf("after the changes the set holds %d entries (want the 2001 values and their 6 base64 forms each)", len(got))
	}
	forget()
	if slices.ContainsFunc(set.load(), func(s secret) bool { return string(s.value) == "latest-secret" }) {
		t.Fatal("a forgotten secret is still looked for")
	}
}

// TestSecretFormsMadeForSnapshots: a secret registered and never read by
// the leak guard (every PostgreSQL session's role, with no HTTP session
// running) holds neither its base64 forms nor its asterisks; the first
// snapshot makes them, once, and later snapshots reuse them.
func TestSecretFormsMadeForSnapshots(t *testing.T) {
	var set secretSet
	release := set.add("s3cr3t-value-1", "appdb")
	defer release()
	var reg *secret
	for r := range set.regs {
		reg = r
	}
	if reg.forms != nil || reg.shown != nil {
		t.Fatalf("registration holds forms %q and shown %q before any snapshot", reg.forms, reg.shown)
	}
	snap := set.load()
	if len(reg.forms) != 6 || string(reg.shown) != "**************" {
		t.Fatalf("after a snapshot: forms %q, shown %q", reg.forms, reg.shown)
	}
	encoded := 0
	for _, s := range snap {
		if s.encoded {
			encoded++
			if !slices.ContainsFunc(reg.forms, func(f []byte) bool { return bytes.Equal(f, s.value) }) {
				t.Errorf("encoded form %q is not one of the value's", s.value)
			}
		}
	}
	if encoded != 6 {
		t.Errorf("snapshot has %d encoded forms, want 6", encoded)
	}
	forms := reg.forms
	set.add("another-secret-2", "appdb")
	set.load()
	if &forms[0][0] != &reg.forms[0][0] {
		t.Error("a later snapshot made the forms again")
	}
}
