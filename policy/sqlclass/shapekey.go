package sqlclass

import "unicode/utf8"

// pgShapeKey appends to dst a key for text in which every plain numeric and
// string literal is replaced by a marker, so "SELECT * FROM t WHERE id = 1"
// and "... id = 2" share one cache entry. The markers start with NUL, which
// PostgreSQL query text can never contain, so no real text collides with a
// key.
//
// It is deliberately conservative: whenever the lexical structure is not
// certain (backslashes in strings, prefixed strings such as E'x' or U&'x',
// numbers glued to identifiers, unterminated quotes or comments, a NUL byte,
// bytes that are not UTF-8, which the parser refuses in a literal but not in
// a comment) it returns false and the caller keys by the exact text. A wrong key would
// let one statement borrow another's classification, so when in doubt, no.
//
// An empty string literal keeps a marker of its own, because emptiness is
// the one property of a literal a classification could notice.
func pgShapeKey(dst []byte, text string) ([]byte, bool) {
	dst = dst[:0]
	if !utf8.ValidString(text) {
		return dst, false
	}
	n := len(text)
	for i := 0; i < n; {
		c := text[i]
		switch {
		case c == 0:
			return dst, false
		case c == '-' && i+1 < n && text[i+1] == '-':
			j := i
			for j < n && text[j] != '\n' && text[j] != '\r' {
				j++
			}
			dst = append(dst, text[i:j]...)
			i = j
		case c == '/' && i+1 < n && text[i+1] == '*':
			j, depth := i+2, 1
			for j < n && depth > 0 {
				switch {
				case text[j] == '/' && j+1 < n && text[j+1] == '*':
					depth++
					j += 2
				case text[j] == '*' && j+1 < n && text[j+1] == '/':
					depth--
					j += 2
				default:
					j++
				}
			}
			if depth > 0 {
				return dst, false
			}
			dst = append(dst, text[i:j]...)
			i = j
		case c == '\'':
			if i > 0 && (identByte(text[i-1]) || text[i-1] == '&' || text[i-1] == '\'') {
				return dst, false // E'..', B'..', X'..', N'..', U&'..'
			}
			j := i + 1
			for {
				if j >= n {
					return dst, false
				}
				if text[j] == '\\' || text[j] == 0 {
					return dst, false
				}
				if text[j] == '\'' {
					if j+1 < n && text[j+1] == '\'' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			if j+1 < n && identByte(text[j+1]) {
				return dst, false
			}
			if j == i+1 {
				dst = append(dst, 0, 'e')
			} else {
				dst = append(dst, 0, 's')
			}
			i = j + 1
		case c == '"':
			j := i + 1
			for {
				if j >= n {
					return dst, false
				}
				if text[j] == '"' {
					if j+1 < n && text[j+1] == '"' {
						j += 2
						continue
					}
					break
				}
				j++
			}
			dst = append(dst, text[i:j+1]...)
			i = j + 1
		case c == '$':
			j := i + 1
			for j < n && text[j] >= '0' && text[j] <= '9' {
				j++
			}
			if j == i+1 || (j < n && identByte(text[j])) {
				return dst, false // dollar quoting or something unusual
			}
			dst = append(dst, text[i:j]...)
			i = j
		case c >= '0' && c <= '9':
			j := i
			for j < n && text[j] >= '0' && text[j] <= '9' {
				j++
			}
			if j < n && text[j] == '.' {
				j++
				for j < n && text[j] >= '0' && text[j] <= '9' {
					j++
				}
			}
			if j < n && (identByte(text[j]) || text[j] == '.' || text[j] == '\'') {
				return dst, false // exponents, 0x.., 1_000, 1abc: keep exact
			}
			dst = append(dst, 0, 'n')
			i = j
		case identByte(c):
			j := i
			for j < n && (identByte(text[j]) || text[j] == '$') {
				j++
			}
			dst = append(dst, text[i:j]...)
			i = j
		default:
			dst = append(dst, c)
			i++
		}
	}
	return dst, true
}

// identByte reports whether b may continue an identifier (letters, digits,
// underscore, and any byte of a multi-byte UTF-8 character).
func identByte(b byte) bool {
	return b == '_' || b >= 0x80 || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9')
}
