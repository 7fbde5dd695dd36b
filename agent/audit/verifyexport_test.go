package audit_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/audit/chain"
	"github.com/interlock-dev/interlock/agent/store"
)

// TestVerifyExport: an export verifies on its own, with the head the store
// reports, and an edited or missing line breaks it where it happened.
func TestVerifyExport(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l := audit.New(st, "host-a")
	for _, ev := range sampleEvents() {
		if _, err := l.RecordNow(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	var buf bytes.Buffer
	if err := audit.Export(ctx, st, "", &buf); err != nil {
		t.Fatal(err)
	}
	want, err := audit.Verify(ctx, st, "host-a")
	if err != nil {
		t.Fatal(err)
	}
	got, err := chain.VerifyExport(bytes.NewReader(buf.Bytes()))
	if err != nil || len(got) != 1 || got[0].Broken != nil || got[0].Head != want.Head || got[0].Records != want.Records {
		t.Fatalf("intact export: %+v, %v; want %+v", got, err, want)
	}

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	edited := strings.Join(lines, "\n")
	edited = strings.Replace(edited, `"alice"`, `"mallory"`, 1)
	got, err = chain.VerifyExport(strings.NewReader(edited))
	if err != nil || got[0].Broken == nil || got[0].Broken.Reason != "hash mismatch" {
		t.Fatalf("edited export: %+v, %v", got, err)
	}
	dropped := strings.Join(append(append([]string{}, lines[:3]...), lines[4:]...), "\n")
	got, err = chain.VerifyExport(strings.NewReader(dropped))
	if err != nil || got[0].Broken == nil || got[0].Broken.Reason != "gap" || got[0].Broken.Seq != 4 {
		t.Fatalf("export with a line removed: %+v, %v", got, err)
	}
	if _, err := chain.VerifyExport(strings.NewReader("not json\n")); err == nil {
		t.Fatal("a file that is not an export verified")
	}
}
