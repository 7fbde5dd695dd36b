// Command interlockd is the Interlock daemon: it arms the eBPF data path,
// runs the proxy tagged agents are steered into, and serves the control
// socket. With no flags it runs on its embedded default configuration.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/config"
	"github.com/interlock-dev/interlock/agent/daemon"
	"github.com/interlock-dev/interlock/agent/version"
)

func main() {
	keepMonitorAwake(os.Stderr)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("interlockd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (YAML); empty: embedded default")
	socket := fs.String("socket", "", "control socket (overrides the config)")
	stateDir := fs.String("state-dir", "", "state directory (overrides the config)")
	cgroupRoot := fs.String("cgroup-root", "", "cgroup subtree to attach at and create exec cgroups under (default: the cgroup2 mount root)")
	bpffs := fs.String("bpffs", "", "bpffs directory to pin links and maps in (overrides the config)")
	port := fs.Uint("listen-port", 0, "proxy port on 127.0.0.1 and [::1] (overrides the config)")
	policyPath := fs.String("policy", "", "policy file (overrides the config; empty: embedded default policy)")
	showVersion := fs.Bool("version", false, "print the version and commit, then exit")
	auditStore := fs.String("audit-verify-store", "", "verify the audit chains in this store (SQLite file or postgres:// URL), print the verdicts as JSON, then exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Fprintf(stdout, "interlockd %s\n", version.String())
		return 0
	}
	// A stray word (`interlockd version`) must never arm the data path
	// with the defaults: interlockd takes flags only.
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "interlockd: unexpected argument %q (interlockd takes flags only; --version prints the version)\n", fs.Arg(0))
		return 2
	}
	if *auditStore != "" {
		return verifyAudit(*auditStore, stdout, stderr)
	}

	cfg := config.Default()
	if *cfgPath != "" {
		var err error
		if cfg, err = config.Load(*cfgPath); err != nil {
			fmt.Fprintf(stderr, "interlockd: %v\n", err)
			return 2
		}
	}
	override := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	override(&cfg.Socket, *socket)
	override(&cfg.StateDir, *stateDir)
	override(&cfg.CgroupRoot, *cgroupRoot)
	override(&cfg.BPFFS, *bpffs)
	override(&cfg.Policy, *policyPath)
	if *port != 0 {
		cfg.ListenPort = uint16(*port)
	}

	lw := newLogWriter(stderr)
	defer lw.Flush()
	log := newLogger(cfg, lw)
	d, err := daemon.New(cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		fmt.Fprintf(stderr, "interlockd: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			d.Reload()
		}
	}()
	if err := d.Run(ctx, notifyReady); err != nil {
		log.Error().Err(err).Msg("stopped on error")
		fmt.Fprintf(stderr, "interlockd: %v\n", err)
		return 1
	}
	return 0
}

// newLogger builds the one logger every part of the daemon gets a child of:
// JSON lines by default (journald, log pipelines), zerolog's console
// writer with log_format: console. Durations are logged in milliseconds,
// and fields that carry one end in _ms.
func newLogger(cfg config.Config, w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		level = zerolog.InfoLevel
	}
	if cfg.LogFormat == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.DateTime}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Str("service", "interlockd").Logger()
}

// notifyReady tells systemd (Type=notify) that the data path is armed, so
// units ordered after interlockd start only once they are enforced.
func notifyReady() {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte("READY=1"))
}
