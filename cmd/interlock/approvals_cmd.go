package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/control"
)

const approvalsUsage = `usage:
  interlock approvals [--state pending|approved|denied|expired|cancelled|all] [--host H] [--limit N] [--json]
  interlock approve ID [--comment TEXT]
  interlock deny ID [--comment TEXT]
`

// runApprovals runs the approval commands: "approvals" lists the queue
// (pending requests of every host sharing the store, by default), "approve"
// and "deny" vote on one request as the calling user, whom the daemon
// identifies from the socket's kernel credentials. It returns the exit code:
// 0 done, 1 refused or failed, 2 usage.
func runApprovals(ctx context.Context, c *control.Client, cmd string, args []string, stdout, stderr io.Writer) int {
	var err error
	switch cmd {
	case "approvals":
		err = listApprovals(ctx, c, args, stdout, stderr)
	case "approve", "deny":
		err = decideApproval(ctx, c, cmd == "approve", args, stdout, stderr)
	default:
		err = errUsage
	}
	switch {
	case errors.Is(err, errUsage), errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stderr, approvalsUsage)
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "interlock %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

var errUsage = errors.New("usage")

func listApprovals(ctx context.Context, c *control.Client, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("approvals", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	state := fs.String("state", "pending", "which approvals: pending, approved, denied, expired, cancelled or all")
	host := fs.String("host", "", "only approvals held on this host")
	limit := fs.Int("limit", 100, "at most this many, newest first")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "interlock approvals: %v\n", err)
		return errUsage
	}
	if fs.NArg() > 0 {
		return errUsage
	}
	q := url.Values{}
	if *state != "all" {
		q.Set("state", *state)
	}
	if *host != "" {
		q.Set("host", *host)
	}
	q.Set("limit", strconv.Itoa(*limit))
	var list []approvals.View
	if err := c.Call(ctx, approvals.ControlPrefix+"?"+q.Encode(), nil, &list); err != nil {
		return err
	}
	if *asJSON {
		e := json.NewEncoder(stdout)
		e.SetIndent("", "  ")
		return e.Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintf(stdout, "no %s approvals\n", strings.TrimPrefix(*state, "all"))
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tREQUESTED\tHOST\tIDENTITY\tPID\tTARGET\tRULE\tVOTES\tSTATE\tSTATEMENT")
	now := time.Now()
	for _, a := range list {
		st := a.State
		if st == "pending" {
			st = "pending, denied in " + a.Deadline.Sub(now).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d/%d\t%s\t%s\n", a.ID, a.Requested.Local().Format("15:04:05"),
			a.Host, a.Identity, a.PID, a.Target, a.Rule, a.Approvals(), a.Quorum, st, clip(a.Statement, 60))
	}
	return tw.Flush()
}

func decideApproval(ctx context.Context, c *control.Client, approve bool, args []string, stdout, stderr io.Writer) error {
	name := "deny"
	if approve {
		name = "approve"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	comment := fs.String("comment", "", "why, recorded with the vote and in the audit trail")
	pos, err := interleaved(fs, args)
	if err != nil {
		fmt.Fprintf(stderr, "interlock %s: %v\n", name, err)
		return errUsage
	}
	if len(pos) != 1 {
		return errUsage
	}
	var v approvals.View
	if err := c.Call(ctx, approvals.ControlPrefix+"/"+url.PathEscape(pos[0])+"/"+name,
		approvals.DecideRequest{Comment: *comment}, &v); err != nil {
		return err
	}
	switch v.State {
	case "pending":
		fmt.Fprintf(stdout, "%s: your approval is recorded; %d of %d approvals, still pending\n", v.ID, v.Approvals(), v.Quorum)
	default:
		fmt.Fprintf(stdout, "%s: %s (%s on %s: %s)\n", v.ID, v.State, v.Identity, v.Target, clip(v.Statement, 80))
	}
	return nil
}

// clip shortens s to one line of at most n runes for a table cell.
func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
