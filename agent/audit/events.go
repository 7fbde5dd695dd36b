package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"

	"github.com/interlock-dev/interlock/policy/sqlclass"
)

// Statement is request text fit for the audit trail. Build it with
// SQLStatement or OpaqueStatement; there is no way to get raw text out of
// one. It keeps the request and redacts when it is written, so a statement
// no sink writes (an allowed one, with the event log above debug level)
// costs nothing.
type Statement struct {
	raw    string
	opaque bool
}

// String returns the redacted text.
func (s Statement) String() string {
	if s.opaque {
		sum := sha256.Sum256([]byte(s.raw))
		return "sha256:" + hex.EncodeToString(sum[:8]) + " (" + strconv.Itoa(len(s.raw)) + " bytes)"
	}
	return sqlclass.RedactLiterals(s.raw)
}

// MarshalJSON encodes the redacted text as a JSON string.
func (s Statement) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// SQLStatement redacts a SQL statement for the audit trail with
// sqlclass.RedactLiterals: every literal (quoted strings, E-strings,
// dollar-quoted strings, bit strings, numbers) becomes '?', and comments are
// dropped, keeping the statement's shape, tables and columns. "ALTER ROLE
// app PASSWORD 'hunter2'" becomes "ALTER ROLE app PASSWORD ?". Identifiers,
// including quoted ones, are kept.
func SQLStatement(sql string) Statement { return Statement{raw: sql} }

// OpaqueStatement keeps only a fingerprint of text (a SHA-256 prefix and the
// length), for requests whose literals cannot be told apart from their
// shape. Equal requests still have equal fingerprints.
func OpaqueStatement(text string) Statement { return Statement{raw: text, opaque: true} }
