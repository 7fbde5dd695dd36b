package dns

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// resolver is a test resolver on loopback (UDP and TCP, one port) that
// answers A questions with 192.0.2.1 and remembers every message it got.
type resolver struct {
	addr netip.AddrPort
	mu   sync.Mutex
	seen []*dns.Msg
}

func newResolver(t testing.TB) *resolver {
	t.Helper()
	r := &resolver{}
	pc, ln := testenv.ListenDNS(t)
	r.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, m *dns.Msg) {
		r.mu.Lock()
		r.seen = append(r.seen, m.Copy())
		r.mu.Unlock()
		resp := new(dns.Msg)
		resp.SetReply(m)
		if m.Question[0].Qtype == dns.TypeA {
			resp.Answer = append(resp.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   net.IPv4(192, 0, 2, 1),
			})
		}
		w.WriteMsg(resp)
	})
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return r
}

func (r *resolver) questions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.seen {
		out = append(out, m.Question[0].Name)
	}
	return out
}

// allowExample allows names under example.com, A only.
func allowExample(q Question) Verdict {
	if strings.HasSuffix(q.Name, ".example.com") && q.Type == "A" {
		return Verdict{Allow: true}
	}
	return Verdict{Reason: "name-not-allowed"}
}

func ask(t *testing.T, p *Proxy, m *dns.Msg, udp bool) (*dns.Msg, Exchange) {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	out, ex := p.Answer(context.Background(), b, udp, allowExample)
	if out == nil {
		t.Fatalf("no answer: %+v", ex)
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if resp.Id != m.Id {
		t.Errorf("answer id %d, want %d", resp.Id, m.Id)
	}
	return resp, ex
}

func TestAnswer(t *testing.T) {
	r := newResolver(t)
	p := &Proxy{Resolvers: []netip.AddrPort{r.addr}}

	q := new(dns.Msg).SetQuestion("API.Example.com.", dns.TypeA)
	resp, ex := ask(t, p, q, true)
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 || !ex.Allowed || ex.Resolver != r.addr ||
		ex.Question != (Question{Name: "api.example.com", Type: "A"}) || ex.Rcode != "NOERROR" ||
		len(ex.Answers) != 1 || !strings.Contains(ex.Answers[0], "192.0.2.1") ||
		len(ex.Addresses) != 1 || ex.Addresses[0] != (Address{netip.MustParseAddr("192.0.2.1"), time.Minute}) {
		t.Errorf("allowed question: %v\n%+v", resp, ex)
	}

	for _, c := range []struct {
		name   string
		msg    *dns.Msg
		rcode  int
		reason string
	}{
		{"denied name", new(dns.Msg).SetQuestion("secret.exfil.test.", dns.TypeA), dns.RcodeRefused, "name-not-allowed"},
		{"denied type", new(dns.Msg).SetQuestion("api.example.com.", dns.TypeTXT), dns.RcodeRefused, "name-not-allowed"},
		{"zone transfer", new(dns.Msg).SetAxfr("example.com."), dns.RcodeRefused, "type AXFR is never forwarded"},
		{"ANY", new(dns.Msg).SetQuestion("api.example.com.", dns.TypeANY), dns.RcodeRefused, "type ANY is never forwarded"},
		{"update", new(dns.Msg).SetUpdate("example.com."), dns.RcodeRefused, "opcode UPDATE is not QUERY"},
		{"two questions", func() *dns.Msg {
			m := new(dns.Msg).SetQuestion("a.example.com.", dns.TypeA)
			m.Question = append(m.Question, dns.Question{Name: "b.exfil.test.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
			return m
		}(), dns.RcodeFormatError, "2 questions, not one"},
		{"chaos class", func() *dns.Msg {
			m := new(dns.Msg).SetQuestion("version.bind.", dns.TypeTXT)
			m.Question[0].Qclass = dns.ClassCHAOS
			return m
		}(), dns.RcodeRefused, "class CH is not IN"},
		{"a response", func() *dns.Msg {
			m := new(dns.Msg).SetQuestion("a.example.com.", dns.TypeA)
			m.Response = true
			return m
		}(), dns.RcodeFormatError, "a response, not a query"},
	} {
		resp, ex := ask(t, p, c.msg, true)
		if resp.Rcode != c.rcode || ex.Allowed || ex.Reason != c.reason || len(resp.Answer) != 0 {
			t.Errorf("%s: rcode %s, exchange %+v; want %s, %q", c.name, dns.RcodeToString[resp.Rcode], ex, dns.RcodeToString[c.rcode], c.reason)
		}
	}
	if got := r.questions(); len(got) != 1 || got[0] != "API.Example.com." {
		t.Errorf("the resolver saw %v, want the allowed question only", got)
	}
}

// TestForwardSendsOnlyTheQuestion: what the agent adds to a query (records
// in other sections, EDNS0 options) could carry data; none of it reaches
// the resolver.
func TestForwardSendsOnlyTheQuestion(t *testing.T) {
	r := newResolver(t)
	p := &Proxy{Resolvers: []netip.AddrPort{r.addr}}
	q := new(dns.Msg).SetQuestion("a.example.com.", dns.TypeA)
	q.SetEdns0(1232, true)
	opt := q.IsEdns0()
	opt.Option = append(opt.Option, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("payload")})
	txt, _ := dns.NewRR(`smuggled.example.com. 60 IN TXT "payload"`)
	q.Extra = append(q.Extra, txt)
	q.Ns = append(q.Ns, txt)
	if resp, _ := ask(t, p, q, true); resp.Rcode != dns.RcodeSuccess {
		t.Fatalf("rcode %s", dns.RcodeToString[resp.Rcode])
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.seen[0]
	if len(got.Ns) != 0 || len(got.Extra) != 1 || got.Id == q.Id {
		t.Fatalf("the resolver got %v", got)
	}
	if o := got.IsEdns0(); o == nil || o.UDPSize() != 1232 || !o.Do() || len(o.Option) != 0 {
		t.Errorf("the resolver got EDNS0 %v, want size 1232, DO, no options", o)
	}
}

func TestMalformed(t *testing.T) {
	p := &Proxy{}
	if out, ex := p.Answer(context.Background(), []byte{1, 2, 3}, true, allowExample); out != nil || !strings.HasPrefix(ex.Reason, "malformed") {
		t.Errorf("3 bytes: %x, %+v; want no answer", out, ex)
	}
	// A readable header, then garbage: FORMERR.
	b := append([]byte{0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0}, 0x3f, 'x')
	out, ex := p.Answer(context.Background(), b, true, allowExample)
	resp := new(dns.Msg)
	if out == nil || resp.Unpack(out) != nil || resp.Rcode != dns.RcodeFormatError || resp.Id != 0xabcd || ex.Allowed {
		t.Errorf("garbage after a header: %v, %+v; want FORMERR", resp, ex)
	}
}

func TestResolverDown(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	p := &Proxy{Resolvers: []netip.AddrPort{dead}, Timeout: time.Second}
	resp, ex := ask(t, p, new(dns.Msg).SetQuestion("a.example.com.", dns.TypeA), true)
	if resp.Rcode != dns.RcodeServerFailure || ex.Err == nil || !ex.Allowed {
		t.Errorf("resolver down: %v, %+v; want SERVFAIL with the error", resp, ex)
	}
	// The next resolver is asked.
	r := newResolver(t)
	p.Resolvers = append(p.Resolvers, r.addr)
	if resp, ex := ask(t, p, new(dns.Msg).SetQuestion("a.example.com.", dns.TypeA), true); resp.Rcode != dns.RcodeSuccess || ex.Resolver != r.addr {
		t.Errorf("second resolver: %v, %+v", resp, ex)
	}
}

func TestServeStream(t *testing.T) {
	r := newResolver(t)
	p := &Proxy{Resolvers: []netip.AddrPort{r.addr}}
	agent, proxy := net.Pipe()
	defer agent.Close()
	var (
		mu  sync.Mutex
		exs []Exchange
	)
	done := make(chan error, 1)
	go func() {
		done <- p.ServeStream(context.Background(), proxy, allowExample, func(ex Exchange) {
			mu.Lock()
			exs = append(exs, ex)
			mu.Unlock()
		})
		proxy.Close()
	}()
	co := &dns.Conn{Conn: agent}
	for _, c := range []struct {
		name  string
		rcode int
	}{{"a.example.com.", dns.RcodeSuccess}, {"b.exfil.test.", dns.RcodeRefused}} {
		if err := co.WriteMsg(new(dns.Msg).SetQuestion(c.name, dns.TypeA)); err != nil {
			t.Fatal(err)
		}
		resp, err := co.ReadMsg()
		if err != nil || resp.Rcode != c.rcode {
			t.Fatalf("%s over TCP: %v, %v", c.name, resp, err)
		}
	}
	agent.Close()
	if err := <-done; err != nil {
		t.Errorf("ServeStream: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(exs) != 2 || !exs[0].Allowed || exs[1].Allowed || exs[1].Reason != "name-not-allowed" {
		t.Errorf("exchanges %+v", exs)
	}
	if got := r.questions(); len(got) != 1 {
		t.Errorf("the resolver saw %v", got)
	}
}

// FuzzAnswer: no message, however broken, makes Answer panic or ask a
// resolver for a question the policy refused, and every refusal fits
// a plain 512-byte UDP answer.
func FuzzAnswer(f *testing.F) {
	for _, m := range []*dns.Msg{
		new(dns.Msg).SetQuestion("a.example.com.", dns.TypeA),
		new(dns.Msg).SetUpdate("example.com."),
		new(dns.Msg).SetAxfr("example.com."),
	} {
		b, _ := m.Pack()
		f.Add(b)
	}
	p := &Proxy{}
	f.Fuzz(func(t *testing.T, b []byte) {
		out, ex := p.Answer(context.Background(), b, true, func(Question) Verdict { return Verdict{Reason: "no"} })
		if ex.Allowed || ex.Resolver.IsValid() {
			t.Fatalf("refused question forwarded: %+v", ex)
		}
		if out != nil && len(out) > 512 {
			t.Fatalf("refusal of %d bytes: it carries the one question at most", len(out))
		}
	})
}
