package sqlclass

import (
	"strings"
	"unicode/utf8"
)

// pgShapeKey appends to dst a key for text in which every plain numeric and
// string literal is replaced by a marker, so "SELECT * FROM t WHERE id = 1"
// and "... id = 2" share one cache entry. The markers start with NUL, which
// PostgreSQL query text can never contain, so no real text collides with a
// key.
//
// It is deliberately conservative: whenever the lexical structure is not
// certain (a piece pgLexer does not call exact, a NUL byte, bytes that are
// not UTF-8, which the parser refuses in a literal but not in a comment) it
// returns false and the caller keys by the exact text. A wrong key would
// let one statement borrow another's classification, so when in doubt, no.
//
// An empty string literal keeps a marker of its own, because emptiness is
// the one property of a literal a classification could notice.
func pgShapeKey(dst []byte, text string) ([]byte, bool) {
	dst = dst[:0]
	if !utf8.ValidString(text) || strings.IndexByte(text, 0) >= 0 {
		return dst, false
	}
	l := pgLexer{text: text}
	for l.more() {
		p := l.next()
		if !p.exact {
			return dst, false
		}
		switch p.kind {
		case pieceString:
			if len(p.text) == 2 {
				dst = append(dst, 0, 'e')
			} else {
				dst = append(dst, 0, 's')
			}
		case pieceNumber:
			dst = append(dst, 0, 'n')
		default:
			dst = append(dst, p.text...)
		}
	}
	return dst, true
}
