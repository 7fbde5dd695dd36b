package chain

import (
	"strings"
	"testing"
	"time"
)

// TestHashFormat: a record's hash is what every stored and exported trail
// was sealed with; a change of its computation would break them all on
// upgrade. The vector is the hash as first computed (sha256 of the
// documented preimage, written field by field).
func TestHashFormat(t *testing.T) {
	r := Record{Host: "h1", Seq: 42, Time: time.Unix(1764979200, 123456789).UTC(), Kind: "connection_open",
		Payload: `{"session":"s1","identity":"ci"}`, PrevHash: GenesisHash}
	const want = "887db5c5746ebf81b092737733df9e8977395207e1db8cb1277b86685ad09e48"
	if got := Hash(r); got != want {
		t.Fatalf("Hash = %s, want %s", got, want)
	}
	// A Hasher reused across records of other sizes, one past the buffer
	// it keeps, gives each the same.
	var h Hasher
	big := r
	big.Payload = `"` + strings.Repeat("x", 2*maxKeptPreimage) + `"`
	for _, rec := range []Record{big, r, {Host: "h2"}, r} {
		if got, want := h.Hash(rec), Hash(rec); got != want {
			t.Fatalf("Hasher.Hash = %s, want %s", got, want)
		}
	}
}

// TestHasherAllocatesTheHashOnly: the audit log hashes every record it
// appends; the preimage's buffer and the digest are the Hasher's, so the
// hex string is all a record costs.
func TestHasherAllocatesTheHashOnly(t *testing.T) {
	r := Record{Host: "h1", Seq: 42, Time: time.Now(), Kind: "connection_open",
		Payload: strings.Repeat("p", 400), PrevHash: GenesisHash}
	var h Hasher
	h.Hash(r)
	if n := testing.AllocsPerRun(100, func() { h.Hash(r) }); n > 1 {
		t.Errorf("%v allocations a record, want 1 (the hex string)", n)
	}
}
