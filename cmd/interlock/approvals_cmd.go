package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/decoders/transcript"
)

// approvalOptions are the approvals command's flags.
type approvalOptions struct {
	state, host string
	limit       int
	json        bool
}

func newApprovalsCmd(a *cli) *cobra.Command {
	var o approvalOptions
	cmd := &cobra.Command{
		Use:   "approvals",
		Short: "List requests held for a reviewer's approval",
		Long: `approvals lists the requests a policy's approve rules hold, newest first:
by default the pending ones of every host sharing the store, each with its
votes so far and the time left before the request is denied.`,
		Example: `  interlock approvals
  interlock approvals --state all --host db-1 --limit 20
  interlock approvals --json | jq -r '.[].id'`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return reportAs(a, "approvals", listApprovals(cmd.Context(), a.client(), o, a.stdout))
		},
	}
	cmd.Flags().StringVar(&o.state, "state", "pending", "which approvals: pending, approved, denied, expired, cancelled or all")
	cmd.Flags().StringVar(&o.host, "host", "", "only approvals held on this host")
	cmd.Flags().IntVar(&o.limit, "limit", 100, "at most this many, newest first")
	cmd.Flags().BoolVar(&o.json, "json", false, "print JSON")
	cmd.RegisterFlagCompletionFunc("state", oneOf("pending", "approved", "denied", "expired", "cancelled", "all"))
	return cmd
}

// newDecideCmd returns approve or deny: a vote on one held request as the
// calling user, whom the daemon identifies from the socket's kernel
// credentials.
func newDecideCmd(a *cli, approve bool) *cobra.Command {
	name, verb := "deny", "Deny"
	if approve {
		name, verb = "approve", "Approve"
	}
	var comment string
	cmd := &cobra.Command{
		Use:   name + " ID [--comment TEXT]",
		Short: verb + " a held request",
		Long: name + ` votes on a held request as the calling user, whom interlockd knows from
the control socket's kernel credentials: the user must be one of the rule's
reviewers, and never the user the held process runs as. A request is
approved once its quorum of reviewers approve, and denied by one deny. The
vote and its comment enter the audit trail.`,
		Example: "  interlock " + name + " 01JD2Y8M4X --comment 'ticket OPS-1234'",
		Args:    usage(oneID),
		RunE: func(cmd *cobra.Command, args []string) error {
			return reportAs(a, name, decideApproval(cmd.Context(), a.client(), approve, args[0], comment, a.stdout))
		},
		ValidArgsFunction: noFiles,
	}
	cmd.Flags().StringVar(&comment, "comment", "", "why, recorded with the vote and in the audit trail")
	return cmd
}

// reportAs prints a failed approval command's error under its own name, as
// "interlock approve: ...", and exits 1.
func reportAs(a *cli, name string, err error) error {
	if err != nil {
		fmt.Fprintf(a.stderr, "interlock %s: %v\n", name, err)
		return exitStatus(1)
	}
	return nil
}

func listApprovals(ctx context.Context, c *control.Client, o approvalOptions, stdout io.Writer) error {
	q := url.Values{}
	if o.state != "all" {
		q.Set("state", o.state)
	}
	if o.host != "" {
		q.Set("host", o.host)
	}
	q.Set("limit", strconv.Itoa(o.limit))
	var list []control.ApprovalView
	if err := c.Call(ctx, control.ApprovalsPrefix+"?"+q.Encode(), nil, &list); err != nil {
		return err
	}
	if o.json {
		return printJSON(stdout, list)
	}
	if len(list) == 0 {
		fmt.Fprintf(stdout, "no %s approvals\n", strings.TrimPrefix(o.state, "all"))
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

func decideApproval(ctx context.Context, c *control.Client, approve bool, id, comment string, stdout io.Writer) error {
	name := "deny"
	if approve {
		name = "approve"
	}
	var v control.ApprovalView
	if err := c.Call(ctx, control.ApprovalsPrefix+"/"+url.PathEscape(id)+"/"+name,
		control.DecideRequest{Comment: comment}, &v); err != nil {
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

// clip shortens s to one line of at most n runes for a table cell, with
// what a terminal would act on escaped (transcript.Line): a reviewer sees
// the whole of what is held, not what an escape sequence left visible.
func clip(s string, n int) string {
	s = transcript.Line(strings.Join(strings.Fields(s), " "))
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
