// Package config holds interlockd's configuration: where it attaches, pins,
// listens and keeps state. With no file, Default() is a complete working
// configuration, so `interlockd` alone starts a usable daemon.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/credentials"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/policy"
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
	// LogFormat is "json" (the default, one object a line, for journald
	// and log pipelines) or "console" (aligned, coloured text for a
	// terminal).
	LogFormat string `yaml:"log_format"`
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
	// HTTP bounds HTTP sessions' heads, bodies and streams.
	HTTP HTTP `yaml:"http"`
	// Recordings keeps room on the recordings' file system.
	Recordings Recordings `yaml:"recordings"`
	// DNSResolvers are the resolvers ("ADDR:PORT", at most
	// datapath.MaxResolvers) interlockd forwards the DNS questions it
	// allows to; tagged DNS to them (as to port 53 of any address) goes
	// through interlockd. Empty: the nameservers of /etc/resolv.conf, port 53.
	DNSResolvers []string `yaml:"dns_resolvers"`
	// DockerSocket is the Docker Engine API's unix socket, asked at accept
	// about the container a caller's cgroup belongs to when an identity of
	// the policy selects on its container.
	DockerSocket string `yaml:"docker_socket"`
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
		Socket:       "/run/interlock/interlock.sock",
		StateDir:     "/var/lib/interlock",
		BPFFS:        "/sys/fs/bpf/interlock",
		ListenPort:   15001,
		LogLevel:     "info",
		LogFormat:    "json",
		Limits:       DefaultLimits(),
		HTTP:         DefaultHTTP(),
		Recordings:   DefaultRecordings(),
		DockerSocket: "/run/docker.sock",
	}
}

// Load reads a YAML configuration file over the defaults. Unknown keys are
// errors, so a typo never silently leaves a default in force. It decodes
// like the policy loader: every error is "file:line:col: what is wrong",
// an unknown key with the closest known one.
func Load(path string) (Config, error) {
	cfg := Default()
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	if err := policy.Decode(path, data, &cfg); err != nil {
		return cfg, err
	}
	return cfg, positioned(path, data, cfg.Validate())
}

// KeyError is a setting that cannot work, named by its dotted key
// ("approvals.web_listen").
type KeyError struct {
	Key, Msg string
}

// Error renders "config: key: message".
func (e *KeyError) Error() string { return "config: " + e.Key + ": " + e.Msg }

func keyErrorf(key, format string, args ...any) *KeyError {
	return &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// Validate reports the first setting that cannot work, as a *KeyError.
func (c Config) Validate() error {
	switch {
	case c.Socket == "":
		return keyErrorf("socket", "is empty")
	case c.StateDir == "":
		return keyErrorf("state_dir", "is empty")
	case c.BPFFS == "":
		return keyErrorf("bpffs", "is empty")
	case c.ListenPort == 0:
		return keyErrorf("listen_port", "is 0")
	case c.LogFormat != "json" && c.LogFormat != "console":
		return keyErrorf("log_format", "%q is neither json nor console", c.LogFormat)
	}
	if _, err := zerolog.ParseLevel(c.LogLevel); err != nil || c.LogLevel == "" {
		return keyErrorf("log_level", "%q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	if err := c.Limits.Validate(); err != nil {
		return err
	}
	if err := c.HTTP.validate(); err != nil {
		return err
	}
	if _, err := c.Resolvers(); err != nil {
		return err
	}
	for key, addr := range map[string]string{"metrics_listen": c.MetricsListen, "approvals.web_listen": c.Approvals.WebListen} {
		if addr == "" {
			continue
		}
		// Both serve operators only; never expose them beyond the host.
		host, _, err := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return keyErrorf(key, "%q must be a loopback address and port", addr)
		}
	}
	return nil
}

// Resolvers returns DNSResolvers parsed; nil when none are set. Its error
// is a *KeyError.
func (c Config) Resolvers() ([]netip.AddrPort, error) {
	if len(c.DNSResolvers) > datapath.MaxResolvers {
		return nil, keyErrorf("dns_resolvers", "%d resolvers, at most %d", len(c.DNSResolvers), datapath.MaxResolvers)
	}
	var out []netip.AddrPort
	for _, s := range c.DNSResolvers {
		ap, err := netip.ParseAddrPort(s)
		if err != nil || ap.Port() == 0 {
			return nil, keyErrorf("dns_resolvers", "%q is not an address and port such as 127.0.0.53:53 or [::1]:53", s)
		}
		out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return out, nil
}

// positioned turns a *KeyError into "file:line:col: key: message" at the
// key's value in the file; other errors, and keys the file does not set
// (a default that cannot work), are returned as they are.
func positioned(path string, data []byte, err error) error {
	var ke *KeyError
	if !errors.As(err, &ke) {
		return err
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return err
	}
	n := doc.Content[0]
	for _, part := range strings.Split(ke.Key, ".") {
		var next *yaml.Node
		for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return err
		}
		n = next
	}
	return fmt.Errorf("%s:%d:%d: %s: %s", path, n.Line, n.Column, ke.Key, ke.Msg)
}
