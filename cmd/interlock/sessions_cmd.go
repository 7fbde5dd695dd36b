package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/audit/chain"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/recording/conversation"
	"github.com/interlock-dev/interlock/agent/recording/pcap"
	"github.com/interlock-dev/interlock/decoders/transcript"
)

// sessionOptions are the sessions command's flags.
type sessionOptions struct {
	identity, target, decision, host string
	since                            sinceFlag
	limit                            int
	json                             bool
}

func newSessionsCmd(a *cli) *cobra.Command {
	var o sessionOptions
	cmd := &cobra.Command{
		Use:   "sessions",
		Short: "List recorded sessions",
		Long: `sessions lists the connections interlockd proxied and recorded, newest first:
who made them (identity, pid, executable), where they went, how long they
lasted and how they ended. Give a session's ID to replay or export.
Connections of decoded protocols (PostgreSQL, HTTP, SSH) are recorded; plain
TCP relays are audited only (interlock audit export).`,
		Example: `  interlock sessions --identity ci-bot --since 1d
  interlock sessions --decision deny --limit 10
  interlock sessions --json | jq -r '.[].ID'`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return sessions(cmd.Context(), a.client(), o, a.stdout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.identity, "identity", "", "only this identity")
	f.StringVar(&o.target, "target", "", "only this target")
	f.Var(&o.since, "since", "only sessions started within this long (e.g. 24h, 7d)")
	f.StringVar(&o.decision, "decision", "", "only sessions with a decision of this action (deny, mask, approve, allow)")
	f.StringVar(&o.host, "host", "", "only this host (fleet store)")
	f.IntVar(&o.limit, "limit", 50, "at most this many, newest first")
	f.BoolVar(&o.json, "json", false, "print JSON")
	cmd.RegisterFlagCompletionFunc("decision", oneOf("deny", "mask", "approve", "allow"))
	return cmd
}

func sessions(ctx context.Context, c *control.Client, o sessionOptions, w io.Writer) error {
	q := url.Values{}
	for k, v := range map[string]string{"identity": o.identity, "target": o.target, "decision": o.decision, "host": o.host} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if o.since > 0 {
		q.Set("since", o.since.String())
	}
	q.Set("limit", fmt.Sprint(o.limit))
	var ss []control.Session
	if err := c.Call(ctx, "/v1/sessions?"+q.Encode(), nil, &ss); err != nil {
		return err
	}
	if o.json {
		return json.NewEncoder(w).Encode(ss)
	}
	if len(ss) == 0 {
		// An empty table after a quick start's curl reads as a fault.
		fmt.Fprintln(w, "no recorded sessions match (plain TCP relays are audited, not recorded: interlock audit export)")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTARTED\tIDENTITY\tTARGET\tPID\tEXE\tDURATION\tOUTCOME")
	for _, s := range ss {
		dur, outcome := "open", "-"
		if !s.Ended.IsZero() {
			dur, outcome = s.Ended.Sub(s.Started).Round(time.Millisecond).String(), s.Outcome
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.ID, s.Started.Local().Format(time.DateTime),
			s.Identity, s.Target, s.PID, transcript.Line(s.Exe), dur, outcome)
	}
	return tw.Flush()
}

func newReplayCmd(a *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "replay SESSION-ID",
		Short: "Print a recorded session's transcript",
		Long: `replay prints what happened in a recorded session, message by message: each
request the agent sent, the decision on it and by which rule, and what the
server answered (masked as the agent saw it).`,
		Example: `  interlock replay 01JD2Y8M4XQ6`,
		Args:    usage(oneID),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.client().Stream(cmd.Context(), "/v1/sessions/"+url.PathEscape(args[0])+"/transcript", a.stdout)
		},
		ValidArgsFunction: noFiles,
	}
}

func newExportCmd(a *cli) *cobra.Command {
	var pcapFile, castFile string
	cmd := &cobra.Command{
		Use:   "export SESSION-ID --pcap FILE | --asciicast FILE",
		Short: "Write a recorded session as a pcap file or an asciicast",
		Long: `export writes a recorded session as a pcap file that Wireshark and tshark open:
the conversation between the agent and interlockd, as the agent saw it. With
--asciicast it writes an SSH session's terminal as an asciicast v2 file that
asciinema plays. The file appears whole or not at all.`,
		Example: `  interlock export 01JD2Y8M4XQ6 --pcap session.pcap && tshark -r session.pcap
  interlock export 01JD2Y8M4XQ6 --asciicast session.cast && asciinema play session.cast`,
		Args: usage(oneID),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (pcapFile == "") == (castFile == "") {
				return &usageError{cmd, errors.New("give one of --pcap FILE and --asciicast FILE")}
			}
			ctx, c, id := cmd.Context(), a.client(), url.PathEscape(args[0])
			if castFile != "" {
				return export(castFile, a.stdout, func(f *os.File) error {
					return c.Stream(ctx, "/v1/sessions/"+id+"/asciicast", f)
				})
			}
			return export(pcapFile, a.stdout, func(f *os.File) error { return exportPcap(ctx, c, id, f) })
		},
	}
	cmd.Flags().StringVar(&pcapFile, "pcap", "", "write the session as a pcap file (Wireshark, tshark)")
	cmd.Flags().StringVar(&castFile, "asciicast", "", "write an SSH session's terminal as an asciicast v2 file (asciinema)")
	return cmd
}

// export writes path with render, whole or not at all.
func export(path string, w io.Writer, render func(f *os.File) error) error {
	f, err := os.CreateTemp(dirOf(path), ".interlock-export-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := render(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	fmt.Fprintf(w, "wrote %s\n", path)
	return nil
}

// exportPcap writes session id as a packet capture to w: interlockd sends
// what each side sent, and the packets are made here (see package
// conversation).
func exportPcap(ctx context.Context, c *control.Client, id string, w io.Writer) error {
	body, err := c.Open(ctx, "/v1/sessions/"+id+"/conversation")
	if err != nil {
		return err
	}
	defer body.Close()
	return conversation.Decode(body, pcap.NewWriter(w))
}

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			return path[:i+1]
		}
	}
	return "."
}

// newAuditCmd returns `interlock audit verify` and `interlock audit export`.
func newAuditCmd(a *cli) *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "audit",
		Short: "Check or dump the hash-chained audit trail",
		Long: `Every event interlockd audits (decisions, approvals, tags, policy reloads...)
is a record in its host's hash chain: changing, inserting or deleting any
record but the newest breaks the chain at that record.`,
	})
	var storePath, exportPath string
	var asJSON bool
	verify := &cobra.Command{
		Use:   "verify [--store PATH|URL | --export FILE]",
		Short: "Check every host's audit chain, through the daemon or offline",
		Long: `verify recomputes every record's hash and prints one verdict per host: the
number of records and the head (seq and hash) to anchor outside the host, or
the first record that does not check out. It fails when a chain is broken.

Without flags it asks the running interlockd. --store verifies a store
directly (a SQLite file, or the fleet's postgres:// URL) and --export an
audit export file, with interlockd down, on a copy or on another machine.
An export is verified by interlock itself; a store is read by interlockd
--audit-verify-store (it links the store's drivers), so --store needs
interlockd beside interlock or on the PATH.`,
		Example: `  interlock audit verify
  interlock audit verify --store /var/lib/interlock/interlock.db
  interlock audit export > trail.jsonl && interlock audit verify --export trail.jsonl
  interlock audit verify --json | jq '.[] | {host, head_hash}'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if storePath != "" && exportPath != "" || len(args) > 0 {
				return errors.New("usage: interlock audit verify [--store PATH|URL | --export FILE]")
			}
			return auditVerify(cmd.Context(), a.client(), storePath, exportPath, asJSON, a.stdout)
		},
	}
	verify.Flags().StringVar(&storePath, "store", "", "verify this store (SQLite file or postgres:// URL) without the daemon")
	verify.Flags().StringVar(&exportPath, "export", "", "verify this file, written by interlock audit export, without the daemon")
	verify.Flags().BoolVar(&asJSON, "json", false, "print the verdicts as JSON")
	var host string
	exportCmd := &cobra.Command{
		Use:   "export [--host HOST]",
		Short: "Print a host's audit chain as JSON lines",
		Long: `export prints a host's chain, one record per line, with the exact bytes that
were hashed, so audit verify --export can check a copy kept elsewhere.`,
		Example: `  interlock audit export > trail.jsonl
  interlock audit export --host db-1 | jq -c 'select(.kind == "decision")'`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.client().Stream(cmd.Context(), "/v1/audit/export?host="+url.QueryEscape(host), a.stdout)
		},
	}
	exportCmd.Flags().StringVar(&host, "host", "", "chain of this host (default: the daemon's)")
	cmd.AddCommand(verify, exportCmd)
	return cmd
}

// auditVerify verifies the chains through the daemon, or offline through
// interlockd, and prints the verdicts.
func auditVerify(ctx context.Context, c *control.Client, storePath, exportPath string, asJSON bool, w io.Writer) error {
	var vs []control.AuditVerdict
	switch {
	case exportPath != "":
		f, err := os.Open(exportPath)
		if err != nil {
			return fmt.Errorf("open export: %w", err)
		}
		defer f.Close()
		results, err := chain.VerifyExport(f)
		if err != nil {
			return err
		}
		for _, res := range results {
			vs = append(vs, control.VerdictOf(res))
		}
	case storePath != "":
		var err error
		if vs, err = verifyStore(ctx, storePath); err != nil {
			return err
		}
	default:
		if err := c.Call(ctx, "/v1/audit/verify", nil, &vs); err != nil {
			return err
		}
	}
	if len(vs) == 0 && (storePath != "" || exportPath != "") {
		return errors.New("no audit records to verify")
	}
	if asJSON {
		if err := printJSON(w, vs); err != nil {
			return err
		}
	}
	broken := false
	for _, v := range vs {
		if !asJSON {
			fmt.Fprintln(w, v.Summary)
		}
		broken = broken || !v.OK
	}
	if broken {
		return errors.New("audit chain is broken")
	}
	return nil
}

// verifyStore verifies a store with no daemon, by running interlockd
// --audit-verify-store: reading the store takes SQLite and the PostgreSQL
// driver, which interlock does not link.
func verifyStore(ctx context.Context, storePath string) ([]control.AuditVerdict, error) {
	bin, err := interlockd()
	if err != nil {
		return nil, err
	}
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--audit-verify-store="+storePath)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimPrefix(strings.TrimSpace(errOut.String()), "interlockd: "); msg != "" {
			return nil, errors.New(msg)
		}
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	var vs []control.AuditVerdict
	if err := json.Unmarshal(out.Bytes(), &vs); err != nil {
		return nil, fmt.Errorf("read the verdicts of %s: %w", bin, err)
	}
	return vs, nil
}

// interlockd finds the interlockd binary: beside this one (the two are
// installed together), else on the PATH.
func interlockd() (string, error) {
	if self, err := os.Executable(); err == nil {
		bin := filepath.Join(filepath.Dir(self), "interlockd")
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	bin, err := exec.LookPath("interlockd")
	if err != nil {
		return "", errors.New("verifying a store needs interlockd, which reads it: not found beside interlock or on the PATH")
	}
	return bin, nil
}
