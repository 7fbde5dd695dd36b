// Package mask rewrites sensitive values in query results: whole columns
// chosen by name or glob, and spans found by value detectors (email, card
// numbers with Luhn, US SSN, IBAN with mod-97, JWT, AWS/GCP/GitHub keys, PEM
// private keys).
//
// A [Masker] is compiled once from a policy. A protocol decoder asks it for a
// [Plan] when a result's column names are known (PostgreSQL RowDescription)
// and then masks each value through the plan. Values are treated as text;
// when a column's wire format is binary or fixed-length, the decoder decides
// how to carry the masked text (or a NULL). The package is pure: no logging,
// no I/O.
package mask

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"
)

// Method is how a value (or a detected span) is masked.
type Method uint8

// Masking methods.
const (
	// Redact replaces the value with a fixed marker, "[redacted]" for a
	// column and "[redacted:<detector>]" for a detected span.
	Redact Method = iota + 1
	// Partial keeps the length and shows only a tail: the last four
	// characters (digits for cards), the first letter and domain of an
	// email; every other character becomes '*'.
	Partial
	// Hash replaces the value with "h:" and 16 hex digits of
	// HMAC-SHA256(key, value): equal values stay equal, so joins and
	// counts still work, but the value cannot be read back.
	Hash
)

// ParseMethod maps "redact", "partial" or "hash" to a Method.
func ParseMethod(s string) (Method, bool) {
	switch strings.ToLower(s) {
	case "redact":
		return Redact, true
	case "partial":
		return Partial, true
	case "hash":
		return Hash, true
	}
	return 0, false
}

// String returns the policy-file name of m.
func (m Method) String() string {
	switch m {
	case Redact:
		return "redact"
	case Partial:
		return "partial"
	case Hash:
		return "hash"
	}
	return fmt.Sprintf("method(%d)", m)
}

// ColumnRule masks every value of the columns whose name matches Pattern
// (case-insensitive; '*' and '?' as in shell globs; "table.column" patterns
// are matched against the bare column name's pattern part after the dot,
// because result descriptions carry column names only).
type ColumnRule struct {
	Pattern string
	Method  Method
}

// DetectorRule masks spans that the named detector (or group: "pii",
// "secrets") finds in any value of any column.
type DetectorRule struct {
	Detector string
	Method   Method
}

// Masker is a compiled set of masking rules. It is immutable and safe for
// concurrent use.
type Masker struct {
	name      string
	columns   []ColumnRule
	detectors []detectorRule
	hashKey   []byte
}

type detectorRule struct {
	name   string
	find   finder
	method Method
}

// New compiles a masker. hashKey keys the Hash method; with an empty key
// hashes are still one-way but the same across deployments.
func New(name string, columns []ColumnRule, dets []DetectorRule, hashKey []byte) (*Masker, error) {
	m := &Masker{name: name, hashKey: hashKey}
	for _, c := range columns {
		p := strings.ToLower(c.Pattern)
		if i := strings.LastIndexByte(p, '.'); i >= 0 {
			p = p[i+1:]
		}
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return nil, fmt.Errorf("compile column pattern %q: invalid glob", c.Pattern)
		}
		if c.Method == 0 {
			return nil, fmt.Errorf("compile column pattern %q: no method", c.Pattern)
		}
		m.columns = append(m.columns, ColumnRule{Pattern: p, Method: c.Method})
	}
	for _, d := range dets {
		if d.Method == 0 {
			return nil, fmt.Errorf("compile detector %q: no method", d.Detector)
		}
		names := []string{d.Detector}
		if g, ok := detectorGroups[d.Detector]; ok {
			names = g
		}
		for _, n := range names {
			f, ok := detectors[n]
			if !ok {
				return nil, fmt.Errorf("compile detector %q: unknown detector (known: %s)", d.Detector, strings.Join(DetectorNames(), ", "))
			}
			m.detectors = append(m.detectors, detectorRule{name: n, find: f, method: d.Method})
		}
	}
	return m, nil
}

// Name is the masking profile's name in the policy.
func (m *Masker) Name() string { return m.name }

// Plan resolves column names to their masking once per result set, so each
// value needs only an index lookup. The plan is safe for concurrent use.
type Plan struct {
	m       *Masker
	columns []Method // per column: 0 when no column rule applies
	active  bool
}

// Plan returns the plan for a result with the given column names.
func (m *Masker) Plan(columns []string) *Plan {
	p := &Plan{m: m, columns: make([]Method, len(columns)), active: len(m.detectors) > 0}
	for i, name := range columns {
		name = strings.ToLower(name)
		for _, r := range m.columns {
			if ok, _ := path.Match(r.Pattern, name); ok {
				p.columns[i] = r.Method
				p.active = true
				break
			}
		}
	}
	return p
}

// Active reports whether any value of the result can change; a decoder may
// pass rows through untouched when it is false.
func (p *Plan) Active() bool { return p.active }

// Column returns the method applied to the whole of column i, or 0 when
// only detectors apply.
func (p *Plan) Column(i int) Method {
	if i < 0 || i >= len(p.columns) {
		return 0
	}
	return p.columns[i]
}

// Mask appends the masked form of value (from column col) to dst and
// reports whether it differs from value. When it returns false dst is
// returned unchanged and the caller should send the original bytes.
func (p *Plan) Mask(dst []byte, col int, value []byte) ([]byte, bool) {
	if meth := p.Column(col); meth != 0 {
		return p.m.apply(dst, meth, "", value), true
	}
	if len(p.m.detectors) == 0 {
		return dst, false
	}
	return p.m.maskSpans(dst, value)
}

// MaskValue masks a value by detectors only, for protocols without columns.
func (m *Masker) MaskValue(dst, value []byte) ([]byte, bool) {
	return m.maskSpans(dst, value)
}

func (m *Masker) maskSpans(dst, value []byte) ([]byte, bool) {
	// Find the earliest match of any detector, mask it, continue after it.
	start0 := len(dst)
	changed := false
	pos := 0
	for pos < len(value) {
		best, bestEnd, bestRule := -1, -1, -1
		for k, d := range m.detectors {
			s, e := d.find(value, pos)
			if s >= 0 && (best < 0 || s < best || (s == best && e > bestEnd)) {
				best, bestEnd, bestRule = s, e, k
			}
		}
		if best < 0 {
			break
		}
		dst = append(dst, value[pos:best]...)
		d := m.detectors[bestRule]
		dst = m.apply(dst, d.method, d.name, value[best:bestEnd])
		pos = bestEnd
		changed = true
	}
	if !changed {
		return dst[:start0], false
	}
	return append(dst, value[pos:]...), true
}

func (m *Masker) apply(dst []byte, meth Method, detector string, v []byte) []byte {
	switch meth {
	case Partial:
		return partial(dst, detector, v)
	case Hash:
		mac := hmac.New(sha256.New, m.hashKey)
		mac.Write(v)
		var sum [sha256.Size]byte
		dst = append(dst, "h:"...)
		return hex.AppendEncode(dst, mac.Sum(sum[:0])[:8])
	default:
		if detector == "" {
			return append(dst, "[redacted]"...)
		}
		return append(append(append(dst, "[redacted:"...), detector...), ']')
	}
}

// partial keeps the shape of v but hides all but a tail. It works on runes
// so the result stays valid UTF-8.
func partial(dst []byte, detector string, v []byte) []byte {
	if detector == "" && bytes.IndexByte(v, '@') > 0 {
		detector = "email"
	}
	switch detector {
	case "email":
		at := bytes.LastIndexByte(v, '@')
		if at > 0 {
			_, size := utf8.DecodeRune(v)
			dst = append(dst, v[:size]...)
			for range utf8.RuneCount(v[size:at]) {
				dst = append(dst, '*')
			}
			return append(dst, v[at:]...)
		}
	case "card", "us_ssn", "iban":
		// Keep separators and the last four digits or letters.
		seen := 0
		out := len(dst)
		dst = append(dst, v...)
		for i := len(v) - 1; i >= 0; i-- {
			if isAlnum(v[i]) {
				seen++
				if seen > 4 {
					dst[out+i] = '*'
				}
			}
		}
		return dst
	case "":
	default: // secrets: show nothing of them
		for range utf8.RuneCount(v) {
			dst = append(dst, '*')
		}
		return dst
	}
	n := utf8.RuneCount(v)
	keep := 0
	if n > 8 {
		keep = 4
	}
	tail := len(v)
	for range keep {
		_, size := utf8.DecodeLastRune(v[:tail])
		tail -= size
	}
	for range n - keep {
		dst = append(dst, '*')
	}
	return append(dst, v[tail:]...)
}
