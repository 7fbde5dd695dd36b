package mask

import (
	"fmt"
	"math/big"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
)

func TestDetectors(t *testing.T) {
	validIBAN := "DE" + ibanCheckDigits("DE", "370400440532013000") + "370400440532013000"
	cases := []struct {
		det, in, want string // want "" means no match
	}{
		{"email", "contact: jane.doe+work@example.co.uk.", "jane.doe+work@example.co.uk"},
		{"email", "a@b.io", "a@b.io"},
		{"email", "user@localhost", ""},
		{"email", "@example.com", ""},
		{"email", "price 10@2.50", ""},
		{"card", "card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"},
		{"card", "4111-1111-1111-1111", "4111-1111-1111-1111"},
		{"card", "5500005555555559", "5500005555555559"},
		{"card", "378282246310005", "378282246310005"},
		{"card", "4111111111111112", ""},     // Luhn fails
		{"card", "1234567812345670", ""},     // Luhn ok, no such scheme
		{"card", "20250314123456", ""},       // timestamp
		{"card", "4111 1111-1111 1111", ""},  // mixed separators
		{"card", "x4111111111111111", ""},    // glued to a word
		{"card", "41111111111111111111", ""}, // too long
		{"us_ssn", "SSN 123-45-6789.", "123-45-6789"},
		{"us_ssn", "000-45-6789", ""},
		{"us_ssn", "666-45-6789", ""},
		{"us_ssn", "912-45-6789", ""},
		{"us_ssn", "123-00-6789", ""},
		{"us_ssn", "123-45-0000", ""},
		{"us_ssn", "415-555-0134", ""},
		{"us_ssn", "2024-01-15", ""},
		{"us_ssn", "123-45-6789-1", ""},
		{"iban", "pay to " + validIBAN + " today", validIBAN},
		{"iban", "GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"},
		{"iban", "GB82WEST12345698765432", "GB82WEST12345698765432"},
		{"iban", "GB83WEST12345698765432", ""}, // checksum
		{"iban", "ZZ82WEST12345698765432", ""}, // no such country
		{"jwt", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
			"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"},
		{"jwt", "eyJub3QiOiJqd3QifQ.eyJzdWIiOiIxMjM0NTY3ODkwIn0.x", ""}, // header has no alg/typ
		{"aws_key", "key=AKIAIOSFODNN7EXAMPLE;", "AKIAIOSFODNN7EXAMPLE"},
		{"aws_key", "ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"},
		{"aws_key", "AKIAIOSFODNN7EXAMPLEX", ""},
		{"aws_key", "AKIAiosfodnn7example", ""},
		{"gcp_key", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe"},
		{"gcp_key", "AIzaShort", ""},
		{"github_token", "ghp_16C7e42F292c6912E7710c838347Ae178B4a ", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"},
		{"github_token", "ghx_16C7e42F292c6912E7710c838347Ae178B4a", ""},
		{"private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\nrest",
			"-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"},
		{"private_key", "x -----BEGIN OPENSSH PRIVATE KEY-----\nb3Blb", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blb"},
		{"private_key", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", ""},
	}
	for _, c := range cases {
		s, e, ok := Find(c.det, []byte(c.in))
		if !ok {
			t.Fatalf("unknown detector %q", c.det)
		}
		got := ""
		if s >= 0 {
			got = c.in[s:e]
		}
		if got != c.want {
			t.Errorf("%s(%q) = %q, want %q", c.det, c.in, got, c.want)
		}
	}
}

// TestFindersStartAtFrom holds every finder to its contract: a match starts at
// or after from. The masker continues after each match, so a finder that
// reached back (the email local part once did, over a secret the masker had
// just replaced) made it slice the value backwards.
func TestFindersStartAtFrom(t *testing.T) {
	const key = "AKIAIOSFODNN7EXAMPLE" // AWS's documented example key
	const pemTail = "-----BEGIN RSA PRIVATE KEY-----\nMII\n-----END RSA PRIVATE KEY-----x@b.io"
	inputs := []string{
		key + ".x@b.io",
		key + "+a@b.io",
		"a.b@c.io x@y.io",
		"123-45-6789.z@b.io",
		pemTail,
	}
	for _, in := range inputs {
		for name, find := range detectors {
			for from := range len(in) + 1 {
				if s, e := find([]byte(in), from); s >= 0 && (s < from || e < s || e > len(in)) {
					t.Errorf("%s(%q, from %d) = [%d, %d)", name, in, from, s, e)
				}
			}
		}
	}
	m, err := New("x", nil, []DetectorRule{{Detector: "secrets", Method: Redact}, {Detector: "pii", Method: Redact}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The key block ends inside what looks like an e-mail's local part.
	out, _ := m.MaskValue(nil, []byte(pemTail))
	if want := "[redacted:private_key][redacted:email]"; string(out) != want {
		t.Errorf("masked %q, want %q", out, want)
	}
}

// businessValue generates ordinary business data, one value per call,
// deterministically from r: the sample the false-positive rates are
// measured on. None of it is personal data or a secret.
func businessValue(r *rand.Rand, i int) (kind, value string) {
	first := []string{"Anna", "Ben", "Chloé", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kwame", "Lena", "Mateo", "Nora", "Omar", "Priya"}
	last := []string{"Smith", "Müller", "Garcia", "Okafor", "Tanaka", "Rossi", "Novak", "Khan", "Dubois", "Larsen", "O'Brien", "Silva"}
	streets := []string{"Main St", "Oak Avenue", "Rue de Rivoli", "Hauptstraße", "Baker Street", "Calle Mayor", "Elm Road"}
	cities := []string{"Springfield", "Berlin", "Paris", "Madrid", "London", "Osaka", "Lagos", "Toronto"}
	words := []string{"widget", "blue", "large", "cotton", "shirt", "cable", "adapter", "steel", "bolt", "pack", "premium", "delivery", "invoice", "refund", "warehouse"}
	w := func(n int) string {
		var b []string
		for range n {
			b = append(b, words[r.IntN(len(words))])
		}
		return strings.Join(b, " ")
	}
	switch i % 20 {
	case 0:
		return "name", first[r.IntN(len(first))] + " " + last[r.IntN(len(last))]
	case 1:
		return "address", fmt.Sprintf("%d %s, %05d %s", 1+r.IntN(9999), streets[r.IntN(len(streets))], r.IntN(100000), cities[r.IntN(len(cities))])
	case 2:
		return "order", fmt.Sprintf("ORD-%d-%06d", 2015+r.IntN(11), r.IntN(1000000))
	case 3:
		return "amount", fmt.Sprintf("%d.%02d", r.IntN(100000), r.IntN(100))
	case 4:
		return "date", fmt.Sprintf("%04d-%02d-%02d", 2000+r.IntN(30), 1+r.IntN(12), 1+r.IntN(28))
	case 5:
		return "timestamp", fmt.Sprintf("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", 2000+r.IntN(30), 1+r.IntN(12), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1000000))
	case 6:
		switch r.IntN(4) {
		case 0:
			return "phone", fmt.Sprintf("+1 %03d-%03d-%04d", 200+r.IntN(800), r.IntN(1000), r.IntN(10000))
		case 1:
			return "phone", fmt.Sprintf("(%03d) %03d-%04d", 200+r.IntN(800), r.IntN(1000), r.IntN(10000))
		case 2:
			return "phone", fmt.Sprintf("+44 20 %04d %04d", r.IntN(10000), r.IntN(10000))
		default:
			return "phone", fmt.Sprintf("+49 30 %08d", r.IntN(100000000))
		}
	case 7:
		return "sku", fmt.Sprintf("SKU-%c%c%02d-%04d", 'A'+r.IntN(26), 'A'+r.IntN(26), r.IntN(100), r.IntN(10000))
	case 8:
		return "uuid", fmt.Sprintf("%08x-%04x-4%03x-%04x-%012x", r.Uint32(), r.IntN(1<<16), r.IntN(1<<12), 0x8000|r.IntN(1<<14), r.Int64N(1<<48))
	case 9:
		return "ip", fmt.Sprintf("%d.%d.%d.%d", r.IntN(256), r.IntN(256), r.IntN(256), r.IntN(256))
	case 10:
		return "description", w(3 + r.IntN(8))
	case 11:
		return "quantity", fmt.Sprint(r.IntN(500))
	case 12:
		return "invoice", fmt.Sprintf("INV/%d/%05d", 2015+r.IntN(11), r.IntN(100000))
	case 13:
		return "tracking", fmt.Sprintf("1Z%03d%c%c%010d", r.IntN(1000), 'A'+r.IntN(26), 'A'+r.IntN(26), r.Int64N(10000000000))
	case 14:
		return "account_ref", fmt.Sprint(r.Int64N(1_000_000_000_000)) // up to 12-digit numeric ids
	case 15:
		return "url", fmt.Sprintf("https://shop.example.com/p/%s-%d?ref=%x", words[r.IntN(len(words))], r.IntN(100000), r.Uint32())
	case 16:
		return "epoch_ms", fmt.Sprint(1_500_000_000_000 + r.Int64N(400_000_000_000)) // 13 digits
	case 17:
		if r.IntN(2) == 0 {
			return "hex_id", fmt.Sprintf("%016x%016x", r.Uint64(), r.Uint64())
		}
		// 16-digit numeric references (bank transfers, loyalty cards) are
		// ordinary data that a card detector cannot tell from a card
		// number when the checksum happens to pass.
		return "ref16", fmt.Sprintf("%016d", r.Int64N(10_000_000_000_000_000))
	case 18:
		return "note", fmt.Sprintf("Order %s shipped to %s on %04d-%02d-%02d, total %d.%02d EUR, ref %d", fmt.Sprintf("ORD-%06d", r.IntN(1000000)), cities[r.IntN(len(cities))], 2020+r.IntN(6), 1+r.IntN(12), 1+r.IntN(28), r.IntN(5000), r.IntN(100), r.Int64N(1e10))
	default:
		return "postcode", fmt.Sprintf("%c%c%d %d%c%c", 'A'+r.IntN(26), 'A'+r.IntN(26), r.IntN(10), r.IntN(10), 'A'+r.IntN(26), 'A'+r.IntN(26))
	}
}

// fpSample is the size of the generated business-data sample.
const fpSample = 200_000

// TestFalsePositiveRates measures how often each detector fires on ordinary
// business data and fails if any rate exceeds its documented ceiling.
func TestFalsePositiveRates(t *testing.T) {
	ceiling := map[string]float64{ // fraction of values, documented in policy/README.md
		"email": 0, "card": 0.002, "us_ssn": 0, "iban": 0, "jwt": 0,
		"aws_key": 0, "gcp_key": 0, "github_token": 0, "private_key": 0,
	}
	r := rand.New(rand.NewPCG(2026, 11))
	hits := map[string]int{}
	kinds := map[string]int{}
	byKind := map[string]int{}
	examples := map[string][]string{}
	for i := range fpSample {
		kind, v := businessValue(r, i)
		kinds[kind]++
		for name, f := range detectors {
			if s, e := f([]byte(v), 0); s >= 0 {
				hits[name]++
				byKind[name+" on "+kind]++
				if len(examples[name]) < 3 {
					examples[name] = append(examples[name], kind+": "+v[s:e])
				}
			}
		}
	}
	var names []string
	for n := range detectors {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		rate := float64(hits[n]) / fpSample
		t.Logf("detector %-13s false positives %5d / %d = %.4f%% %v", n, hits[n], fpSample, 100*rate, examples[n])
		for k, c := range byKind {
			if strings.HasPrefix(k, n+" on ") {
				kind := strings.TrimPrefix(k, n+" on ")
				t.Logf("    %d of %d %s values (%.2f%%)", c, kinds[kind], kind, 100*float64(c)/float64(kinds[kind]))
			}
		}
		if rate > ceiling[n] {
			t.Errorf("detector %s: false-positive rate %.4f%% above ceiling %.4f%%", n, 100*rate, 100*ceiling[n])
		}
	}
}

// ibanCheckDigits computes the two check digits for country+bban.
func ibanCheckDigits(country, bban string) string {
	var digits []byte
	for _, c := range []byte(bban + country + "00") {
		if isDigit(c) {
			digits = append(digits, c)
		} else {
			v := int(c-'A') + 10
			digits = append(digits, byte('0'+v/10), byte('0'+v%10))
		}
	}
	n, _ := new(big.Int).SetString(string(digits), 10)
	cd := 98 - new(big.Int).Mod(n, big.NewInt(97)).Int64()
	return string([]byte{byte('0' + cd/10), byte('0' + cd%10)})
}
