package credentials

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The lease journal is an append-only file of JSON lines in the state
// directory, one "issue" line before (embedded) or right after (Vault) a
// credential exists and one "revoke" line once it is gone. Every append is
// fsynced, so after a crash the file lists every lease that may still be
// live; at worst its last line is torn, and a torn line is a write that never
// completed. It holds no passwords: only what revocation needs (a role name or
// a Vault lease id) and what an operator needs to read it.
const (
	journalName = "credentials.journal"
	lockName    = "credentials.lock"
)

const (
	opIssue  = "issue"
	opRevoke = "revoke"
)

// record is one journal line.
type record struct {
	Op   string    `json:"op"`
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	// Issue lines only.
	Source   string `json:"source,omitempty"`
	Handle   string `json:"handle,omitempty"`
	Target   string `json:"target,omitempty"`
	Session  string `json:"session,omitempty"`
	Identity string `json:"identity,omitempty"`
}

// journal appends records; safe for concurrent use.
type journal struct {
	mu   sync.Mutex
	f    *os.File
	lock *os.File
}

// openJournal locks the state directory's journal against a second daemon,
// reads it, rewrites it to hold only the leases still outstanding (so it
// does not grow forever) and opens it for appending. It returns those
// outstanding issue records in the order they were issued.
func openJournal(dir string) (*journal, []record, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create state dir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("open journal lock: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("lock journal in %s (another interlockd uses this state dir?): %w", dir, err)
	}
	path := filepath.Join(dir, journalName)
	outstanding, err := readJournal(path)
	if err != nil {
		lock.Close()
		return nil, nil, err
	}
	if err := rewriteJournal(path, outstanding); err != nil {
		lock.Close()
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("open journal: %w", err)
	}
	return &journal{f: f, lock: lock}, outstanding, nil
}

// readJournal returns the issue records that have no revoke record.
func readJournal(path string) ([]record, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	// A last line without its newline is a torn write: the append that
	// would have completed it never returned, so nothing relied on it.
	if i := bytes.LastIndexByte(data, '\n'); i != len(data)-1 {
		data = data[:i+1]
	}
	var order []string
	open := map[string]record{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("read journal %s line %d: %w", path, n, err)
		}
		switch r.Op {
		case opIssue:
			if _, dup := open[r.ID]; !dup {
				order = append(order, r.ID)
			}
			open[r.ID] = r
		case opRevoke:
			delete(open, r.ID)
		default:
			return nil, fmt.Errorf("read journal %s line %d: unknown op %q", path, n, r.Op)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	var out []record
	for _, id := range order {
		if r, ok := open[id]; ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// rewriteJournal atomically replaces the journal with recs.
func rewriteJournal(path string, recs []record) error {
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode journal record: %w", err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("rewrite journal: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("rewrite journal: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync journal: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("rewrite journal: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rewrite journal: %w", err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	return nil
}

// append writes one record and fsyncs it before returning.
func (j *journal) append(r record) error {
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode journal record: %w", err)
	}
	b = append(b, '\n')
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return errors.New("append journal: closed")
	}
	if _, err := j.f.Write(b); err != nil {
		return fmt.Errorf("append journal: %w", err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("sync journal: %w", err)
	}
	return nil
}

// close releases the file and the state dir lock.
func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	j.lock.Close()
	return err
}
