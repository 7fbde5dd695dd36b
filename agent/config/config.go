// Package config holds interlockd's configuration: where it attaches, pins,
// listens and keeps state. With no file, Default() is a complete working
// configuration, so `interlockd` alone starts a usable daemon.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/credentials"
)

// Config is the daemon configuration. Zero values are filled by Default.
type Config struct {
	// Socket is the control API's unix socket.
	Socket string `yaml:"socket"`
	// StateDir keeps identities, the lease journal, the store and recordings.
	StateDir string `yaml:"state_dir"`
	// CgroupRoot is the cgroup subtree the programs attach at and under which
	// `interlock exec` creates its cgroups. Empty: the cgroup2 mount root.
	CgroupRoot string `yaml:"cgroup_root"`
	// BPFFS is the bpffs directory where links and maps are pinned.
	BPFFS string `yaml:"bpffs"`
	// ListenPort is the proxy port on 127.0.0.1 and [::1] that tagged
	// connections are redirected to.
	ListenPort uint16 `yaml:"listen_port"`
	// Policy is the policy file; empty means the embedded default policy.
	Policy string `yaml:"policy"`
	// ControlGroup names a group whose members may use the control API
	// besides root.
	ControlGroup string `yaml:"control_group"`
	// LogLevel is a zerolog level name.
	LogLevel string `yaml:"log_level"`
	// Host names this daemon in the store and the audit chain; default the
	// machine's hostname.
	Host string `yaml:"host"`
	// Store is a PostgreSQL URL shared by a fleet; empty means SQLite in
	// the state directory.
	Store string `yaml:"store"`
	// Credentials configures where upstream credentials come from.
	Credentials credentials.Config `yaml:"credentials"`
	// MetricsListen is the address of the Prometheus endpoint (/metrics),
	// e.g. 127.0.0.1:9464; empty serves none.
	MetricsListen string `yaml:"metrics_listen"`
	// Approvals configures the reviewers' web page and notifications.
	Approvals Approvals `yaml:"approvals"`
	// Limits bounds each identity's sessions and their memory.
	Limits Limits `yaml:"limits"`
}

// Approvals configures how reviewers learn about and decide held requests.
type Approvals struct {
	// WebListen is the loopback address of the reviewer web page, e.g.
	// 127.0.0.1:15002; empty serves no page (the CLI still works).
	WebListen string `yaml:"web_listen"`
	// Webhook is a Slack-compatible incoming-webhook URL.
	Webhook string `yaml:"webhook"`
	// ReviewerTokens sign reviewers in to the web page.
	ReviewerTokens []approvals.Token `yaml:"reviewer_tokens"`
}

// Default returns the embedded default configuration.
func Default() Config {
	return Config{
		Socket:     "/run/interlock/interlock.sock",
		StateDir:   "/var/lib/interlock",
		BPFFS:      "/sys/fs/bpf/interlock",
		ListenPort: 15001,
		LogLevel:   "info",
		Limits:     DefaultLimits(),
	}
}

// Load reads a YAML configuration file over the defaults. Unknown keys are
// errors, so a typo never silently leaves a default in force.
func Load(path string) (Config, error) {
	cfg := Default()
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("parse config %s: %w", path, err)
	}
	return cfg, cfg.Validate()
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	switch {
	case c.Socket == "":
		return errors.New("config: socket is empty")
	case c.StateDir == "":
		return errors.New("config: state_dir is empty")
	case c.BPFFS == "":
		return errors.New("config: bpffs is empty")
	case c.ListenPort == 0:
		return errors.New("config: listen_port is 0")
	}
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	for key, addr := range map[string]string{"metrics_listen": c.MetricsListen, "approvals.web_listen": c.Approvals.WebListen} {
		if addr == "" {
			continue
		}
		// Both serve operators only; never expose them beyond the host.
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("config: %s %q must be a loopback address and port", key, addr)
		}
	}
	return nil
}
