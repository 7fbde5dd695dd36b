package session

import (
	"context"
	"crypto/x509"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"syscall"

	"github.com/interlock-dev/interlock/decoders/http"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
)

// byName returns the Select of a connection whose http target is chosen by
// the server name the decoder reads. This is the one place a target is
// chosen by name: the policy in force picks the target for the name and
// port (byAddr, the target of the address, when the agent sent no name),
// the connection to it is decided and audited with the name, as a
// connection chosen by address is at accept, and the connection record
// takes the target for every later decision.
func (p *Pipeline) byName(c *conn, byAddr *policy.Target, port uint16) func(ctx context.Context, name string) (string, protocol.Verdict) {
	return func(_ context.Context, name string) (string, protocol.Verdict) {
		pol := p.cfg.Policy.Current()
		t := pol.ChosenByName(byAddr, name, port)
		op := "CONNECT " + name
		c.target = t
		if t == nil {
			msg := fmt.Sprintf("no http target has host %q on port %d", name, port)
			if name == "" {
				msg = fmt.Sprintf("the agent sent no server name (a URL with an IP address sends none), and no http target has the address it connected to on port %d", port)
			}
			dec := policy.Decision{Action: policy.Deny, Rule: "unknown-host", Message: msg}
			decisionCounter(p.cfg.Metrics, dec, policy.Enforce).Inc()
			p.record(c.decision(op, "", dec, true))
			return "", verdictOf(dec)
		}
		if t.TLS == policy.TLSPassthrough {
			op += " (TLS passthrough: not decrypted)"
		}
		dec := pol.Decide(&policy.Input{Subject: &c.subject, Target: t, Protocol: "http", Op: policy.Operation{Kind: policy.OpConnect}})
		mode := pol.Mode(&c.subject, t)
		decisionCounter(p.cfg.Metrics, dec, mode).Inc()
		p.record(c.decision(op, "", dec, mode == policy.Enforce))
		if mode != policy.Enforce {
			return t.Name, protocol.Verdict{Action: protocol.Allow, Rule: dec.Rule}
		}
		return t.Name, verdictOf(dec)
	}
}

// httpTarget gives the HTTP decoder a target's TLS handling and the roots
// its upstream is verified against (the target's upstream_ca, as the file is
// now, so a replaced file applies from the next connection; else the
// system's).
func (p *Pipeline) httpTarget(name string) (http.Target, error) {
	t := p.cfg.Policy.Current().Target(name)
	if t == nil {
		return http.Target{}, fmt.Errorf("target %q is no longer in the policy", name)
	}
	var out http.Target
	switch t.TLS {
	case policy.TLSIntercept:
		out.Mode = http.Intercept
	case policy.TLSPassthrough:
		out.Mode = http.Passthrough
	}
	if t.UpstreamCA != "" {
		pool, err := p.caFiles.pool(t.UpstreamCA)
		if err != nil {
			return http.Target{}, fmt.Errorf("target %q: upstream_ca: %w", name, err)
		}
		out.RootCAs = pool
	}
	return out, nil
}

// caFiles holds the certificate pools of the upstream_ca files, each
// beside the identity and times of the file it was parsed from. A
// connection costs a stat of the file, not reading and parsing it (90 µs of
// CPU per intercepted connection in BenchmarkHTTPS's); a file replaced,
// rewritten or touched is parsed again. One entry per path a policy has
// named.
type caFiles struct {
	mu sync.Mutex
	m  map[string]caFile
}

type caFile struct {
	stamp caStamp
	pool  *x509.CertPool
}

// caStamp is what changes when a file is replaced (device, inode) or
// written (size, modification and change times).
type caStamp struct {
	dev, ino           uint64
	size, mtime, ctime int64
}

func (f *caFiles) pool(path string) (*x509.CertPool, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	stamp := caStamp{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
	f.mu.Lock()
	c, ok := f.m[path]
	f.mu.Unlock()
	if ok && c.stamp == stamp {
		return c.pool, nil
	}
	// Written between the stat and the read, the file is parsed as it is
	// now under the older stamp, which the next connection's stat no
	// longer matches: it is parsed once more.
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	f.mu.Lock()
	if f.m == nil {
		f.m = map[string]caFile{}
	}
	f.m[path] = caFile{stamp: stamp, pool: pool}
	f.mu.Unlock()
	return pool, nil
}
