package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
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
	return redactSQL(s.raw)
}

// MarshalJSON encodes the redacted text as a JSON string.
func (s Statement) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// SQLStatement redacts a SQL statement for the audit trail: every literal
// (quoted strings, E-strings, dollar-quoted strings, bit strings, numbers) becomes
// '?', and comments are dropped, keeping the statement's shape, tables and
// columns. "ALTER ROLE app PASSWORD 'hunter2'" becomes
// "ALTER ROLE app PASSWORD ?". Identifiers, including quoted ones, are kept.
func SQLStatement(sql string) Statement { return Statement{raw: sql} }

func redactSQL(sql string) string {
	var b strings.Builder
	b.Grow(len(sql))
	lit := func() { b.WriteByte('?') }
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '\'':
			i = skipQuoted(sql, i+1, false)
			lit()
		case (c == 'E' || c == 'e') && i+1 < len(sql) && sql[i+1] == '\'' && !identByte(prev(sql, i)):
			i = skipQuoted(sql, i+2, true)
			lit()
		case (c == 'B' || c == 'b' || c == 'X' || c == 'x' || c == 'U' || c == 'u' || c == 'N' || c == 'n') &&
			i+1 < len(sql) && sql[i+1] == '\'' && !identByte(prev(sql, i)):
			i = skipQuoted(sql, i+2, false)
			lit()
		case c == '$' && !identByte(prev(sql, i)):
			if end, ok := dollarQuoted(sql, i); ok {
				i = end
				lit()
			} else {
				// $1 parameters stay: they are placeholders, not values.
				b.WriteByte(c)
				i++
			}
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			i = skipBlockComment(sql, i+2)
			b.WriteByte(' ')
		case c == '"':
			j := i + 1
			for j < len(sql) {
				if sql[j] == '"' {
					if j+1 < len(sql) && sql[j+1] == '"' {
						j += 2
						continue
					}
					j++
					break
				}
				j++
			}
			b.WriteString(sql[i:j])
			i = j
		case (c >= '0' && c <= '9' || c == '.' && i+1 < len(sql) && sql[i+1] >= '0' && sql[i+1] <= '9') && !identByte(prev(sql, i)):
			j := i
			for j < len(sql) && (identByte(sql[j]) || sql[j] == '.' ||
				(sql[j] == '+' || sql[j] == '-') && (sql[j-1] == 'e' || sql[j-1] == 'E')) {
				j++
			}
			i = j
			lit()
		default:
			b.WriteByte(c)
			i++
		}
	}
	return strings.TrimSpace(b.String())
}

// OpaqueStatement keeps only a fingerprint of text (a SHA-256 prefix and the
// length), for requests whose literals cannot be told apart from their
// shape. Equal requests still have equal fingerprints.
func OpaqueStatement(text string) Statement { return Statement{raw: text, opaque: true} }

func prev(s string, i int) byte {
	if i == 0 {
		return ' '
	}
	return s[i-1]
}

func identByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c >= 0x80 || c == '$'
}

// skipQuoted returns the index after the closing quote of a literal whose
// body starts at i; a doubled quote is an escaped quote and, with backslash,
// so is a backslash-quote.
func skipQuoted(s string, i int, backslash bool) int {
	for i < len(s) {
		switch {
		case backslash && s[i] == '\\':
			i += 2
		case s[i] == '\'':
			if i+1 < len(s) && s[i+1] == '\'' {
				i += 2
				continue
			}
			return i + 1
		default:
			i++
		}
	}
	return len(s)
}

// dollarQuoted recognizes $tag$...$tag$ starting at i.
func dollarQuoted(s string, i int) (int, bool) {
	j := i + 1
	for j < len(s) && s[j] != '$' {
		c := s[j]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 || j > i+1 && c >= '0' && c <= '9') {
			return 0, false
		}
		j++
	}
	if j >= len(s) {
		return 0, false
	}
	tag := s[i : j+1]
	end := strings.Index(s[j+1:], tag)
	if end < 0 {
		return len(s), true
	}
	return j + 1 + end + len(tag), true
}

func skipBlockComment(s string, i int) int {
	depth := 1
	for i < len(s) && depth > 0 {
		switch {
		case strings.HasPrefix(s[i:], "/*"):
			depth++
			i += 2
		case strings.HasPrefix(s[i:], "*/"):
			depth--
			i += 2
		default:
			i++
		}
	}
	return i
}
