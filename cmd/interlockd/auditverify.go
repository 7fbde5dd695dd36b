package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/interlock-dev/interlock/agent/daemon"
)

// verifyAudit verifies a store's audit chains with no daemon running and
// prints one control.AuditVerdict per host as a JSON array. `interlock
// audit verify --store` runs it: reading the store takes SQLite and the
// PostgreSQL driver, which the CLI does not link. A broken chain is a
// verdict, not a failure: the exit code is 1 only when the store cannot be
// read.
func verifyAudit(storePath string, stdout, stderr io.Writer) int {
	vs, err := daemon.VerifyAuditStore(context.Background(), storePath)
	if err != nil {
		fmt.Fprintf(stderr, "interlockd: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(stdout).Encode(vs); err != nil {
		fmt.Fprintf(stderr, "interlockd: %v\n", err)
		return 1
	}
	return 0
}
