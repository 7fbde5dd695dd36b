// Package chain is the audit chain's format: a record, how its hash is
// computed (documented on package audit), and how a sequence of records is
// verified. It depends on the standard library only, so an exported trail
// can be checked anywhere (`interlock audit verify --export`) without the
// store or the daemon.
package chain

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// GenesisHash is the prev_hash of every chain's first record.
var GenesisHash = strings.Repeat("0", 64)

// Record is one link of a host's audit chain.
type Record struct {
	Host     string
	Seq      uint64
	Time     time.Time
	Kind     string
	Payload  string // canonical JSON, stored as text so its bytes never change
	PrevHash string // hex
	Hash     string // hex
}

// Head is the last record of a chain, or Seq 0 for an empty chain.
type Head struct {
	Seq  uint64
	Hash string
}

// Hash computes a record's hash from its seq, time, host, kind, payload and
// prev_hash (the Hash field is ignored), as documented on package audit.
func Hash(r Record) string {
	var h Hasher
	return h.Hash(r)
}

// Hasher computes records' hashes as Hash does, keeping its buffer for the
// next record: the audit log hashes every record it appends, and a
// verification every record it reads.
type Hasher struct{ buf []byte }

// maxKeptPreimage bounds the buffer a Hasher keeps: a record with a large
// payload is hashed in a buffer of its own.
const maxKeptPreimage = 16 << 10

// Hash is Hash(r), in h's buffer.
func (h *Hasher) Hash(r Record) string {
	b := append(h.buf[:0], "interlock-audit-v1\x00"...)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Time.UnixNano()))
	for _, s := range [...]string{r.Host, r.Kind, r.Payload, r.PrevHash} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	if cap(b) <= maxKeptPreimage {
		h.buf = b
	}
	sum := sha256.Sum256(b)
	var out [2 * sha256.Size]byte
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

// Break describes the first record at which a chain fails verification.
type Break struct {
	Host   string
	Seq    uint64
	Reason string // "hash mismatch", "prev-hash mismatch" or "gap"
	Detail string
}

func (b *Break) Error() string {
	return fmt.Sprintf("audit chain %s broken at seq %d: %s (%s)", b.Host, b.Seq, b.Reason, b.Detail)
}

// Result is the outcome of verifying one chain.
type Result struct {
	Host    string
	Records uint64
	Head    Head   // last record checked
	Broken  *Break // nil when the chain is intact
}

// String is the one-line verdict `interlock audit verify` prints per host.
func (r Result) String() string {
	if r.Broken != nil {
		return fmt.Sprintf("%s: BROKEN at seq %d: %s (%s); %d records verified before it",
			r.Host, r.Broken.Seq, r.Broken.Reason, r.Broken.Detail, r.Records)
	}
	return fmt.Sprintf("%s: ok, %d records, head seq %d hash %s", r.Host, r.Records, r.Head.Seq, r.Head.Hash)
}

// Check verifies one host's records in seq order, wherever they are read
// from (the store, an export): a missing seq ("gap", naming the first
// missing seq), a prev_hash that is not the previous record's hash
// ("prev-hash mismatch"), or a hash that does not match the record's
// content ("hash mismatch", which is what editing any field gives).
type Check struct {
	res  Result
	prev string
	want uint64
	h    Hasher
}

// NewCheck starts the check of host's chain at seq 1.
func NewCheck(host string) *Check {
	return &Check{res: Result{Host: host}, prev: GenesisHash, want: 1}
}

// Next checks r against the records before it and reports whether the
// chain still holds; after the first break it stays broken.
func (c *Check) Next(r Record) bool {
	if c.res.Broken != nil {
		return false
	}
	host := c.res.Host
	switch {
	case r.Seq != c.want:
		c.res.Broken = &Break{Host: host, Seq: c.want, Reason: "gap",
			Detail: fmt.Sprintf("record %d missing; next stored record is %d", c.want, r.Seq)}
	case r.PrevHash != c.prev:
		c.res.Broken = &Break{Host: host, Seq: r.Seq, Reason: "prev-hash mismatch",
			Detail: fmt.Sprintf("prev_hash %.16s..., previous record's hash %.16s...", r.PrevHash, c.prev)}
	case c.h.Hash(r) != r.Hash:
		c.res.Broken = &Break{Host: host, Seq: r.Seq, Reason: "hash mismatch",
			Detail: "record content does not match its hash"}
	}
	if c.res.Broken != nil {
		return false
	}
	c.res.Records++
	c.res.Head = Head{Seq: r.Seq, Hash: r.Hash}
	c.prev, c.want = r.Hash, r.Seq+1
	return true
}

// Result is the verdict so far.
func (c *Check) Result() Result { return c.res }

// ExportedRecord is one line of an export (`interlock audit export`).
type ExportedRecord struct {
	Host     string          `json:"host"`
	Seq      uint64          `json:"seq"`
	Time     time.Time       `json:"time"`
	Kind     string          `json:"kind"`
	Payload  json.RawMessage `json:"payload"`
	PrevHash string          `json:"prev_hash"`
	Hash     string          `json:"hash"`
}

// VerifyExport verifies the chains in an export (JSON lines) with no store
// and no daemon: every record's hash is recomputed from the exported
// fields, so a copy kept elsewhere can be checked on its own. Results are
// per host, in the order hosts first appear. The error return is for input
// that is not an export, not for a broken chain.
func VerifyExport(r io.Reader) ([]Result, error) {
	checks := map[string]*Check{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var e ExportedRecord
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("read export line %d: %w", line, err)
		}
		c, ok := checks[e.Host]
		if !ok {
			c = NewCheck(e.Host)
			checks[e.Host] = c
			order = append(order, e.Host)
		}
		c.Next(Record{Host: e.Host, Seq: e.Seq, Time: e.Time, Kind: e.Kind,
			Payload: string(e.Payload), PrevHash: e.PrevHash, Hash: e.Hash})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read export: %w", err)
	}
	out := make([]Result, 0, len(order))
	for _, h := range order {
		out = append(out, checks[h].res)
	}
	return out, nil
}
