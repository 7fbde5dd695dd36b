package daemon_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// testResolver is a DNS server on loopback (UDP and TCP, one port), the
// resolver interlockd forwards to: it answers A questions with the address
// in a, or 192.0.2.10, and remembers every name it was asked.
type testResolver struct {
	addr string
	mu   sync.Mutex
	seen []string
	a    map[string]string // name (with final dot) -> address
	// rotate, when set, gives the address and TTL of every A answer.
	rotate func() (string, int)
	// slow, when set, makes the answers to names ending in it wait 3 s.
	slow string
}

func startResolver(t testing.TB) *testResolver {
	t.Helper()
	pc, ln := testenv.ListenDNS(t)
	r := &testResolver{addr: pc.LocalAddr().String(), a: map[string]string{}}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, m *dns.Msg) {
		r.mu.Lock()
		r.seen = append(r.seen, strings.ToLower(m.Question[0].Name))
		addr, ttl := r.a[strings.ToLower(m.Question[0].Name)], 60
		if r.rotate != nil {
			addr, ttl = r.rotate()
		}
		slow := r.slow != "" && strings.HasSuffix(strings.ToLower(m.Question[0].Name), r.slow)
		r.mu.Unlock()
		if slow {
			time.Sleep(3 * time.Second)
		}
		if addr == "" {
			addr = "192.0.2.10"
		}
		resp := new(dns.Msg).SetReply(m)
		if m.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(fmt.Sprintf("%s %d IN A %s", m.Question[0].Name, ttl, addr))
			resp.Answer = append(resp.Answer, rr)
		}
		w.WriteMsg(resp)
	})
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return r
}

// startDNS starts interlockd with policy, its allowed questions forwarded
// to res, and extra configuration lines; the fixture runs the agent.
func startDNS(t testing.TB, res *testResolver, policy, extra string) *fixture {
	t.Helper()
	dir := t.TempDir()
	pol, conf := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "interlockd.yaml")
	if err := os.WriteFile(pol, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("dns_resolvers: [%q]\n%s", res.addr, extra)), 0o644); err != nil {
		t.Fatal(err)
	}
	return &fixture{d: daemontest.Start(t, daemontest.Options{Policy: pol, Config: conf}), agent: agentBinary(t)}
}

// answer makes the resolver answer name (with its final dot) with addr.
// Under the lock: a query may already be arriving.
func (r *testResolver) answer(name, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.a[name] = addr
}

// rotateWith makes every A answer f's address and TTL.
func (r *testResolver) rotateWith(f func() (string, int)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rotate = f
}

// asked reports whether the resolver was ever asked about a name
// containing part.
func (r *testResolver) asked(part string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.seen {
		if strings.Contains(n, part) {
			return true
		}
	}
	return false
}

const dnsPolicy = `version: 1
identities:
  - name: ci-bot
    dns:
      allow: [allowed.example.test, "*.svc.example.test"]
      refuse_encoded_labels: true
rules:
  - {name: ci-bot-tcp, identity: ci-bot, protocol: tcp, action: allow}
`

// TestDNSThroughInterlock: a tagged agent's look-ups, by getent (the libc
// resolver, to /etc/resolv.conf's nameserver) and by a DNS client asking
// any address over UDP or TCP, all reach interlockd, which forwards the
// allowed names to the resolver dns_resolvers names and answers the rest
// REFUSED: the resolver never sees them, and the audit trail does.
func TestDNSThroughInterlock(t *testing.T) {
	res := startResolver(t)
	f := startDNS(t, res, dnsPolicy, "")
	d := f.d

	getent := func(name string) (string, int) {
		t.Helper()
		return d.Exec("ci-bot", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "getent", "hosts", name)
	}
	if out, code := getent("allowed.example.test"); code != 0 || !strings.Contains(out, "192.0.2.10") {
		t.Errorf("getent hosts allowed.example.test: exit %d, %q; want 192.0.2.10", code, out)
	}
	if out, code := getent("api.svc.example.test"); code != 0 || !strings.Contains(out, "192.0.2.10") {
		t.Errorf("getent hosts api.svc.example.test: exit %d, %q", code, out)
	}
	if out, code := getent("denied.example.test"); code == 0 {
		t.Errorf("getent hosts denied.example.test: %q, want no answer", out)
	}

	for _, c := range []struct {
		arg, want string
	}{
		// Another address than any resolver, over UDP and TCP.
		{"udp|192.0.2.99:53|allowed.example.test|A", "NOERROR allowed.example.test. 60 IN A 192.0.2.10"},
		{"tcp|192.0.2.99:53|allowed.example.test|A", "NOERROR allowed.example.test. 60 IN A 192.0.2.10"},
		{"udp|192.0.2.99:53|secret.example.test|A", "REFUSED"},
		{"tcp|192.0.2.99:53|secret-tcp.example.test|A", "REFUSED"},
		{"udp|[2001:db8::53]:53|secret6.example.test|A", "REFUSED"},
		// The resolver itself, directly.
		{"udp|" + res.addr + "|direct.example.test|A", "REFUSED"},
		{"tcp|" + res.addr + "|direct-tcp.example.test|A", "REFUSED"},
		// An allowed name, a type the policy does not allow.
		{"udp|192.0.2.99:53|allowed.example.test|TXT", "REFUSED"},
	} {
		r := f.run(t, "ci-bot", "dns", c.arg, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
		if r.Err != "" || r.Line != c.want {
			t.Errorf("%s: %+v, want %q", c.arg, r, c.want)
		}
	}

	// Data encoded into look-ups gets nothing to the resolver.
	chunk := "4a6f686e20536d6974682c2031323320"
	for i := 0; i < 5; i++ {
		arg := fmt.Sprintf("udp|192.0.2.99:53|%s%02d.svc.example.test|A", chunk, i)
		if r := f.run(t, "ci-bot", "dns", arg); r.Line != "REFUSED" {
			t.Errorf("exfiltration look-up %d: %+v, want REFUSED", i, r)
		}
	}

	for _, name := range []string{"denied.example.test", "secret", "direct", "4a6f686e"} {
		if res.asked(name) {
			t.Errorf("the resolver was asked about %s", name)
		}
	}
	if !res.asked("allowed.example.test") {
		t.Error("the resolver never saw the allowed name")
	}
	logs := d.Logs()
	for _, want := range []string{
		`"name":"secret.example.test"`, `"reason":"name-not-allowed"`, `"reason":"encoded-label"`,
		`"reason":"type-not-allowed"`, `"transport":"tcp"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("interlockd log lacks %s", want)
		}
	}
}

// TestDNSFloodLeavesOthersTheirShare: an agent flooding the DNS proxy
// with questions its resolver is slow to answer holds at most a quarter of
// the questions interlockd serves at once; another identity's question,
// asked meanwhile, is answered, not dropped for want of a slot.
func TestDNSFloodLeavesOthersTheirShare(t *testing.T) {
	res := startResolver(t)
	res.mu.Lock()
	res.slow = ".slow.example.test."
	res.mu.Unlock()
	f := startDNS(t, res, `version: 1
identities:
  - name: ci-bot
    dns: {allow: ["*.slow.example.test"]}
  - name: other-bot
    dns: {allow: [allowed.example.test]}
`, "")
	if r := f.run(t, "ci-bot", "dnsflood", "400|192.0.2.99:53|slow.example.test"); r.Err != "" || r.OK != 400 {
		t.Fatalf("flood: %+v", r)
	}
	start := time.Now()
	r := f.run(t, "other-bot", "dns", "udp|192.0.2.99:53|allowed.example.test|A")
	if r.Err != "" || r.Line != "NOERROR allowed.example.test. 60 IN A 192.0.2.10" {
		t.Fatalf("another identity's question during the flood: %+v", r)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("answered after %v: the flood's slow answers held it", time.Since(start))
	}
}

// TestDNSOverTCPConnectionsCapped: an identity's DNS over TCP connections
// count against its plain connections (limits.connections): held open by
// the dozen they would take interlockd's descriptors as plain relays do.
// Over the cap one is reset and audited as the limit.
func TestDNSOverTCPConnectionsCapped(t *testing.T) {
	res := startResolver(t)
	f := startDNS(t, res, dnsPolicy, "limits: {connections: 1}\n")
	d := f.d
	f.run(t, "ci-bot", "hoard", "3|192.0.2.99:53|0s|100ms", "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
	waitEvent(t, d, "limit_exceeded", func(m map[string]any) bool { return m["limit"] == "connections" && m["identity"] == "ci-bot" })
	// The slot is given back: a question over TCP is answered.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r := f.run(t, "ci-bot", "dns", "tcp|192.0.2.99:53|allowed.example.test|A")
		if r.Line == "NOERROR allowed.example.test. 60 IN A 192.0.2.10" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer over TCP once the held connections closed: %+v", r)
		}
	}
}

const learnPolicy = `version: 1
identities:
  - name: ci-bot
targets:
  - {name: web, protocol: tcp, addresses: [web.example.test], port: %s}
rules:
  - {name: ci-bot-web, identity: ci-bot, target: web, action: allow}
`

// TestDNSLearnsTargetAddresses: a target named by a host name the host's
// own resolver does not know matches the address interlockd relayed to the
// agent for that name, and the kernel redirects it before the agent has the
// answer: refused at connect() before the look-up, served right after,
// and after a policy reload too.
func TestDNSLearnsTargetAddresses(t *testing.T) {
	res := startResolver(t)
	tg := newTarget(t, "tcp4", "127.0.0.7:0")
	_, port, _ := net.SplitHostPort(tg.addr())
	res.answer("web.example.test.", "127.0.0.7")
	f := startDNS(t, res, fmt.Sprintf(learnPolicy, port), "")
	d := f.d

	if r := f.run(t, "ci-bot", "tcp", tg.addr()); r.Errno != int(syscall.EPERM) {
		t.Fatalf("connect before the look-up: %+v, want EPERM", r)
	}
	if r := f.run(t, "ci-bot", "dns", "udp|192.0.2.99:53|web.example.test|A"); r.Line != "NOERROR web.example.test. 60 IN A 127.0.0.7" {
		t.Fatalf("look-up: %+v", r)
	}
	r := f.run(t, "ci-bot", "tcp", tg.addr())
	if r.Err != "" || r.Line != "hello from target" || r.Peer != tg.addr() {
		t.Fatalf("connect after the look-up: %+v", r)
	}
	if !strings.Contains(d.Logs(), `"target":"web"`) {
		t.Errorf("the connection was not decided as target web:\n%s", d.Logs())
	}
	// A reload keeps what the answers taught.
	if _, stderr, err := d.CLI("policy", "reload"); err != nil {
		t.Fatalf("reload: %v %s", err, stderr)
	}
	if r := f.run(t, "ci-bot", "tcp", tg.addr()); r.Err != "" || r.Line != "hello from target" {
		t.Fatalf("connect after a reload: %+v", r)
	}
}

const learnPerIdentityPolicy = `version: 1
identities: [{name: ci-bot}, {name: other-bot}]
targets:
  - {name: web, protocol: tcp, addresses: [web.example.test], port: %s}
rules:
  - {name: web, identity: [ci-bot, other-bot], target: web, action: allow}
`

// TestDNSLearnedPerIdentity: what an answer to one identity taught is that
// identity's: another that connects to the address without having looked
// the name up is refused as for an unknown host (EPERM at connect), until
// its own look-up gives it the address.
func TestDNSLearnedPerIdentity(t *testing.T) {
	res := startResolver(t)
	tg := newTarget(t, "tcp4", "127.0.0.7:0")
	_, port, _ := net.SplitHostPort(tg.addr())
	res.answer("web.example.test.", "127.0.0.7")
	metricsPort := testenv.FreePort(t)
	f := startDNS(t, res, fmt.Sprintf(learnPerIdentityPolicy, port), fmt.Sprintf("metrics_listen: 127.0.0.1:%d\n", metricsPort))

	if r := f.run(t, "ci-bot", "dns", "udp|192.0.2.99:53|web.example.test|A"); r.Line != "NOERROR web.example.test. 60 IN A 127.0.0.7" {
		t.Fatalf("ci-bot's look-up: %+v", r)
	}
	if r := f.run(t, "ci-bot", "tcp", tg.addr()); r.Err != "" || r.Line != "hello from target" {
		t.Fatalf("ci-bot's connect after its look-up: %+v", r)
	}
	if r := f.run(t, "other-bot", "tcp", tg.addr()); r.Errno != int(syscall.EPERM) {
		t.Fatalf("other-bot's connect on ci-bot's answer: %+v, want EPERM", r)
	}
	if r := f.run(t, "other-bot", "dns", "udp|192.0.2.99:53|web.example.test|A"); r.Line != "NOERROR web.example.test. 60 IN A 127.0.0.7" {
		t.Fatalf("other-bot's look-up: %+v", r)
	}
	if r := f.run(t, "other-bot", "tcp", tg.addr()); r.Err != "" || r.Line != "hello from target" {
		t.Fatalf("other-bot's connect after its own look-up: %+v", r)
	}
	// The metrics count both questions and hold the address once per
	// identity.
	body := scrapeMetrics(t, metricsPort)
	for _, want := range []string{`interlock_dns_questions_total{outcome="forwarded",transport="udp"} 2`, "interlock_dns_learned_addresses 2"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

const denyByNamePolicy = `version: 1
identities:
  - name: ci-bot
    intercept:
      - {to: [blocked.example.test], action: deny}
    dns:
      allow: [blocked.example.test]
rules:
  - {name: ci-bot-tcp, identity: ci-bot, protocol: tcp, action: allow}
`

// TestDNSInterceptDenyByName: a deny intercept entry by host name refuses
// the agent's connect to the address the name resolved to with EPERM at
// connect(), from the first try after the look-up; before it, the address
// is nothing the policy names and the connect is relayed.
func TestDNSInterceptDenyByName(t *testing.T) {
	res := startResolver(t)
	tg := newTarget(t, "tcp4", "127.0.0.8:0")
	res.answer("blocked.example.test.", "127.0.0.8")
	f := startDNS(t, res, denyByNamePolicy, "")

	if r := f.run(t, "ci-bot", "tcp", tg.addr()); r.Err != "" || r.Line != "hello from target" {
		t.Fatalf("connect before the look-up: %+v, want it relayed", r)
	}
	if r := f.run(t, "ci-bot", "dns", "udp|192.0.2.99:53|blocked.example.test|A"); r.Line != "NOERROR blocked.example.test. 60 IN A 127.0.0.8" {
		t.Fatalf("look-up: %+v", r)
	}
	if r := f.run(t, "ci-bot", "tcp", tg.addr()); r.Errno != int(syscall.EPERM) {
		t.Fatalf("connect after the look-up: %+v, want EPERM", r)
	}
	if n := len(tg.accepted()); n != 1 {
		t.Errorf("the target accepted %d connections, want 1 (before the look-up)", n)
	}
}

const rotatePolicy = `version: 1
identities:
  - name: ci-bot
targets:
  - {name: web, protocol: tcp, addresses: [rot.example.test], port: %s}
rules:
  - {name: ci-bot-web, identity: ci-bot, target: web, action: allow}
`

// TestDNSRotatingAddresses: a target whose name the resolver answers with
// another address every second (TTL 1) is reached on each of 1 000 connects
// the agent makes to the address it was just given, and only there; an
// address no answer gave stays refused.
func TestDNSRotatingAddresses(t *testing.T) {
	res := startResolver(t)
	first := newTarget(t, "tcp4", "127.0.0.20:0")
	_, port, _ := net.SplitHostPort(first.addr())
	targets := []*target{first}
	for i := 21; i < 30; i++ {
		targets = append(targets, newTarget(t, "tcp4", fmt.Sprintf("127.0.0.%d:%s", i, port)))
	}
	never := newTarget(t, "tcp4", "127.0.0.39:"+port)
	start := time.Now()
	res.rotateWith(func() (string, int) {
		return fmt.Sprintf("127.0.0.%d", 20+int(time.Since(start)/time.Second)%10), 1
	})
	f := startDNS(t, res, fmt.Sprintf(rotatePolicy, port), "")

	const n = 1000
	r := f.run(t, "ci-bot", "dnsloop", fmt.Sprintf("%d|rot.example.test|%s", n, port))
	if r.Err != "" || r.OK != n {
		t.Fatalf("%d of %d connects served; %s", r.OK, n, r.Err)
	}
	accepted := 0
	for _, tg := range targets {
		accepted += len(tg.accepted())
	}
	if accepted != n {
		t.Errorf("the targets accepted %d connections, want %d", accepted, n)
	}
	if got := never.accepted(); len(got) != 0 {
		t.Errorf("an address no answer gave got %d connections", len(got))
	}
	if r := f.run(t, "ci-bot", "tcp", never.addr()); r.Err == "" {
		t.Errorf("connect to an address no answer gave: %+v, want refused", r)
	}
}

// BenchmarkDNSLookup is the latency interlockd adds to a look-up: 1 000
// questions per iteration from a tagged cgroup (through the kernel's
// steering, interlockd's decision and audit record, to the resolver) and
// from an untagged one straight to the same resolver; medians of each
// iteration's p50 and p99.
func BenchmarkDNSLookup(b *testing.B) {
	res := startResolver(b)
	dir := b.TempDir()
	pol, conf := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "interlockd.yaml")
	if err := os.WriteFile(pol, []byte(dnsPolicy), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("dns_resolvers: [%q]\n", res.addr)), 0o644); err != nil {
		b.Fatal(err)
	}
	d := daemontest.Start(b, daemontest.Options{Policy: pol, Config: conf})
	f := &fixture{d: d, agent: agentBinary(b)}
	tagged := d.Cgroup("tagged")
	if _, stderr, err := d.CLI("tag", tagged, "--identity", "ci-bot"); err != nil {
		b.Fatalf("tag: %v %s", err, stderr)
	}
	direct := d.Cgroup("direct")
	arg := res.addr + "|allowed.example.test"
	var p50, p99, d50, d99 []float64
	for i := 0; i < b.N; i++ {
		r, q := f.runIn(b, tagged, "dnslatency", arg), f.runIn(b, direct, "dnslatency", arg)
		if r.Err != "" || q.Err != "" {
			b.Fatalf("look-ups: tagged %+v, direct %+v", r, q)
		}
		p50, p99, d50, d99 = append(p50, r.P50), append(p99, r.P99), append(d50, q.P50), append(d99, q.P99)
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	b.ReportMetric(median(d50), "direct-p50-µs")
	b.ReportMetric(median(d99), "direct-p99-µs")
	b.ReportMetric(median(p50), "interlock-p50-µs")
	b.ReportMetric(median(p99), "interlock-p99-µs")
}
