// Command interlock is the operator's CLI for interlockd: tag cgroups, run
// commands under an identity, inspect and control the daemon, and check
// policies offline. Everything that changes the daemon goes through its
// control socket, where the kernel says who is asking.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/daemon"
	"github.com/interlock-dev/interlock/agent/datapath"
)

const usage = `usage: interlock [--socket PATH] COMMAND [ARGS]

commands:
  status                           show the daemon, the tagged cgroups, the maps
  tag CGROUP --identity NAME       tag a cgroup (and its descendants)
  tag --unit UNIT --identity NAME  tag a systemd unit or slice, now and at every start
  untag CGROUP | --unit UNIT       remove a tag
  exec --identity NAME [--user U] -- CMD ...
                                   run CMD (as user U) in a fresh cgroup tagged NAME
  uninstall [--bpffs DIR]          detach the programs and remove the pins
  ca export [--state-dir DIR]      print Interlock's CA certificate (PEM)
  ca rotate                        replace the CA; new leaves are signed by the new one
  approvals [--state S|all]        list held requests
  approve ID [--comment TEXT]      approve a held request
  deny ID [--comment TEXT]         deny a held request
  sessions [--identity --target --since --decision]
                                   list recorded sessions
  replay ID                        print a session's transcript
  export ID --pcap FILE            write a session as a pcap
  audit verify [--store P | --export F] | export
                                   check (offline too) or dump the hash-chained audit trail
  policy check FILE                validate a policy file
  policy test FILE                 run the test cases a policy ships with
  policy explain ...               show the decision for one request
  policy reload                    make the daemon reload its policy file
  policy replay --policy FILE --pcap FILE | --session ID | --since DUR
                                   what a policy would decide on captured or recorded traffic
`

// exitInterlock is the exit code for failures of interlock itself, as
// opposed to the command it runs (the convention of docker run and env).
const exitInterlock = 125

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == shimCommand {
		return execShim(args[1:])
	}
	fs := flag.NewFlagSet("interlock", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	socket := fs.String("socket", envOr("INTERLOCK_SOCKET", "/run/interlock/interlock.sock"), "control socket of interlockd")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	args = fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	c := control.NewClient(*socket)
	ctx := context.Background()
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "status":
		err = status(ctx, c, rest, stdout)
	case "tag":
		err = tag(ctx, c, rest, stdout)
	case "untag":
		err = untag(ctx, c, rest, stdout)
	case "exec":
		return execCommand(ctx, c, rest, stderr)
	case "approvals", "approve", "deny":
		return runApprovals(ctx, c, cmd, rest, stdout, stderr)
	case "sessions":
		err = sessions(ctx, c, rest, stdout)
	case "replay":
		err = replay(ctx, c, rest, stdout)
	case "export":
		err = export(ctx, c, rest, stdout)
	case "audit":
		err = auditCommand(ctx, c, rest, stdout)
	case "uninstall":
		err = uninstall(ctx, c, rest, stdout)
	case "ca":
		err = caCommand(ctx, c, rest, stdout, stderr)
	case "policy":
		if len(rest) > 0 && rest[0] == "replay" {
			return runPolicyReplay(ctx, c, rest[1:], stdout, stderr)
		}
		if len(rest) > 0 && rest[0] == "reload" {
			var out map[string]string
			if err = c.Call(ctx, "/v1/policy/reload", struct{}{}, &out); err == nil {
				fmt.Fprintf(stdout, "policy reloaded from %s\n", out["policy"])
			}
			break
		}
		return runPolicy(ctx, c, rest, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "interlock: unknown command %q\n%s", cmd, usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "interlock: %v\n", err)
		return 1
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// interleaved parses flags that may come before or after positional args
// (`tag CGROUP --identity x` and `tag --identity x CGROUP` both work).
func interleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func status(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var st daemon.Status
	if err := c.Call(ctx, "/v1/status", nil, &st); err != nil {
		return err
	}
	if *asJSON {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(st)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "interlockd\tpid %d, up %s\n", st.PID, time.Since(st.Started).Round(time.Second))
	fmt.Fprintf(tw, "cgroup root\t%s\n", st.CgroupRoot)
	fmt.Fprintf(tw, "pins\t%s\n", st.BPFFS)
	fmt.Fprintf(tw, "proxy\t127.0.0.1:%d [::1]:%d\n", st.ListenPort, st.ListenPort)
	fmt.Fprintf(tw, "policy\t%s\n", st.Policy)
	fmt.Fprintf(tw, "connections\t%d active\n", st.Active)
	fmt.Fprintf(tw, "default mode\t%s\n", st.DefaultMode)
	for _, m := range st.Modes {
		fmt.Fprintf(tw, "identity\t%s\n", m)
	}
	for _, g := range st.Gaps {
		fmt.Fprintf(tw, "not enforced\t%s\n", g)
	}
	tw.Flush()
	fmt.Fprintln(w)
	if len(st.Tagged) == 0 {
		fmt.Fprintln(w, "no tagged cgroups")
		return nil
	}
	fmt.Fprintln(tw, "CGROUP\tIDENTITY")
	for _, t := range st.Tagged {
		fmt.Fprintf(tw, "%s\t%s\n", t.Cgroup, t.Identity)
	}
	return tw.Flush()
}

func tag(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	fs := flag.NewFlagSet("tag", flag.ContinueOnError)
	identity := fs.String("identity", "", "identity name the cgroup's processes act as")
	unit := fs.String("unit", "", "a systemd unit or slice instead of a cgroup path")
	pos, err := interleaved(fs, args)
	if err != nil {
		return err
	}
	if *unit != "" && len(pos) == 0 && *identity != "" {
		return runTagUnit(ctx, c, *unit, *identity, w)
	}
	if len(pos) != 1 || *identity == "" {
		return errors.New("usage: interlock tag CGROUP --identity NAME | --unit UNIT --identity NAME")
	}
	var out daemon.TagEntry
	if err := c.Call(ctx, "/v1/tag", daemon.TagRequest{Cgroup: pos[0], Identity: *identity}, &out); err != nil {
		return err
	}
	fmt.Fprintf(w, "tagged %s as %s\n", out.Cgroup, out.Identity)
	warnPtraceExposure(ctx, c, out.Cgroup, nil, os.Stderr)
	return nil
}

func untag(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	if len(args) == 2 && args[0] == "--unit" {
		return runUntagUnit(ctx, c, args[1], w)
	}
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return errors.New("usage: interlock untag CGROUP | --unit UNIT")
	}
	var out daemon.TagEntry
	if err := c.Call(ctx, "/v1/tag", daemon.TagRequest{Cgroup: args[0]}, &out); err != nil {
		return err
	}
	fmt.Fprintf(w, "untagged %s\n", out.Cgroup)
	return nil
}

func uninstall(ctx context.Context, c *control.Client, args []string, w io.Writer) error {
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	bpffs := fs.String("bpffs", "/sys/fs/bpf/interlock", "pin directory, used when the daemon is not running")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var out map[string]string
	err := c.Call(ctx, "/v1/uninstall", struct{}{}, &out)
	if errors.Is(err, control.ErrNotRunning) {
		// With the daemon down the pins still enforce (fail closed); root
		// removes them directly.
		if err := datapath.Uninstall(*bpffs); err != nil {
			return err
		}
		fmt.Fprintf(w, "interlockd not running; removed the programs pinned under %s\n", *bpffs)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "removed the programs pinned under %s; interlockd has stopped\n", out["removed"])
	return nil
}
