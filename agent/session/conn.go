package session

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/policy"
)

// conn is the record of one connection, built once at accept. The policy
// subject, the store session, approval requests and every audit event of
// the connection are derived from it, so the caller's identity is shaped
// in one place.
type conn struct {
	id string
	// identity is the proxy's record of the caller (proxy.Conn.Identity,
	// which the session keeps): not a copy of it, which every session,
	// idle or not, would hold twice.
	identity *proxy.Identity
	client   *net.TCPConn
	dst      string // the agent's original destination
	accepted time.Time
	// target is the policy target at accept, nil for none; its name is
	// looked up in the policy in force at each request.
	target *policy.Target
	// byName is the protocol ("http") of a connection whose target is
	// chosen by the server name its decoder reads; target is nil until
	// then.
	byName  string
	subject policy.Subject
	// begun is set once the decoder's session started (its recording did);
	// ending is the error the session ended with.
	begun  bool
	ending error
}

func newConn(pc *proxy.Conn, pol *policy.Policy) (*conn, error) {
	id := &pc.Identity
	subject, err := SubjectOf(*id, pol)
	if err != nil {
		return nil, err
	}
	return &conn{
		id: pc.ID, identity: id, client: pc.Client, dst: pc.Dst.String(), accepted: pc.Accepted,
		target:  pol.TargetFor(id.Name, pc.Dst.Addr(), pc.Dst.Port()),
		subject: subject,
	}, nil
}

// SubjectOf is the policy subject of a caller under pol: what a session's
// decisions take, and a DNS question's. A caller the policy cannot place
// is an error: one whose process was gone before /proc was read, when an
// identity of its tag selects on what /proc tells (a connect left to a
// child by a parent that exited at once would otherwise escape the
// identity naming its unit or executable), or whose executable cannot be
// hashed.
func SubjectOf(id proxy.Identity, pol *policy.Policy) (policy.Subject, error) {
	if id.Gone && pol.SelectsOnProcess(id.Name) {
		return policy.Subject{}, fmt.Errorf("pid %d exited before its executable and cgroup could be read, and an identity of %q selects on them", id.PID, id.Name)
	}
	s := policy.Subject{
		Tag: id.Name, UID: id.UID, GID: id.GID, PID: int(id.PID),
		Comm: id.Comm, Exe: id.Exe, CgroupPath: id.Cgroup, Unit: unitOf(id.Cgroup),
		Container: id.Container,
	}
	if pol.NeedsExeHash() {
		h, err := exeHash(id.PID)
		if err != nil {
			return policy.Subject{}, err
		}
		s.ExeSHA256 = h
	}
	return s, nil
}

// protocol is the protocol the connection is served with: its target's,
// or "tcp" when it has no target.
func (c *conn) protocol() string {
	if c.byName != "" {
		return c.byName
	}
	if c.target == nil || c.target.Protocol == "" {
		return "tcp"
	}
	return c.target.Protocol
}

func (c *conn) targetName() string {
	if c.target == nil {
		return ""
	}
	return c.target.Name
}

// upstreamAddr is where interlockd connects for c: the target's configured
// upstream, or the agent's original destination.
func (c *conn) upstreamAddr() string {
	if c.target != nil && c.target.Upstream != "" {
		return c.target.Upstream
	}
	return c.dst
}

// recordingProtocol is the protocol name recordings and approvals carry
// ("postgresql" selects SQL redaction and the PostgreSQL transcript).
func (c *conn) recordingProtocol() string {
	if p := c.protocol(); p != "postgres" {
		return p
	}
	return "postgresql"
}

func (c *conn) opened() audit.ConnectionOpened {
	id := c.identity
	return audit.ConnectionOpened{Session: c.id, Identity: id.Name, PID: int32(id.PID), UID: id.UID, GID: id.GID,
		Comm: id.Comm, Exe: id.Exe, Cgroup: id.Cgroup, CgroupID: id.CgroupID, Target: c.targetName(),
		Protocol: c.protocol(), Dst: c.dst, Client: c.client.RemoteAddr().String(), Upstream: c.upstreamAddr(),
		Container: id.Container}
}

// decision is the audit event of one decision; op names the operation
// ("CONNECT", a startup parameter), text is the request's own text.
func (c *conn) decision(op, text string, dec policy.Decision, enforced bool) audit.Decision {
	ev := audit.Decision{Session: c.id, Identity: c.identity.Name, Target: c.targetName(),
		Action: dec.Action.String(), Rule: dec.Rule, Reason: dec.Message, Enforced: enforced, Operation: op}
	if text != "" {
		ev.Statement = c.statement(text)
	}
	return ev
}

// statement redacts a request's text for the audit trail as its protocol
// allows: SQL loses its literals, anything else keeps only a fingerprint.
func (c *conn) statement(text string) audit.Statement {
	if c.protocol() == "postgres" {
		return audit.SQLStatement(text)
	}
	return audit.OpaqueStatement(text)
}

func (c *conn) end(outcome, reason string) audit.ConnectionClosed {
	return audit.ConnectionClosed{Session: c.id, Identity: c.identity.Name, Target: c.targetName(), Dst: c.dst,
		Outcome: outcome, Reason: reason}
}

func (c *conn) storeSession() store.Session {
	id := c.identity
	return store.Session{
		ID: c.id, Identity: id.Name, PID: int32(id.PID), UID: id.UID, Exe: id.Exe, Cgroup: id.Cgroup,
		Target: c.targetName(), Protocol: c.recordingProtocol(),
		ClientAddr: c.client.RemoteAddr().String(), UpstreamAddr: c.upstreamAddr(),
	}
}

func (c *conn) approvalRequest(text string, dec policy.Decision) approvals.Request {
	spec := policy.ApprovalSpec{Quorum: 1}
	if dec.Approval != nil {
		spec = *dec.Approval
	}
	id := c.identity
	return approvals.Request{
		Session: c.id, Identity: id.Name, PID: int(id.PID), UID: id.UID, Exe: id.Exe,
		Target: c.targetName(), Protocol: c.recordingProtocol(), Statement: text, Rule: dec.Rule,
		Reviewers: spec.Reviewers, Quorum: spec.Quorum, Timeout: spec.Timeout,
	}
}

// unitOf returns the systemd unit a cgroup path belongs to: the last
// ".service" or ".scope" component, or "" when there is none.
func unitOf(cgroup string) string {
	for p := cgroup; p != "/" && p != "." && p != ""; p = path.Dir(p) {
		b := path.Base(p)
		if strings.HasSuffix(b, ".service") || strings.HasSuffix(b, ".scope") {
			return b
		}
	}
	return ""
}

// exeHash returns the hex SHA-256 of the executable pid runs. It reads
// /proc/PID/exe, the file actually mapped, not the path, which may have
// been replaced since. Computed only for policies that match on it, so a
// process gone meanwhile is an error too.
func exeHash(pid uint32) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "", fmt.Errorf("hash the executable of pid %d: %w", pid, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash the executable of pid %d: %w", pid, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
