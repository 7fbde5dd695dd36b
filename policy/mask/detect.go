package mask

import (
	"bytes"
	"encoding/base64"
	"sort"
)

// A finder returns the first match in s at or after from as [start, end),
// or start -1. Finders never allocate on values that do not match.
type finder func(s []byte, from int) (start, end int)

// detectors maps detector names (as written in policy files) to finders.
var detectors = map[string]finder{
	"email":        findEmail,
	"card":         findCard,
	"us_ssn":       findSSN,
	"iban":         findIBAN,
	"jwt":          findJWT,
	"aws_key":      findAWSKey,
	"gcp_key":      findGCPKey,
	"github_token": findGitHubToken,
	"private_key":  findPrivateKey,
}

// detectorGroups are names that stand for several detectors.
var detectorGroups = map[string][]string{
	"pii":     {"email", "card", "us_ssn", "iban"},
	"secrets": {"jwt", "aws_key", "gcp_key", "github_token", "private_key"},
}

// DetectorNames lists every detector and group name, sorted.
func DetectorNames() []string {
	var n []string
	for k := range detectors {
		n = append(n, k)
	}
	for k := range detectorGroups {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Find reports the first span of s that detector name matches, for tests
// and tools; ok is false for an unknown name.
func Find(name string, s []byte) (start, end int, ok bool) {
	f, ok := detectors[name]
	if !ok {
		return -1, -1, false
	}
	start, end = f(s, 0)
	return start, end, true
}

func isDigit(b byte) bool  { return b >= '0' && b <= '9' }
func isUpper(b byte) bool  { return b >= 'A' && b <= 'Z' }
func isAlpha(b byte) bool  { return isUpper(b) || (b >= 'a' && b <= 'z') }
func isAlnum(b byte) bool  { return isAlpha(b) || isDigit(b) }
func isB64URL(b byte) bool { return isAlnum(b) || b == '-' || b == '_' }

// boundary reports whether s[i] (if it exists) is not an alphanumeric, so a
// match starting or ending there is a whole token.
func boundary(s []byte, i int) bool { return i < 0 || i >= len(s) || !isAlnum(s[i]) }

// findEmail matches local@domain.tld with a letters-only TLD of 2+.
func findEmail(s []byte, from int) (int, int) {
	from0 := from
	for from < len(s) {
		at := bytes.IndexByte(s[from:], '@')
		if at < 0 {
			return -1, -1
		}
		at += from
		// The local part never reaches back before from: what lies there was
		// matched (and masked) by another detector already.
		start := at
		for start > from0 && emailLocal(s[start-1]) {
			start--
		}
		for start < at && (s[start] == '.' || s[start] == '-') {
			start++
		}
		end := at + 1
		for end < len(s) && (isAlnum(s[end]) || s[end] == '-' || s[end] == '.') {
			if s[end] == '.' && (end == at+1 || s[end-1] == '.') {
				break
			}
			end++
		}
		for end > at+1 && (s[end-1] == '.' || s[end-1] == '-') {
			end--
		}
		lastDot := bytes.LastIndexByte(s[at+1:end], '.') + at + 1
		if start < at && lastDot > at+1 && lastDot < end-2 {
			tldOK := true
			for i := lastDot + 1; i < end; i++ {
				if !isAlpha(s[i]) {
					tldOK = false
					break
				}
			}
			if tldOK {
				return start, end
			}
		}
		from = at + 1
	}
	return -1, -1
}

func emailLocal(b byte) bool {
	return isAlnum(b) || b == '.' || b == '_' || b == '%' || b == '+' || b == '-'
}

// findCard matches 13-19 digits, optionally grouped by single spaces or
// dashes, whose issuer prefix and length fit a real card scheme and whose
// Luhn checksum is valid.
func findCard(s []byte, from int) (int, int) {
	var digits [19]byte
	for i := from; i < len(s); i++ {
		if !isDigit(s[i]) || !boundary(s, i-1) {
			continue
		}
		n, j, sep := 0, i, byte(0)
		for j < len(s) {
			c := s[j]
			if isDigit(c) {
				if n == len(digits) {
					n++ // too long: reject below
					break
				}
				digits[n] = c
				n++
				j++
				continue
			}
			if (c == ' ' || c == '-') && j+1 < len(s) && isDigit(s[j+1]) && (sep == 0 || sep == c) {
				sep = c
				j++
				continue
			}
			break
		}
		if n >= 13 && n <= 19 && boundary(s, j) && cardScheme(digits[:n]) && luhn(digits[:n]) {
			return i, j
		}
		i = j // skip the rest of this run
	}
	return -1, -1
}

// cardScheme checks issuer prefix against length for the major schemes.
func cardScheme(d []byte) bool {
	n := len(d)
	p2 := int(d[0]-'0')*10 + int(d[1]-'0')
	p4 := p2*100 + int(d[2]-'0')*10 + int(d[3]-'0')
	switch {
	case d[0] == '4': // Visa
		return n == 13 || n == 16 || n == 19
	case p2 >= 51 && p2 <= 55, p4 >= 2221 && p4 <= 2720: // Mastercard
		return n == 16
	case p2 == 34 || p2 == 37: // American Express
		return n == 15
	case p4 == 6011 || p2 == 65 || (p4 >= 6440 && p4 <= 6499): // Discover
		return n >= 16
	case p2 == 36 || p2 == 38 || (p4 >= 3000 && p4 <= 3059): // Diners
		return n == 14 || n == 16
	case p4 >= 3528 && p4 <= 3589: // JCB
		return n >= 16
	case p2 == 62: // UnionPay
		return n >= 16
	}
	return false
}

func luhn(d []byte) bool {
	sum, dbl := 0, false
	for i := len(d) - 1; i >= 0; i-- {
		v := int(d[i] - '0')
		if dbl {
			v *= 2
			if v > 9 {
				v -= 9
			}
		}
		sum += v
		dbl = !dbl
	}
	return sum%10 == 0
}

// findSSN matches a US Social Security number written AAA-GG-SSSS, with the
// area, group and serial ranges the SSA never issues excluded. Undashed nine
// digit runs are not matched: too many ordinary numbers look like them.
func findSSN(s []byte, from int) (int, int) {
	for i := from; i+11 <= len(s); i++ {
		if !boundary(s, i-1) || !boundary(s, i+11) || s[i+3] != '-' || s[i+6] != '-' {
			continue
		}
		if s[i+11-1] == '-' || (i+11 < len(s) && s[i+11] == '-') || (i > 0 && s[i-1] == '-') {
			continue
		}
		ok := true
		for _, k := range [...]int{0, 1, 2, 4, 5, 7, 8, 9, 10} {
			if !isDigit(s[i+k]) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		area := string(s[i : i+3])
		if area == "000" || area == "666" || s[i] == '9' || string(s[i+4:i+6]) == "00" || string(s[i+7:i+11]) == "0000" {
			continue
		}
		return i, i + 11
	}
	return -1, -1
}

// ibanLengths holds the IBAN length per country (SWIFT IBAN registry).
var ibanLengths = map[string]int{
	"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
	"BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
	"EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
	"GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
	"KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
	"ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
	"PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
	"SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}

// findIBAN matches an IBAN, compact or in groups of four separated by
// single spaces, with the country's length and a valid mod-97 checksum.
func findIBAN(s []byte, from int) (int, int) {
	var buf [34]byte
	for i := from; i+15 <= len(s); i++ {
		if !isUpper(s[i]) || !isUpper(s[i+1]) || !isDigit(s[i+2]) || !isDigit(s[i+3]) || !boundary(s, i-1) {
			continue
		}
		want, ok := ibanLengths[string(s[i:i+2])]
		if !ok {
			continue
		}
		n, j := 0, i
		for j < len(s) && n < want {
			c := s[j]
			switch {
			case isUpper(c) || isDigit(c):
				buf[n] = c
				n++
				j++
			case c == ' ' && n%4 == 0 && n > 0 && j+1 < len(s) && isAlnum(s[j+1]):
				j++
			default:
				goto done
			}
		}
	done:
		if n == want && boundary(s, j) && ibanValid(buf[:n]) {
			return i, j
		}
	}
	return -1, -1
}

// ibanValid computes the ISO 13616 mod-97 check without big numbers.
func ibanValid(b []byte) bool {
	rem := 0
	step := func(c byte) {
		if isDigit(c) {
			rem = (rem*10 + int(c-'0')) % 97
		} else {
			v := int(c-'A') + 10
			rem = (rem*100 + v) % 97
		}
	}
	for _, c := range b[4:] {
		step(c)
	}
	for _, c := range b[:4] {
		step(c)
	}
	return rem == 1
}

// findJWT matches header.payload.signature where header and payload are
// base64url JSON objects ("eyJ" is the encoding of `{"`) and the header
// decodes to JSON naming "alg" or "typ".
func findJWT(s []byte, from int) (int, int) {
	for from < len(s) {
		k := bytes.Index(s[from:], []byte("eyJ"))
		if k < 0 {
			return -1, -1
		}
		i := from + k
		from = i + 1
		if i > 0 && isB64URL(s[i-1]) {
			continue
		}
		j := i
		for j < len(s) && isB64URL(s[j]) {
			j++
		}
		h := s[i:j]
		if len(h) < 10 || j+4 >= len(s) || s[j] != '.' || !bytes.HasPrefix(s[j+1:], []byte("eyJ")) {
			continue
		}
		p := j + 1
		for p < len(s) && isB64URL(s[p]) {
			p++
		}
		if p >= len(s) || s[p] != '.' || p-j-1 < 10 {
			continue
		}
		e := p + 1
		for e < len(s) && isB64URL(s[e]) {
			e++
		}
		var dec [256]byte
		hh := h
		if len(hh) > 340 {
			hh = hh[:340]
		}
		hh = hh[:len(hh)/4*4]
		n, err := base64.RawURLEncoding.Decode(dec[:], hh)
		if err != nil && n == 0 {
			continue
		}
		if bytes.Contains(dec[:n], []byte(`"alg"`)) || bytes.Contains(dec[:n], []byte(`"typ"`)) {
			return i, e
		}
	}
	return -1, -1
}

// findAWSKey matches AWS access key ids (AKIA temporary ASIA and the other
// documented unique-id prefixes) followed by 16 upper-case letters or digits.
func findAWSKey(s []byte, from int) (int, int) {
	for i := from; i+20 <= len(s); i++ {
		if s[i] != 'A' || !boundary(s, i-1) || !boundary(s, i+20) {
			continue
		}
		switch string(s[i : i+4]) {
		case "AKIA", "ASIA", "ABIA", "ACCA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "AGPA":
		default:
			continue
		}
		ok := true
		for _, c := range s[i+4 : i+20] {
			if !isUpper(c) && !isDigit(c) {
				ok = false
				break
			}
		}
		if ok {
			return i, i + 20
		}
	}
	return -1, -1
}

// findGCPKey matches Google Cloud API keys: "AIza" and 35 base64url bytes.
func findGCPKey(s []byte, from int) (int, int) {
	for from < len(s) {
		k := bytes.Index(s[from:], []byte("AIza"))
		if k < 0 {
			return -1, -1
		}
		i := from + k
		from = i + 1
		if i+39 > len(s) || (i > 0 && isB64URL(s[i-1])) || (i+39 < len(s) && isB64URL(s[i+39])) {
			continue
		}
		ok := true
		for _, c := range s[i+4 : i+39] {
			if !isB64URL(c) {
				ok = false
				break
			}
		}
		if ok {
			return i, i + 39
		}
	}
	return -1, -1
}

// findGitHubToken matches GitHub tokens: gh[pousr]_ and 36 alphanumerics,
// or github_pat_ and 82 word characters.
func findGitHubToken(s []byte, from int) (int, int) {
	for i := from; i+40 <= len(s); i++ {
		if s[i] != 'g' || s[i+1] != 'h' || !boundary(s, i-1) {
			continue
		}
		if bytes.HasPrefix(s[i:], []byte("github_pat_")) {
			e := i + 11
			for e < len(s) && (isAlnum(s[e]) || s[e] == '_') {
				e++
			}
			if e-i-11 >= 70 {
				return i, e
			}
			continue
		}
		if bytes.IndexByte([]byte("pousr"), s[i+2]) < 0 || s[i+3] != '_' {
			continue
		}
		ok := true
		for _, c := range s[i+4 : i+40] {
			if !isAlnum(c) {
				ok = false
				break
			}
		}
		if ok && boundary(s, i+40) {
			return i, i + 40
		}
	}
	return -1, -1
}

// findPrivateKey matches a PEM private key block (any algorithm, encrypted
// or not) through its END line, or to the end of the value if cut short.
func findPrivateKey(s []byte, from int) (int, int) {
	for from < len(s) {
		k := bytes.Index(s[from:], []byte("-----BEGIN "))
		if k < 0 {
			return -1, -1
		}
		i := from + k
		from = i + 1
		lineEnd := bytes.IndexByte(s[i:], '\n')
		head := s[i:]
		if lineEnd >= 0 {
			head = s[i : i+lineEnd]
		}
		if !bytes.Contains(head, []byte("PRIVATE KEY-----")) {
			continue
		}
		end := bytes.Index(s[i:], []byte("-----END "))
		if end < 0 {
			return i, len(s)
		}
		e := i + end + len("-----END ")
		if t := bytes.Index(s[e:], []byte("-----")); t >= 0 {
			return i, e + t + 5
		}
		return i, len(s)
	}
	return -1, -1
}
