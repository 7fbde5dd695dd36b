package config

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/dustin/go-humanize"
	"gopkg.in/yaml.v3"
)

// Limits bounds what one identity's sessions may take from interlockd and
// from the servers behind it, so that one agent cannot exhaust either for
// the others. A zero value means no limit.
type Limits struct {
	// Sessions caps the identity's concurrent decoded sessions
	// (PostgreSQL, HTTP, SSH): each may hold a server connection slot.
	// Over the cap a session is refused in its protocol's words
	// (PostgreSQL: SQLSTATE 53300, as a full server refuses it).
	Sessions int `yaml:"sessions"`
	// Connections caps the identity's concurrent connections served
	// without a session (plain TCP relays, DNS over TCP), each one or two
	// of interlockd's descriptors: over the cap a connection is reset.
	Connections int `yaml:"connections"`
	// SessionBuffer caps one message a session has to hold whole (a
	// statement's text, a masked row); a larger one ends the session with
	// SQLSTATE 54000 before anything is allocated.
	SessionBuffer Size `yaml:"session_buffer"`
	// IdentityBuffer caps what all of the identity's sessions buffer
	// together; the session that would go over ends with SQLSTATE 53200.
	IdentityBuffer Size `yaml:"identity_buffer"`
	// MessageTimeout bounds how long an agent may take to send the rest of
	// a message it began; waiting between messages is not bounded.
	MessageTimeout time.Duration `yaml:"message_timeout"`
	// Identities overrides these limits for the named identities; keys
	// left out keep the values above.
	Identities map[string]IdentityLimits `yaml:"identities"`
}

// IdentityLimits overrides Limits for one identity; nil fields inherit.
type IdentityLimits struct {
	Sessions       *int           `yaml:"sessions"`
	Connections    *int           `yaml:"connections"`
	SessionBuffer  *Size          `yaml:"session_buffer"`
	IdentityBuffer *Size          `yaml:"identity_buffer"`
	MessageTimeout *time.Duration `yaml:"message_timeout"`
}

// Size is a byte count written as a number or with a unit ("8MiB", "64 MB").
type Size int64

// UnmarshalYAML accepts a plain number of bytes or a size with a unit.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := humanize.ParseBytes(n.Value)
	if err != nil || v > 1<<40 {
		return fmt.Errorf("line %d: %q is not a size in bytes (e.g. 8MiB)", n.Line, n.Value)
	}
	*s = Size(v)
	return nil
}

// DefaultLimits are the limits in force without configuration: generous
// for an agent's ordinary work, small beside a server's 100 connection
// slots and a host's memory.
func DefaultLimits() Limits {
	return Limits{Sessions: 32, Connections: 1024, SessionBuffer: 8 << 20, IdentityBuffer: 64 << 20, MessageTimeout: 30 * time.Second}
}

// For returns the limits in force for identity, overrides applied; its
// Identities is nil.
func (l Limits) For(identity string) Limits {
	out := l
	out.Identities = nil
	o, ok := l.Identities[identity]
	if !ok {
		return out
	}
	if o.Sessions != nil {
		out.Sessions = *o.Sessions
	}
	if o.Connections != nil {
		out.Connections = *o.Connections
	}
	if o.SessionBuffer != nil {
		out.SessionBuffer = *o.SessionBuffer
	}
	if o.IdentityBuffer != nil {
		out.IdentityBuffer = *o.IdentityBuffer
	}
	if o.MessageTimeout != nil {
		out.MessageTimeout = *o.MessageTimeout
	}
	return out
}

// Validate reports the first limit that cannot work, for the defaults and
// for every identity's overrides.
func (l Limits) Validate() error {
	if err := l.For("").validate("limits"); err != nil {
		return err
	}
	names := make([]string, 0, len(l.Identities))
	for name := range l.Identities {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "" {
			return errors.New("config: limits.identities has an empty identity name")
		}
		if err := l.For(name).validate("limits.identities." + name); err != nil {
			return err
		}
	}
	return nil
}

func (l Limits) validate(where string) error {
	switch {
	case l.Sessions < 0:
		return fmt.Errorf("config: %s.sessions is negative (0 means no cap)", where)
	case l.Connections < 0:
		return fmt.Errorf("config: %s.connections is negative (0 means no cap)", where)
	case l.SessionBuffer < 0, l.IdentityBuffer < 0:
		return fmt.Errorf("config: %s buffer sizes must not be negative (0 means no cap)", where)
	case l.SessionBuffer > 0 && l.SessionBuffer < 64<<10:
		// Below this, ordinary statements and row descriptions would end
		// sessions; the relay's own buffer is 16 KiB.
		return fmt.Errorf("config: %s.session_buffer %d is below 64KiB", where, l.SessionBuffer)
	case l.IdentityBuffer > 0 && l.IdentityBuffer < l.SessionBuffer:
		return fmt.Errorf("config: %s.identity_buffer %d is smaller than session_buffer %d: no session could use its own cap", where, l.IdentityBuffer, l.SessionBuffer)
	case l.MessageTimeout < 0:
		return fmt.Errorf("config: %s.message_timeout is negative (0 means none)", where)
	case l.MessageTimeout > 0 && l.MessageTimeout < 100*time.Millisecond:
		return fmt.Errorf("config: %s.message_timeout %v is below 100ms", where, l.MessageTimeout)
	}
	return nil
}
