// Command interlockd is the Interlock daemon: it arms the eBPF data path,
// runs the proxy tagged agents are steered into, and serves the control
// socket. With no flags it runs on its embedded default configuration.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/config"
	"github.com/interlock-dev/interlock/agent/daemon"
)

func main() {
	os.Exit(run())
}

func run() int {
	cfgPath := flag.String("config", "", "configuration file (YAML); empty: embedded default")
	socket := flag.String("socket", "", "control socket (overrides the config)")
	stateDir := flag.String("state-dir", "", "state directory (overrides the config)")
	cgroupRoot := flag.String("cgroup-root", "", "cgroup subtree to attach at and create exec cgroups under (default: the cgroup2 mount root)")
	bpffs := flag.String("bpffs", "", "bpffs directory to pin links and maps in (overrides the config)")
	port := flag.Uint("listen-port", 0, "proxy port on 127.0.0.1 and [::1] (overrides the config)")
	policyPath := flag.String("policy", "", "policy file (overrides the config; empty: embedded default policy)")
	flag.Parse()

	cfg := config.Default()
	if *cfgPath != "" {
		var err error
		if cfg, err = config.Load(*cfgPath); err != nil {
			fmt.Fprintf(os.Stderr, "interlockd: %v\n", err)
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

	level, err := zerolog.ParseLevel(cfg.LogLevel)
	if err != nil {
		level = zerolog.InfoLevel
	}
	log := zerolog.New(os.Stderr).Level(level).With().Timestamp().Str("service", "interlockd").Logger()

	d, err := daemon.New(cfg, log)
	if err != nil {
		log.Error().Err(err).Msg("cannot start")
		fmt.Fprintf(os.Stderr, "interlockd: %v\n", err)
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
		fmt.Fprintf(os.Stderr, "interlockd: %v\n", err)
		return 1
	}
	return 0
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
