package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/interlock-dev/interlock/agent/control"
)

// identities maps identity names to the small integers the kernel maps hold,
// and remembers which cgroup carries which tag. It is persisted in the state
// directory because the pinned maps outlive the daemon: a restarted daemon
// must read the ids it finds in them back as the same names.
type identities struct {
	path string

	mu   sync.Mutex
	Next uint32            `json:"next"`
	IDs  map[string]uint32 `json:"ids"`
	// Tags maps a cgroup path (relative to the cgroup2 mount) to its identity.
	Tags map[string]string `json:"tags"`
	// CgroupIDs maps the same paths to the cgroup ids in the kernel map, so
	// the tag of a cgroup that has since been removed can be dropped.
	CgroupIDs map[string]uint64 `json:"cgroup_ids"`
}

func loadIdentities(stateDir string) (*identities, error) {
	ids := &identities{path: filepath.Join(stateDir, "identities.json"), Next: 1,
		IDs: map[string]uint32{}, Tags: map[string]string{}, CgroupIDs: map[string]uint64{}}
	data, err := os.ReadFile(ids.path)
	if os.IsNotExist(err) {
		return ids, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read identities: %w", err)
	}
	if err := json.Unmarshal(data, ids); err != nil {
		return nil, fmt.Errorf("parse %s: %w", ids.path, err)
	}
	if ids.IDs == nil {
		ids.IDs = map[string]uint32{}
	}
	if ids.Tags == nil {
		ids.Tags = map[string]string{}
	}
	if ids.CgroupIDs == nil {
		ids.CgroupIDs = map[string]uint64{}
	}
	return ids, nil
}

// id returns the number of name, allocating one on first use.
func (s *identities) id(name string) (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.IDs[name]; ok {
		return id, nil
	}
	id := s.Next
	s.Next++
	s.IDs[name] = id
	return id, s.saveLocked()
}

// name returns the identity name of id, or "" if unknown.
func (s *identities) name(id uint32) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, i := range s.IDs {
		if i == id {
			return n
		}
	}
	return ""
}

func (s *identities) all() map[string]uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]uint32, len(s.IDs))
	for k, v := range s.IDs {
		m[k] = v
	}
	return m
}

func (s *identities) setTag(cgroup string, id uint64, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "" {
		delete(s.Tags, cgroup)
		delete(s.CgroupIDs, cgroup)
	} else {
		s.Tags[cgroup] = name
		s.CgroupIDs[cgroup] = id
	}
	return s.saveLocked()
}

// taggedIDs returns the cgroup id of every tagged path.
func (s *identities) taggedIDs() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]uint64, len(s.CgroupIDs))
	for k, v := range s.CgroupIDs {
		m[k] = v
	}
	return m
}

func (s *identities) tags() []control.TagEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]control.TagEntry, 0, len(s.Tags))
	for c, n := range s.Tags {
		out = append(out, control.TagEntry{Cgroup: c, Identity: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Cgroup < out[j].Cgroup })
	return out
}

// saveLocked writes the file atomically: a torn write must never lose the
// mapping for ids that the pinned maps still hold.
func (s *identities) saveLocked() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write identities: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write identities: %w", err)
	}
	return nil
}
