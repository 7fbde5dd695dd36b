package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRecordingsReserve: the reserve is a size or a share of the file
// system; without one it is 5 % of the file system, at most 1 GiB; 0
// keeps none; anything else is refused by key.
func TestRecordingsReserve(t *testing.T) {
	const gib = 1 << 30
	for y, want := range map[string][2]int64{
		"listen_port: 16000\n":              {3 * gib * 5 / 100, gib}, // on 3 GiB and on 100 GiB
		"recordings: {reserve: 2GiB}\n":     {2 * gib, 2 * gib},
		"recordings: {reserve: 10%}\n":      {3 * gib / 10, 10 * gib},
		"recordings: {reserve: 0}\n":        {0, 0},
		"recordings: {reserve: \"0.5%\"}\n": {3 * gib / 200, gib / 2},
	} {
		cfg, err := loadYAML(t, y)
		if err != nil {
			t.Fatalf("%q: %v", y, err)
		}
		if got := [2]int64{cfg.Recordings.Reserve.Bytes(3 * gib), cfg.Recordings.Reserve.Bytes(100 * gib)}; got != want {
			t.Errorf("%q: reserve %v on 3 and 100 GiB, want %v", y, got, want)
		}
	}
	for y, msg := range map[string]string{
		"recordings: {reserve: 100%}\n":  "under 100%",
		"recordings: {reserve: -1%}\n":   "under 100%",
		"recordings: {reserve: lots}\n":  "not a size",
		"recordings: {reserved: 1GiB}\n": "reserved",
	} {
		if _, err := loadYAML(t, y); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: err = %v, want one mentioning %q", y, err, msg)
		}
	}
}

// loadYAML loads a configuration file holding y.
func loadYAML(t *testing.T, y string) (Config, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(p)
}
