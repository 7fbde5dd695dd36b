package transcript

import (
	"strings"
	"testing"
)

func TestGeneric(t *testing.T) {
	var d Describer = Generic{}
	for _, tc := range []struct {
		typ  byte
		body string
		want string
	}{
		{0, "GET / HTTP/1.1\r\n", `data 16 bytes: GET / HTTP/1.1\r\n`},
		{'Q', "\x00\xff", `type 'Q' 2 bytes: \x00\xff`},
		{0, strings.Repeat("é", 81), strings.Repeat("é", 80) + "... (162 bytes)"},
	} {
		got := d.Describe(true, tc.typ, []byte(tc.body))
		if len(got) != 1 || !strings.HasSuffix(got[0], tc.want) {
			t.Errorf("Describe(%q, %q) = %q, want one line ending %q", tc.typ, tc.body, got, tc.want)
		}
	}
	if d.Finish() != nil {
		t.Error("Generic keeps no state to finish")
	}
}
