package sqlclass

import "strings"

// RedactLiterals returns PostgreSQL query text with every literal constant
// (quoted strings, E-strings, dollar-quoted strings, bit and hex strings,
// numbers) replaced by '?' and comments dropped, keeping the statement's
// shape, tables, columns and $n parameters: "ALTER ROLE app PASSWORD
// 'hunter2'" becomes "ALTER ROLE app PASSWORD ?". Identifiers, quoted ones
// included, are kept. It never fails: a quote or comment left open runs to
// the end of the text and is dropped with it.
func RedactLiterals(text string) string {
	var b strings.Builder
	b.Grow(len(text))
	l := pgLexer{text: text}
	for l.more() {
		p := l.next()
		switch p.kind {
		case pieceString, pieceOtherString, pieceNumber:
			b.WriteByte('?')
		case pieceLineComment:
		case pieceBlockComment:
			b.WriteByte(' ')
		default:
			b.WriteString(p.text)
		}
	}
	return strings.TrimSpace(b.String())
}

// pieceKind says what a piece of query text is.
type pieceKind uint8

const (
	// pieceCode is everything that is neither a literal nor a comment:
	// keywords, identifiers (quoted or not), operators, $n parameters.
	pieceCode pieceKind = iota
	pieceLineComment
	pieceBlockComment
	// pieceString is a plain quoted string, 'it''s'.
	pieceString
	// pieceOtherString is a string whose text depends on more than its
	// quotes: E'..', B'..', X'..', N'..', U'..', $tag$..$tag$.
	pieceOtherString
	pieceNumber
)

// piece is one lexical piece of query text.
type piece struct {
	kind pieceKind
	text string
	// exact is false when PostgreSQL's reading of the piece cannot be
	// known from the text alone, or the piece ends the text unfinished: an
	// open quote or comment, a backslash in a plain string (it escapes when
	// standard_conforming_strings is off), a string or number glued to a
	// name, a number with an exponent, a base or separators, a '$' that
	// starts no parameter, any prefixed or dollar-quoted string.
	exact bool
}

// pgLexer splits PostgreSQL query text into pieces, telling literal
// constants and comments from the rest. It is the one place that knows where
// a PostgreSQL literal begins and ends, for the classifier's shape key
// (which refuses any piece that is not exact) and for RedactLiterals (which
// redacts every literal, exact or not). It never fails and never allocates.
type pgLexer struct {
	text string
	i    int
}

func (l *pgLexer) more() bool { return l.i < len(l.text) }

// next returns the piece at the current position and moves past it. The
// caller checks more first.
func (l *pgLexer) next() piece {
	s, i := l.text, l.i
	c := s[i]
	p := piece{kind: pieceCode, exact: true}
	j := i + 1
	switch {
	case c == '\'':
		var closed bool
		j, closed = skipQuoted(s, i+1, false)
		p.kind = pieceString
		prev := prevByte(s, i)
		p.exact = closed && !identByte(prev) && prev != '&' && !strings.ContainsAny(s[i+1:j-1], "\\\x00") &&
			(j == len(s) || !identByte(s[j]))
	case (c == 'E' || c == 'e') && i+1 < len(s) && s[i+1] == '\'' && !identByte(prevByte(s, i)):
		j, _ = skipQuoted(s, i+2, true)
		p.kind, p.exact = pieceOtherString, false
	case (c == 'B' || c == 'b' || c == 'X' || c == 'x' || c == 'U' || c == 'u' || c == 'N' || c == 'n') &&
		i+1 < len(s) && s[i+1] == '\'' && !identByte(prevByte(s, i)):
		j, _ = skipQuoted(s, i+2, false)
		p.kind, p.exact = pieceOtherString, false
	case c == '$' && !identByte(prevByte(s, i)):
		if end, ok := dollarQuoted(s, i); ok {
			j = end
			p.kind, p.exact = pieceOtherString, false
			break
		}
		// $1 parameters stay: they are placeholders, not values.
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		p.exact = j > i+1 && (j == len(s) || !identByte(s[j]))
	case c == '-' && i+1 < len(s) && s[i+1] == '-':
		j = i + 2
		for j < len(s) && s[j] != '\n' && s[j] != '\r' {
			j++
		}
		p.kind = pieceLineComment
	case c == '/' && i+1 < len(s) && s[i+1] == '*':
		j, p.exact = skipBlockComment(s, i+2)
		p.kind = pieceBlockComment
	case c == '"':
		p.exact = false
		for j < len(s) {
			if s[j] == '"' {
				if j+1 < len(s) && s[j+1] == '"' {
					j += 2
					continue
				}
				j++
				p.exact = true
				break
			}
			j++
		}
	case (c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9') && !identByte(prevByte(s, i)):
		j = i
		for j < len(s) && (identByte(s[j]) || s[j] == '.' ||
			(s[j] == '+' || s[j] == '-') && (s[j-1] == 'e' || s[j-1] == 'E')) {
			j++
		}
		p.kind = pieceNumber
		p.exact = plainNumber(s[i:j]) && (j == len(s) || s[j] != '\'')
	case identByte(c):
		for j < len(s) && identByte(s[j]) {
			j++
		}
	}
	p.text = s[i:j]
	l.i = j
	return p
}

// plainNumber reports whether n is digits with at most one decimal point,
// the only numbers the shape key folds: an exponent, a base prefix (0x1F),
// separators (1_000) or letters glued on are keyed by their exact text.
func plainNumber(n string) bool {
	dot := false
	for i := 0; i < len(n); i++ {
		switch {
		case n[i] >= '0' && n[i] <= '9':
		case n[i] == '.' && !dot:
			dot = true
		default:
			return false
		}
	}
	return true
}

func prevByte(s string, i int) byte {
	if i == 0 {
		return ' '
	}
	return s[i-1]
}

// identByte reports whether b may continue an identifier: letters, digits,
// underscore, '$' and any byte of a multi-byte UTF-8 character.
func identByte(b byte) bool {
	return b == '_' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b >= 0x80 || b == '$'
}

// skipQuoted returns the index after the closing quote of a literal whose
// body starts at i and true, or len(s) and false when the quote is never
// closed; a doubled quote is an escaped quote and, with backslash, so is a
// backslash-quote.
func skipQuoted(s string, i int, backslash bool) (int, bool) {
	for i < len(s) {
		switch {
		case backslash && s[i] == '\\':
			i += 2
		case s[i] == '\'':
			if i+1 < len(s) && s[i+1] == '\'' {
				i += 2
				continue
			}
			return i + 1, true
		default:
			i++
		}
	}
	return len(s), false
}

// dollarQuoted recognizes $tag$...$tag$ starting at i; an unclosed one runs
// to the end of s.
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

// skipBlockComment returns the index after the end of a block comment whose
// body starts at i (block comments nest), and whether it ends at all.
func skipBlockComment(s string, i int) (int, bool) {
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
	return i, depth == 0
}
