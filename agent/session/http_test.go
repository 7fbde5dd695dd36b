package session

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/decoders/protocol"
)

// TestSelectByName: a connection to a by-name port reaches the http
// decoder with no target; the name it reads chooses one, the connection to
// it is decided and audited with the name, and its requests are decided as
// the target's. A name no target has is denied as unknown-host.
func TestSelectByName(t *testing.T) {
	type result struct {
		target  string
		connect protocol.Verdict
		get     protocol.Verdict
		post    protocol.Verdict
	}
	var got []result
	e := newEnv(t, nil)
	e.p.decoders["http"] = fakeDecoder{func(ctx context.Context, s *protocol.Session) error {
		if s.Target != "" || s.Select == nil {
			t.Errorf("by-name session handed target %q, select %v", s.Target, s.Select != nil)
		}
		for _, name := range []string{"api.test", "evil.test"} {
			target, connect := s.Select(ctx, name)
			r := result{target: target, connect: connect}
			if connect.Action == protocol.Allow {
				if err := s.Recorder.Start(ctx); err != nil {
					return err
				}
				r.get = s.Enforcer.Decide(ctx, protocol.Request{Operation: "GET", Text: "/repos", Host: name})
				r.post = s.Enforcer.Decide(ctx, protocol.Request{Operation: "POST", Text: "/repos", Host: name})
			}
			got = append(got, r)
		}
		return nil
	}}
	_, done := e.serve(t, "s1", "10.9.9.9:443")
	<-done
	if len(got) != 2 || got[0].target != "forge" || got[0].connect.Action != protocol.Allow ||
		got[0].get.Action != protocol.Allow || got[0].get.Rule != "forge-read" || got[0].post.Action != protocol.Deny {
		t.Fatalf("api.test: %+v", got)
	}
	if got[1].target != "" || got[1].connect.Action != protocol.Deny || got[1].connect.Rule != "unknown-host" {
		t.Errorf("evil.test: %+v", got[1])
	}
	// The chain holds what was refused (enforced allows are in the log and
	// the recording): the POST as the target's, the unknown name as no
	// target's.
	var ops []string
	for _, r := range e.chain(t) {
		if p, _ := r["payload"].(map[string]any); r["kind"] == "decision" {
			ops = append(ops, fmt.Sprintf("%v@%v", p["operation"], p["target"]))
		}
	}
	if s := strings.Join(ops, ","); s != "POST@forge,CONNECT evil.test@" {
		t.Errorf("decisions chained: %s", s)
	}
}

// TestCAFilesFollowTheFile: an upstream_ca file is parsed once while it
// stays as it is, and again once it is rewritten or replaced; a file gone
// or holding no certificate is an error.
func TestCAFilesFollowTheFile(t *testing.T) {
	// Certificates of three CAs made as interlockd makes its own.
	var pems [3][]byte
	for i := range pems {
		a, err := ca.Open(ca.Config{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		pems[i] = a.CertificatePEM()
	}
	holds := func(pool *x509.CertPool, i int) bool {
		want := x509.NewCertPool()
		want.AppendCertsFromPEM(pems[i])
		return pool.Equal(want)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(path, pems[0], 0o644); err != nil {
		t.Fatal(err)
	}
	var f caFiles
	p1, err := f.pool(path)
	if err != nil || !holds(p1, 0) {
		t.Fatalf("pool: %v; want the first CA", err)
	}
	if p, err := f.pool(path); err != nil || p != p1 {
		t.Fatalf("unchanged file parsed again (%v)", err)
	}
	// Rewritten in place.
	if err := os.WriteFile(path, pems[1], 0o644); err != nil {
		t.Fatal(err)
	}
	if p, err := f.pool(path); err != nil || !holds(p, 1) {
		t.Fatalf("after a rewrite: %v; want the second CA alone", err)
	}
	// Replaced by a rename, as configuration tools do.
	next := filepath.Join(dir, "next.pem")
	if err := os.WriteFile(next, pems[2], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	if p, err := f.pool(path); err != nil || !holds(p, 2) {
		t.Fatalf("after a rename: %v; want the third CA", err)
	}
	if err := os.WriteFile(path, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool(path); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("a file with no certificate: %v", err)
	}
	os.Remove(path)
	if _, err := f.pool(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a removed file: %v", err)
	}
}
