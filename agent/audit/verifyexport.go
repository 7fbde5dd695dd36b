package audit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/interlock-dev/interlock/agent/store"
)

// VerifyExport verifies the chains in an Export (JSON lines) with no store
// and no daemon: every record's hash is recomputed from the exported
// fields, so a copy kept elsewhere can be checked on its own. Results are
// per host, in the order hosts first appear. The error return is for input
// that is not an export, not for a broken chain.
func VerifyExport(r io.Reader) ([]Result, error) {
	checks := map[string]*chainCheck{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	for line := 1; sc.Scan(); line++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var e ExportedRecord
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("read export line %d: %w", line, err)
		}
		c, ok := checks[e.Host]
		if !ok {
			c = newChainCheck(e.Host)
			checks[e.Host] = c
			order = append(order, e.Host)
		}
		c.next(store.AuditRecord{Host: e.Host, Seq: e.Seq, Time: e.Time, Kind: e.Kind,
			Payload: string(e.Payload), PrevHash: e.PrevHash, Hash: e.Hash})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read export: %w", err)
	}
	out := make([]Result, 0, len(order))
	for _, h := range order {
		out = append(out, checks[h].res)
	}
	return out, nil
}
