package postgres

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/decoders/capture"
)

// corpusDir is the shared capture corpus, relative to this package.
const corpusDir = "../../../shared/corpus/pcap/postgresql"

// Captures whose sessions must end in an error, by file name; every other
// capture must decode without one.
var corpusErrors = map[string]func(error) bool{
	"bad-startup-message-1.pcap": isProtocolError,
	"mysql-on-port-5432.pcap":    isProtocolError,
	"psql-aws-ssl-require.pcap":  func(err error) bool { return errors.Is(err, ErrTLS) },
}

func isProtocolError(err error) bool {
	var pe *ProtocolError
	return errors.As(err, &pe)
}

// TestCorpus replays every capture in the shared corpus through the capture
// reader and DecodeQueries, as `interlock policy replay --pcap` does: the
// queries must equal the .queries.jsonl beside each capture.
func TestCorpus(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(corpusDir, "*.pcap*"))
	var pcaps []string
	for _, f := range files {
		if !strings.HasSuffix(f, ".jsonl") {
			pcaps = append(pcaps, f)
		}
	}
	if len(pcaps) == 0 {
		t.Fatalf("no captures in %s: the shared corpus must be checked out beside the repository", corpusDir)
	}
	for _, path := range pcaps {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			want := readJSONLines(t, path+".queries.jsonl")
			streams, err := capture.ReadFile(path, capture.Options{})
			if err != nil {
				t.Fatal(err)
			}
			// Queries of concurrent sessions are merged in the order they
			// were sent.
			type sent struct {
				sql string
				at  time.Time
			}
			var all []sent
			var errs []error
			for _, s := range streams {
				qs, err := DecodeQueries(s.ClientBytes(), s.ServerBytes())
				for _, q := range qs {
					all = append(all, sent{q.SQL, s.ClientTime(q.Offset)})
				}
				if err != nil {
					errs = append(errs, err)
				}
			}
			sort.SliceStable(all, func(i, j int) bool { return all[i].at.Before(all[j].at) })
			var got []string
			for _, q := range all {
				got = append(got, q.sql)
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("queries:\n got %q\nwant %q", got, want)
			}
			check, wantErr := corpusErrors[name]
			switch {
			case wantErr && (len(errs) != 1 || !check(errs[0])):
				t.Errorf("want one error of the expected kind, got %v", errs)
			case !wantErr && len(errs) > 0:
				t.Errorf("unexpected errors: %v", errs)
			}
			for _, err := range errs {
				t.Logf("%s: %v", name, err)
			}
		})
	}
}

func readJSONLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var s string
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
