// Command interlock is the operator's CLI for interlockd: tag cgroups, run
// commands under an identity, inspect and control the daemon, and check
// policies offline. Everything that changes the daemon goes through its
// control socket, where the kernel says who is asking.
//
// It speaks the control API with the types of agent/control and links
// nothing of the daemon itself (Vault, the store's SQLite, Prometheus);
// deps_test.go holds that fence.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/version"
)

// exitInterlock is the exit code for failures of interlock itself, as
// opposed to the command it runs (the convention of docker run and env).
const exitInterlock = 125

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args and returns the exit code: 0 done, 1 the
// command failed (the reason is on stderr), 2 a usage error; exec passes
// its command's code through.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == shimCommand {
		return execShim(args[1:])
	}
	root := newRoot(&cli{stdout: stdout, stderr: stderr})
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	var code exitStatus
	var usage *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &usage):
		path := usage.cmd.CommandPath()
		fmt.Fprintf(stderr, "%s: %v\n", path, usage.err)
		if !usage.cmd.HasSubCommands() {
			fmt.Fprintf(stderr, "usage: %s\n", usage.cmd.UseLine())
		}
		fmt.Fprintf(stderr, "Run '%s --help' for more.\n", path)
		return 2
	default:
		fmt.Fprintf(stderr, "interlock: %v\n", err)
		return 1
	}
}

// cli is what every command shares: the daemon's socket (the --socket
// flag) and where output goes.
type cli struct {
	socket         string
	stdout, stderr io.Writer
}

// client returns a client for the daemon on the --socket socket.
func (a *cli) client() *control.Client { return control.NewClient(a.socket) }

// exitStatus ends interlock with a code once the command has printed why
// (or, for exec, passes the command's own code through).
type exitStatus int

func (c exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// exitWith returns nil for 0 and the code as an error otherwise, for
// commands written as functions that return an exit code.
func exitWith(code int) error {
	if code == 0 {
		return nil
	}
	return exitStatus(code)
}

// usageError is a command line a command cannot run: run prints it with
// the command's usage and exits 2.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string { return e.err.Error() }

// usage wraps an argument validator so that what it refuses is a usage
// error.
func usage(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return &usageError{cmd, err}
		}
		return nil
	}
}

// oneID accepts a single argument that is not blank: an ID given as ""
// (an unset shell variable) would otherwise reach interlockd as a path
// with an empty segment and come back as its 404 page.
func oneID(cmd *cobra.Command, args []string) error {
	if err := cobra.ExactArgs(1)(cmd, args); err != nil {
		return err
	}
	if strings.TrimSpace(args[0]) == "" {
		return errors.New("the ID is empty")
	}
	return nil
}

// group makes cmd a command that only holds subcommands: alone it prints
// its usage and fails, and an unknown subcommand is a usage error (cobra
// would print the help and succeed).
func group(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.SuggestionsMinimumDistance = 2
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return &usageError{cmd, errors.New("missing command")}
		}
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			return &usageError{cmd, fmt.Errorf("unknown command %q (did you mean %s?)", args[0], strings.Join(s, " or "))}
		}
		return &usageError{cmd, fmt.Errorf("unknown command %q", args[0])}
	}
	return cmd
}

func newRoot(a *cli) *cobra.Command {
	root := group(&cobra.Command{
		Use:   "interlock",
		Short: "Control interlockd: tag agents, run commands under an identity, review, audit, check policies",
		Long: `interlock is the operator's CLI for interlockd, the Interlock daemon.

Agents are identified by the cgroup they run in: tag a cgroup or a systemd
unit, or start a command in a fresh tagged cgroup with exec, and every
connection it makes is steered through interlockd, decided by the policy and
recorded. Everything that changes the daemon goes through its control socket
(--socket), where the kernel says who is asking: root and members of the
control group may use it, and never a process inside a tagged cgroup.

The policy commands also work offline, on files.`,
		Example: `  interlock status
  interlock exec --identity ci-bot -- psql -h db.internal -c 'SELECT 1'
  interlock tag --unit github-runner.service --identity ci-bot
  interlock approvals
  interlock policy check /etc/interlock/policy.yaml
  source <(interlock completion bash)`,
		Version:       version.String(),
		SilenceErrors: true,
		SilenceUsage:  true,
	})
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetVersionTemplate("interlock {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return &usageError{cmd, err} })
	root.PersistentFlags().StringVar(&a.socket, "socket", envOr("INTERLOCK_SOCKET", "/run/interlock/interlock.sock"),
		"control socket of interlockd (env INTERLOCK_SOCKET)")
	root.AddCommand(
		newStatusCmd(a), newTagCmd(a), newUntagCmd(a), newExecCmd(a), newUninstallCmd(a), newCACmd(a),
		newApprovalsCmd(a), newDecideCmd(a, true), newDecideCmd(a, false),
		newSessionsCmd(a), newReplayCmd(a), newExportCmd(a), newAuditCmd(a), newPolicyCmd(a), newSSHCmd(a),
	)
	// cobra's completion command, alone or with a shell it does not know,
	// prints its help and succeeds: a profile sourcing its output deserves
	// an error instead.
	root.InitDefaultCompletionCmd()
	if completion, _, err := root.Find([]string{"completion"}); err == nil && completion != root {
		group(completion)
	}
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// printJSON writes v as indented JSON, the form of every --json listing
// but the streamed ones.
func printJSON(w io.Writer, v any) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

func newStatusCmd(a *cli) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the daemon, its policy, the tagged cgroups and what this kernel does not enforce",
		Long: `status shows the running interlockd: its pid and uptime, the cgroup subtree it
enforces, its pins and proxy port, the policy in force and each identity's
mode (enforce or audit), the tagged cgroups with their identities, the
protections this kernel cannot give ("not enforced"), and the drop-ins of
tagged units that an earlier interlock wrote without NoNewPrivileges=yes,
with the command that rewrites each.`,
		Example: `  interlock status
  interlock status --json | jq '.tagged[]'`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return status(cmd.Context(), a.client(), asJSON, a.stdout)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

func status(ctx context.Context, c *control.Client, asJSON bool, w io.Writer) error {
	var st control.Status
	if err := c.Call(ctx, "/v1/status", nil, &st); err != nil {
		return err
	}
	if asJSON {
		return printJSON(w, st)
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
	if st.RecordingsStopped != "" {
		fmt.Fprintf(tw, "recordings\tSTOPPED: %s\n", st.RecordingsStopped)
	}
	for _, d := range staleDropIns(systemdUnitDir) {
		fmt.Fprintf(tw, "drop-in\t%s\n", d)
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

func newTagCmd(a *cli) *cobra.Command {
	var identity, unit string
	cmd := &cobra.Command{
		Use:   "tag (CGROUP | --unit UNIT) --identity NAME",
		Short: "Tag a cgroup (and its descendants), or a systemd unit at every start, with an identity",
		Long: `tag makes every process of a cgroup, and of the cgroups below it, act as an
identity: their connections are steered through interlockd and decided by the
policy's rules for that identity. CGROUP is a directory under the cgroup2
mount or a path relative to it, inside the subtree interlockd enforces.

With --unit, tag writes a systemd drop-in,
/etc/systemd/system/UNIT.d/50-interlock.conf, that tags the unit's fresh
cgroup before its ExecStart runs, on every start, and orders the unit after
interlockd; a running unit is tagged at once. A slice is tagged while its
cgroup exists. Needs root.`,
		Example: `  interlock tag /sys/fs/cgroup/ci/runner --identity ci-bot
  interlock tag ci/runner --identity ci-bot
  interlock tag --unit github-runner.service --identity ci-bot`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return tag(cmd.Context(), a.client(), args, identity, unit, a.stdout, a.stderr)
		},
	}
	cmd.Flags().StringVar(&identity, "identity", "", "identity name the cgroup's processes act as")
	cmd.Flags().StringVar(&unit, "unit", "", "a systemd unit or slice instead of a cgroup path")
	return cmd
}

func tag(ctx context.Context, c *control.Client, pos []string, identity, unit string, w, stderr io.Writer) error {
	if unit != "" && len(pos) == 0 && identity != "" {
		return runTagUnit(ctx, c, unit, identity, w, stderr)
	}
	if len(pos) != 1 || identity == "" {
		return errors.New("usage: interlock tag CGROUP --identity NAME | --unit UNIT --identity NAME")
	}
	var out control.TagAnswer
	if err := c.Call(ctx, "/v1/tag", control.TagRequest{Cgroup: pos[0], Identity: identity}, &out); err != nil {
		return err
	}
	fmt.Fprintf(w, "tagged %s as %s\n", out.Cgroup, out.Identity)
	printWarnings(stderr, out.Warnings)
	warnPtraceExposure(ctx, c, out.Cgroup, nil, stderr)
	return nil
}

func newUntagCmd(a *cli) *cobra.Command {
	var unit string
	cmd := &cobra.Command{
		Use:   "untag (CGROUP | --unit UNIT)",
		Short: "Remove a cgroup's tag, or a systemd unit's drop-in and tag",
		Long: `untag removes the tag of a cgroup: its processes connect as untagged processes
again. With --unit it removes the drop-in that tag --unit wrote (and reloads
systemd) and untags the unit's current cgroup, if it is running.`,
		Example: `  interlock untag ci/runner
  interlock untag --unit github-runner.service`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return untag(cmd.Context(), a.client(), args, unit, a.stdout)
		},
	}
	cmd.Flags().StringVar(&unit, "unit", "", "a systemd unit or slice instead of a cgroup path")
	return cmd
}

func untag(ctx context.Context, c *control.Client, args []string, unit string, w io.Writer) error {
	if unit != "" && len(args) == 0 {
		return runUntagUnit(ctx, c, unit, w)
	}
	if len(args) != 1 || unit != "" {
		return errors.New("usage: interlock untag CGROUP | --unit UNIT")
	}
	var out control.TagEntry
	if err := c.Call(ctx, "/v1/tag", control.TagRequest{Cgroup: args[0]}, &out); err != nil {
		return err
	}
	fmt.Fprintf(w, "untagged %s\n", out.Cgroup)
	return nil
}

func newUninstallCmd(a *cli) *cobra.Command {
	var bpffs string
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Detach Interlock's programs and remove its pins: enforcement stops",
		Long: `uninstall asks interlockd to detach its eBPF programs, remove their pins and
stop. Tagged cgroups then connect directly again. The pins outlive the daemon
(a crashed or stopped interlockd still fails tagged connections closed), so
with interlockd down, uninstall removes the pins under --bpffs itself, as root.`,
		Example: `  interlock uninstall
  interlock uninstall --bpffs /sys/fs/bpf/interlock`,
		Args: usage(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return uninstall(cmd.Context(), a.client(), bpffs, a.stdout)
		},
	}
	cmd.Flags().StringVar(&bpffs, "bpffs", "/sys/fs/bpf/interlock", "pin directory, used when the daemon is not running")
	return cmd
}

func uninstall(ctx context.Context, c *control.Client, bpffs string, w io.Writer) error {
	var out map[string]string
	err := c.Call(ctx, "/v1/uninstall", struct{}{}, &out)
	if errors.Is(err, control.ErrNotRunning) {
		// With the daemon down the pins still enforce (fail closed); root
		// removes them directly. Nothing there is said, not reported as a
		// removal: a daemon started with another --bpffs still enforces.
		if !datapath.Pinned(bpffs) {
			fmt.Fprintf(w, "interlockd not running; nothing of Interlock's is pinned under %s (a daemon started with --bpffs pins there instead: give the same --bpffs)\n", bpffs)
			return nil
		}
		if err := datapath.Uninstall(bpffs); err != nil {
			return err
		}
		fmt.Fprintf(w, "interlockd not running; removed the programs pinned under %s\n", bpffs)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "removed the programs pinned under %s; interlockd has stopped\n", out["removed"])
	return nil
}

// oneOf returns a flag completion offering the given values.
func oneOf(values ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// noFiles is the completion of commands whose arguments are not files.
func noFiles(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}
