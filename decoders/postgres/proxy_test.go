package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/rawsock"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// testProxy is an in-process proxy in front of a real PostgreSQL: it accepts
// agents on a loopback listener, authenticates upstream as the superuser and
// relays with the enforcer the test gives it.
type testProxy struct {
	t       testing.TB
	pg      *testenv.Postgres
	ln      net.Listener
	cfg     func() RelayConfig
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	keys    sync.Map // agent-visible process id -> upstream CancelKey
	nextPID atomic.Uint32
	// clientTLS, when set, terminates agent TLS.
	clientTLS atomic.Pointer[tls.Config]
}

func startProxy(t testing.TB, pg *testenv.Postgres, cfg func() RelayConfig) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testProxy{t: t, pg: pg, ln: ln, cfg: cfg}
	p.nextPID.Store(1000)
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *testProxy) Addr() string { return p.ln.Addr().String() }

// DSN is what an agent uses: any user, no password.
func (p *testProxy) DSN(extra string) string {
	return "postgres://agent@" + p.Addr() + "/postgres?sslmode=disable" + extra
}

// Errors returns what Relay returned for finished sessions.
func (p *testProxy) Errors() []error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]error(nil), p.errs...)
}

func (p *testProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			err := p.session(c)
			p.mu.Lock()
			p.errs = append(p.errs, err)
			p.mu.Unlock()
		}()
	}
}

func (p *testProxy) session(c net.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cc ClientConfig
	if cfg := p.clientTLS.Load(); cfg != nil {
		cc.TLS = func() *tls.Config { return cfg }
	}
	h, err := AcceptClient(ctx, c, cc)
	if err != nil {
		c.Close()
		return err
	}
	if h.Cancel != nil {
		defer c.Close()
		k, ok := p.keys.Load(h.Cancel.ProcessID)
		if !ok {
			return errors.New("unknown cancel key")
		}
		uc, err := net.Dial("tcp", p.pg.Addr())
		if err != nil {
			return err
		}
		defer uc.Close()
		return SendCancel(uc, k.(CancelKey))
	}
	uc, err := net.Dial("tcp", p.pg.Addr())
	if err != nil {
		c.Close()
		return err
	}
	up, err := ConnectUpstream(ctx, uc, UpstreamConfig{
		User: p.pg.Superuser, Password: p.pg.Password, Database: h.Startup.Database,
		Parameters: h.Startup.ForwardParameters(),
	})
	if err != nil {
		var se *ServerError
		if errors.As(err, &se) {
			WriteError(c, se.Response)
		}
		c.Close()
		uc.Close()
		return err
	}
	pid := p.nextPID.Add(1)
	key := CancelKey{ProcessID: pid, SecretKey: []byte{1, 2, 3, 4}}
	p.keys.Store(pid, up.Key)
	defer p.keys.Delete(pid)
	if err := GreetClient(h.Conn, h.Startup, up, key); err != nil {
		c.Close()
		uc.Close()
		return err
	}
	// Wrapped as interlockd wraps them, so the benchmark measures its path.
	return Relay(context.Background(), rawsock.Wrap(h.Conn), rawsock.Wrap(up.Conn), p.cfg())
}

// allowAll forwards everything.
var allowAll = EnforcerFunc(func(context.Context, string) Verdict { return Verdict{} })

// denyContaining denies statements whose text contains word, naming rule.
func denyContaining(word, rule string) EnforcerFunc {
	return func(_ context.Context, sql string) Verdict {
		if strings.Contains(sql, word) {
			return Verdict{Action: Deny, Rule: rule}
		}
		return Verdict{}
	}
}
