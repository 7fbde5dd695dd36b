package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/daemon"
	"github.com/interlock-dev/interlock/agent/store"
)

func sessions(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	fs := flag.NewFlagSet("sessions", flag.ContinueOnError)
	identity := fs.String("identity", "", "only this identity")
	target := fs.String("target", "", "only this target")
	var since sinceFlag
	fs.Var(&since, "since", "only sessions started within this long (e.g. 24h, 7d)")
	decision := fs.String("decision", "", "only sessions with a decision of this action (deny, mask, approve, allow)")
	host := fs.String("host", "", "only this host (fleet store)")
	limit := fs.Int("limit", 50, "at most this many, newest first")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"identity": *identity, "target": *target, "decision": *decision, "host": *host} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if since > 0 {
		q.Set("since", since.String())
	}
	q.Set("limit", fmt.Sprint(*limit))
	var ss []store.Session
	if err := c.Call(ctx, "/v1/sessions?"+q.Encode(), nil, &ss); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(w).Encode(ss)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTARTED\tIDENTITY\tTARGET\tPID\tEXE\tDURATION\tOUTCOME")
	for _, s := range ss {
		dur, outcome := "open", "-"
		if !s.Ended.IsZero() {
			dur, outcome = s.Ended.Sub(s.Started).Round(time.Millisecond).String(), s.Outcome
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.ID, s.Started.Local().Format(time.DateTime),
			s.Identity, s.Target, s.PID, s.Exe, dur, outcome)
	}
	return tw.Flush()
}

func replay(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	if len(args) != 1 {
		return errors.New("usage: interlock replay SESSION-ID")
	}
	return c.Stream(ctx, "/v1/sessions/"+url.PathEscape(args[0])+"/transcript", w)
}

func export(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	pcap := fs.String("pcap", "", "write the session as a pcap file (Wireshark, tshark)")
	pos, err := interleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *pcap == "" {
		return errors.New("usage: interlock export SESSION-ID --pcap FILE")
	}
	f, err := os.CreateTemp(dirOf(*pcap), ".interlock-export-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := c.Stream(ctx, "/v1/sessions/"+url.PathEscape(pos[0])+"/pcap", f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), *pcap); err != nil {
		return err
	}
	fmt.Fprintf(w, "wrote %s\n", *pcap)
	return nil
}

func dirOf(path string) string {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			return path[:i+1]
		}
	}
	return "."
}

// auditCommand runs `interlock audit verify` and `interlock audit export`.
func auditCommand(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: interlock audit verify [--store PATH|URL | --export FILE] | export [--host H]")
	}
	switch args[0] {
	case "verify":
		fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
		storePath := fs.String("store", "", "verify this store (SQLite file or postgres:// URL) without the daemon")
		exportPath := fs.String("export", "", "verify this `interlock audit export` file without the daemon")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *storePath != "" && *exportPath != "" || fs.NArg() > 0 {
			return errors.New("usage: interlock audit verify [--store PATH|URL | --export FILE]")
		}
		if *storePath != "" || *exportPath != "" {
			return verifyOffline(ctx, *storePath, *exportPath, w)
		}
		var vs []daemon.AuditVerdict
		if err := c.Call(ctx, "/v1/audit/verify", nil, &vs); err != nil {
			return err
		}
		broken := false
		for _, v := range vs {
			fmt.Fprintln(w, v.Summary)
			broken = broken || !v.OK
		}
		if broken {
			return errors.New("audit chain is broken")
		}
		return nil
	case "export":
		fs := flag.NewFlagSet("audit export", flag.ContinueOnError)
		host := fs.String("host", "", "chain of this host (default: the daemon's)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		return c.Stream(ctx, "/v1/audit/export?host="+url.QueryEscape(*host), w)
	}
	return fmt.Errorf("unknown audit command %q", args[0])
}

// verifyOffline verifies a store or an export file directly: the trail can
// be checked on a copy, on another machine, or with interlockd down.
func verifyOffline(ctx context.Context, storePath, exportPath string, w io.Writer) error {
	var results []audit.Result
	if exportPath != "" {
		f, err := os.Open(exportPath)
		if err != nil {
			return fmt.Errorf("open export: %w", err)
		}
		defer f.Close()
		if results, err = audit.VerifyExport(f); err != nil {
			return err
		}
	} else {
		if !strings.Contains(storePath, "://") && !strings.Contains(storePath, "host=") {
			// Opening a SQLite path that does not exist would create an
			// empty store and report nothing to verify.
			if _, err := os.Stat(storePath); err != nil {
				return fmt.Errorf("open store: %w", err)
			}
		}
		st, err := store.Open(ctx, storePath)
		if err != nil {
			return err
		}
		defer st.Close()
		if results, err = audit.VerifyAll(ctx, st); err != nil {
			return err
		}
	}
	if len(results) == 0 {
		return errors.New("no audit records to verify")
	}
	broken := false
	for _, r := range results {
		fmt.Fprintln(w, r)
		broken = broken || r.Broken != nil
	}
	if broken {
		return errors.New("audit chain is broken")
	}
	return nil
}
