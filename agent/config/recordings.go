package config

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Recordings configures where sessions are recorded.
type Recordings struct {
	// Reserve is the free space kept on the file system of the state
	// directory's recordings: under it, new decoded sessions are refused
	// and sessions whose recordings grow are ended, each in its protocol's
	// words (outcome "recording unavailable"), until space is freed. An
	// agent whose sessions are recorded in full (a PostgreSQL result, every
	// response head) could otherwise fill the host's disk.
	Reserve Reserve `yaml:"reserve"`
}

// Reserve is free space to keep on a file system: a size in bytes, or a
// share of the file system's size ("5%", with a ceiling: see Bytes).
type Reserve struct {
	Size    Size    // when Percent is 0
	Percent float64 // of the file system's size
	// Ceiling caps what Percent gives (0: none).
	Ceiling Size
}

// DefaultRecordings keeps 5 % of the file system free, at most 1 GiB: a
// second or more of the fastest session's writes on a large disk, and
// room on a small one (a 3 GB virtual machine keeps 150 MiB).
func DefaultRecordings() Recordings {
	return Recordings{Reserve: Reserve{Percent: 5, Ceiling: 1 << 30}}
}

// UnmarshalYAML accepts a size ("1GiB", 0 for none) or a percentage
// ("5%").
func (r *Reserve) UnmarshalYAML(n *yaml.Node) error {
	if p, ok := strings.CutSuffix(strings.TrimSpace(n.Value), "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v < 0 || v >= 100 {
			return fmt.Errorf("line %d: %q is not a percentage of the file system under 100%%", n.Line, n.Value)
		}
		*r = Reserve{Percent: v}
		return nil
	}
	var s Size
	if err := s.UnmarshalYAML(n); err != nil {
		return err
	}
	*r = Reserve{Size: s}
	return nil
}

// Bytes is the reserve on a file system of total bytes.
func (r Reserve) Bytes(total int64) int64 {
	if r.Percent == 0 {
		return int64(r.Size)
	}
	n := int64(float64(total) * r.Percent / 100)
	if r.Ceiling > 0 && n > int64(r.Ceiling) {
		n = int64(r.Ceiling)
	}
	return n
}

// String is the reserve as written in the configuration.
func (r Reserve) String() string {
	if r.Percent == 0 {
		return strconv.FormatInt(int64(r.Size), 10) + " bytes"
	}
	s := strconv.FormatFloat(r.Percent, 'f', -1, 64) + "% of the file system"
	if r.Ceiling > 0 {
		s += fmt.Sprintf(", at most %d bytes", int64(r.Ceiling))
	}
	return s
}
