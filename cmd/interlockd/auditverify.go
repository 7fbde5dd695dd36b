package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/interlock-dev/interlock/agent/daemon"
)

// verifyAudit verifies a store's or an export's audit chains with no
// daemon running and prints one control.AuditVerdict per host as a JSON
// array. `interlock audit verify --store|--export` runs it: reading the
// store takes SQLite and the PostgreSQL driver, which the CLI does not
// link. A broken chain is a verdict, not a failure: the exit code is 1
// only when the input cannot be read.
func verifyAudit(storePath, exportPath string, stdout, stderr io.Writer) int {
	if storePath != "" && exportPath != "" {
		fmt.Fprintln(stderr, "interlockd: give one of --audit-verify-store and --audit-verify-export")
		return 2
	}
	vs, err := daemon.VerifyAudit(context.Background(), storePath, exportPath)
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
