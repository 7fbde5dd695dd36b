package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/agent/control"
)

// shimCommand is the hidden first argument of the child that becomes the
// user's command. The child waits on a pipe until interlockd has moved it
// into its tagged cgroup, then execs the command in place: the command's
// first instruction already runs tagged, and its pid is the one interlockd
// moved.
const shimCommand = "__exec-shim"

// forwarded are the signals relayed to the command. Terminal-generated
// signals reach it directly when it owns the terminal; these cover signals
// sent to interlock itself (by a CI runner's timeout, by kill).
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH}

// execOptions are exec's flags.
type execOptions struct {
	identity, user string
	noCAEnv        bool
	placeholders   []string // VAR=target
}

func newExecCmd(a *cli) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec --identity NAME [--user USER] [--no-ca-env] [--placeholder VAR=TARGET]... -- CMD [ARGS...]",
		Short: "Run a command in a fresh cgroup tagged with an identity",
		Long: `exec runs CMD in a new cgroup that interlockd creates and tags with the
identity: the command's first instruction already runs tagged, so every
connection it and its children make is decided by the policy. The cgroup is
removed when the command ends.

exec passes the command's exit code through (128+N when signal N ended it),
relays the signals interlock receives, and exits 125 when interlock itself
fails, 127 when CMD is not found. Everything after -- is the command's,
flags included. The runtimes' CA variables point at Interlock's certificate
authority, so clients verify the certificates interlockd presents
(PostgreSQL with sslmode=verify-full, intercepted HTTPS) with no flag of
their own: PGSSLROOTCERT and NODE_EXTRA_CA_CERTS at the certificate,
SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, GIT_SSL_CAINFO and
AWS_CA_BUNDLE at a bundle of the system roots plus the certificate. A
PGSSLROOTCERT already set is kept; the others are replaced (with a note on
stderr when they named something other than the system roots). --no-ca-env
leaves them all. With --user, the command runs as that user, with its groups and
HOME, as a login sets them. The command and its children gain no privileges
through set-user-ID programs (no_new_privs): sudo and su refuse, and crontab
and at cannot hand work to a daemon that would run it untagged.

--placeholder VAR=TARGET sets VAR to a fake token of the shape of the secret
interlockd injects for the http target TARGET, for tools that insist on a
token in their environment: interlockd swaps it for the real secret on
requests to TARGET only, refuses (and audits) any request that carries it
elsewhere, and revokes the credential behind it when the command ends.`,
		Example: `  interlock exec --identity ci-bot -- psql -h db.internal -c 'SELECT 1'
  interlock exec --identity ci-bot --placeholder GITHUB_TOKEN=forge -- gh repo list
  interlock exec --identity ci-bot --user runner -- ./deploy.sh --dry-run`,
		DisableFlagsInUseLine: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return exitWith(execCommand(cmd.Context(), a.client(), o, args, a.stderr))
		},
	}
	// The command's own flags are never interlock's: flag parsing stops at
	// CMD, with or without --.
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringVar(&o.identity, "identity", "", "identity the command acts as")
	cmd.Flags().StringVar(&o.user, "user", "", "run the command as this user (its groups and HOME, as a login sets them)")
	cmd.Flags().BoolVar(&o.noCAEnv, "no-ca-env", false, "leave the environment's CA variables (SSL_CERT_FILE, PGSSLROOTCERT, ...) as they are")
	cmd.Flags().StringArrayVar(&o.placeholders, "placeholder", nil, "VAR=TARGET: set VAR to a placeholder of TARGET's injected secret (repeatable)")
	return cmd
}

// execCommand runs argv as exec does and returns the exit code.
func execCommand(ctx context.Context, c *control.Client, o execOptions, argv []string, stderr io.Writer) int {
	if o.identity == "" || len(argv) == 0 {
		fmt.Fprintln(stderr, "usage: interlock exec --identity NAME [--user USER] -- CMD [ARGS...]")
		return 2
	}
	placeholders := map[string]string{}
	for _, p := range o.placeholders {
		v, target, ok := strings.Cut(p, "=")
		if !ok || v == "" || target == "" {
			fmt.Fprintf(stderr, "interlock: --placeholder %q: want VAR=TARGET\n", p)
			return 2
		}
		placeholders[v] = target
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "interlock: %v\n", err)
		return 127
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "interlock: %v\n", err)
		return exitInterlock
	}
	env := os.Environ()
	if !o.noCAEnv {
		if env, err = caEnv(ctx, c, env, stderr); err != nil {
			fmt.Fprintf(stderr, "interlock: %v\n", err)
			return exitInterlock
		}
	}
	gate, release, err := os.Pipe()
	if err != nil {
		fmt.Fprintf(stderr, "interlock: %v\n", err)
		return exitInterlock
	}
	cmd := exec.Command(self, append([]string{shimCommand, path}, argv[1:]...)...)
	cmd.Args[0] = argv[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{gate}
	// Its own process group, in the terminal's foreground when there is one:
	// ^C then reaches the command alone and is not delivered twice.
	tty := isTerminal(os.Stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Foreground: tty}
	if o.user != "" {
		// The shim is the user from its first instruction: a root agent in
		// a tagged cgroup could move itself out through cgroup.procs.
		l, err := lookupLogin(o.user)
		if err != nil {
			fmt.Fprintf(stderr, "interlock: %v\n", err)
			return exitInterlock
		}
		cmd.SysProcAttr.Credential = l.cred
		cmd.Env = l.environ(cmd.Environ())
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, forwarded...)
	defer signal.Stop(signals)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "interlock: start %s: %v\n", argv[0], err)
		return exitInterlock
	}
	if tty {
		// Taking the terminal back afterwards sends SIGTTOU to a background
		// group. Ignored only after the fork: an ignored signal would stay
		// ignored in the command.
		signal.Ignore(syscall.SIGTTOU)
		defer reclaimTerminal()
	}
	gate.Close()
	var ans control.ExecAnswer
	if err := c.Call(ctx, "/v1/exec", control.ExecRequest{Identity: o.identity, PID: cmd.Process.Pid, Placeholders: placeholders}, &ans); err != nil {
		release.Close() // the shim sees EOF and exits without running the command
		cmd.Wait()
		fmt.Fprintf(stderr, "interlock: %v\n", err)
		return exitInterlock
	}
	// The go-ahead, then the placeholders the command's environment gets
	// (known only now: interlockd issued them for this exec).
	release.Write(append([]byte{1}, strings.Join(ans.Env, "\x00")...))
	release.Close()
	uid := uint32(os.Getuid())
	if cmd.SysProcAttr.Credential != nil {
		uid = cmd.SysProcAttr.Credential.Uid
	}
	warnPtraceExposure(ctx, c, ans.Cgroup, []uint32{uid}, stderr)
	printWarnings(stderr, ans.Warnings)

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var waitErr error
wait:
	for {
		select {
		case s := <-signals:
			cmd.Process.Signal(s)
		case waitErr = <-done:
			break wait
		}
	}
	if err := c.Call(ctx, "/v1/exec/release", control.TagRequest{Cgroup: ans.Cgroup}, nil); err != nil {
		// Not fatal: interlockd collects empty exec cgroups itself.
		fmt.Fprintf(stderr, "interlock: release %s: %v\n", ans.Cgroup, err)
	}
	return exitCode(cmd, waitErr)
}

// exitCode passes the command's status through the way a shell reports it:
// its exit code, or 128+signal when a signal ended it.
func exitCode(cmd *exec.Cmd, err error) int {
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return exitInterlock
	}
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		return cmd.ProcessState.ExitCode()
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// execShim runs in the child: wait for the go-ahead on fd 3, then become
// the command.
func execShim(args []string) int {
	gate := os.NewFile(3, "gate")
	msg, _ := io.ReadAll(gate)
	if len(msg) == 0 || msg[0] != 1 {
		return exitInterlock // interlock refused or died: never run untagged
	}
	gate.Close()
	env := os.Environ()
	if len(msg) > 1 {
		env = append(env, strings.Split(string(msg[1:]), "\x00")...)
	}
	if len(args) == 0 {
		return exitInterlock
	}
	// No new privileges: a set-user-ID or set-group-ID program (sudo, su,
	// crontab, at) runs as the agent, not as its owner. Root in a tagged
	// cgroup leaves it (cgroup.procs) or untags it (the control socket),
	// and a job cron or atd runs for the agent runs in their cgroup,
	// untagged; the agent reaches neither through a program that grants
	// it more than it has.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "interlock: set no_new_privs: %v\n", err)
		return exitInterlock
	}
	err := syscall.Exec(args[0], append([]string{os.Args[0]}, args[1:]...), env)
	fmt.Fprintf(os.Stderr, "interlock: exec %s: %v\n", args[0], err)
	return 126
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func reclaimTerminal() {
	unix.IoctlSetPointerInt(int(os.Stdin.Fd()), unix.TIOCSPGRP, unix.Getpgrp())
}

// printWarnings prints what interlockd warned of when it tagged a cgroup,
// a line each.
func printWarnings(stderr io.Writer, warnings []string) {
	for _, w := range warnings {
		fmt.Fprintf(stderr, "interlock: warning: %s\n", w)
	}
}
