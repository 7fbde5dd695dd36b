package dns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// MaxAnswers bounds the answer records an Exchange keeps for the audit
// trail; the agent gets them all.
const MaxAnswers = 16

// DefaultTimeout bounds one question's wait for the resolvers, all of them
// tried in turn.
const DefaultTimeout = 5 * time.Second

// Question is one DNS question as the policy sees it.
type Question struct {
	// Name is the name asked, in lower case, without the final dot.
	Name string
	// Type is the query type's mnemonic: "A", "TXT", "TYPE65534".
	Type string
}

// Verdict is the decision on one question.
type Verdict struct {
	Allow bool
	// Reason says why a question is refused, or, on an allowed one (a
	// policy in audit mode), why it would have been.
	Reason string
}

// Decide decides one question.
type Decide func(Question) Verdict

// Exchange is what one query message became.
type Exchange struct {
	// Question is the question asked; empty when the message had none
	// that could be decided (Reason says why).
	Question Question
	// Allowed is true when the question was forwarded.
	Allowed bool
	// Reason says why the question was refused, or why the message was;
	// on an allowed question, the Verdict's Reason.
	Reason string
	// Resolver is the resolver that answered an allowed question.
	Resolver netip.AddrPort
	// Rcode is the response code the agent got ("NOERROR", "REFUSED").
	Rcode string
	// Answers are the answer records the agent got, in presentation form,
	// at most MaxAnswers.
	Answers []string
	// Addresses are the A and AAAA records of the answer the agent got,
	// all of them: what the question's name stands for, CNAMEs followed
	// by the resolver.
	Addresses []Address
	// Err is why no resolver answered an allowed question (the agent got
	// SERVFAIL).
	Err error
}

// Address is an address an answer gave, for as long as its TTL.
type Address struct {
	Addr netip.Addr
	TTL  time.Duration
}

// Proxy answers query messages. Safe for concurrent use.
type Proxy struct {
	// Resolvers are asked in turn until one answers.
	Resolvers []netip.AddrPort
	// Timeout bounds one question; 0 is DefaultTimeout.
	Timeout time.Duration
}

// Answer decides and answers one query message, carried over UDP (udp
// true: the answer is truncated to what the agent can receive) or TCP. The
// response is nil when query is too broken to answer at all.
func (p *Proxy) Answer(ctx context.Context, query []byte, udp bool, decide Decide) ([]byte, Exchange) {
	var ex Exchange
	req := new(dns.Msg)
	if err := req.Unpack(query); err != nil {
		ex.Reason = "malformed: " + err.Error()
		var hdr dns.Msg
		if len(query) < 12 || hdr.Unpack(query[:12]) != nil {
			return nil, ex
		}
		return p.reply(&ex, refusal(&hdr, dns.RcodeFormatError), udp, 0)
	}
	size := 512
	if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = int(opt.UDPSize())
	}
	switch {
	case req.Response:
		ex.Reason = "a response, not a query"
		return p.reply(&ex, refusal(req, dns.RcodeFormatError), udp, size)
	case req.Opcode != dns.OpcodeQuery:
		ex.Reason = "opcode " + dns.OpcodeToString[req.Opcode] + " is not QUERY"
		return p.reply(&ex, refusal(req, dns.RcodeRefused), udp, size)
	case len(req.Question) != 1:
		ex.Reason = fmt.Sprintf("%d questions, not one", len(req.Question))
		return p.reply(&ex, refusal(req, dns.RcodeFormatError), udp, size)
	}
	q := req.Question[0]
	ex.Question = Question{Name: strings.ToLower(strings.TrimSuffix(q.Name, ".")), Type: typeName(q.Qtype)}
	switch {
	case q.Qclass != dns.ClassINET:
		ex.Reason = "class " + dns.Class(q.Qclass).String() + " is not IN"
		return p.reply(&ex, refusal(req, dns.RcodeRefused), udp, size)
	case q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR || q.Qtype == dns.TypeANY:
		ex.Reason = "type " + ex.Question.Type + " is never forwarded"
		return p.reply(&ex, refusal(req, dns.RcodeRefused), udp, size)
	}
	v := decide(ex.Question)
	if !v.Allow {
		ex.Reason = v.Reason
		return p.reply(&ex, refusal(req, dns.RcodeRefused), udp, size)
	}
	ex.Allowed, ex.Reason = true, v.Reason
	resp, resolver, err := p.forward(ctx, req, udp)
	if err != nil {
		ex.Err = err
		return p.reply(&ex, refusal(req, dns.RcodeServerFailure), udp, size)
	}
	ex.Resolver = resolver
	resp.Id = req.Id
	return p.reply(&ex, resp, udp, size)
}

// refusal is an answer to req with rcode and no records.
func refusal(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.Id = req.Id
	m.Response = true
	m.Opcode = req.Opcode
	m.RecursionDesired = req.RecursionDesired
	m.RecursionAvailable = true
	m.Rcode = rcode
	if len(req.Question) == 1 {
		m.Question = req.Question
	}
	return m
}

// reply packs resp for the agent, truncated to size over UDP, and fills
// the exchange's outcome.
func (p *Proxy) reply(ex *Exchange, resp *dns.Msg, udp bool, size int) ([]byte, Exchange) {
	if udp && size > 0 {
		resp.Truncate(size)
	}
	ex.Rcode = dns.RcodeToString[resp.Rcode]
	for _, rr := range resp.Answer {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			ex.Addresses = append(ex.Addresses, Address{Addr: a.Unmap(), TTL: time.Duration(rr.Header().Ttl) * time.Second})
		}
		if len(ex.Answers) < MaxAnswers {
			ex.Answers = append(ex.Answers, strings.ReplaceAll(rr.String(), "\t", " "))
		}
	}
	b, err := resp.Pack()
	if err != nil {
		// An upstream answer we cannot pack again: tell the agent the
		// server failed rather than nothing.
		ex.Err = fmt.Errorf("pack answer: %w", err)
		fail := refusal(resp, dns.RcodeServerFailure)
		ex.Rcode, ex.Answers, ex.Addresses = dns.RcodeToString[fail.Rcode], nil, nil
		b, _ = fail.Pack()
	}
	return b, *ex
}

// forward asks the resolvers in turn a query made of req's question, its
// recursion-desired bit and its EDNS0 size and DO bit, and nothing else;
// over UDP first, and over TCP again when the answer was truncated and
// the agent asked over TCP.
func (p *Proxy) forward(ctx context.Context, req *dns.Msg, udp bool) (*dns.Msg, netip.AddrPort, error) {
	if len(p.Resolvers) == 0 {
		return nil, netip.AddrPort{}, errors.New("no resolvers configured")
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := new(dns.Msg)
	out.Id = dns.Id()
	out.RecursionDesired = req.RecursionDesired
	out.Question = []dns.Question{req.Question[0]}
	if opt := req.IsEdns0(); opt != nil {
		out.SetEdns0(opt.UDPSize(), opt.Do())
	}
	var errs []error
	for _, r := range p.Resolvers {
		c := &dns.Client{Net: "udp"}
		resp, _, err := c.ExchangeContext(ctx, out, r.String())
		if err == nil && resp.Truncated && !udp {
			c.Net = "tcp"
			resp, _, err = c.ExchangeContext(ctx, out, r.String())
		}
		if err == nil {
			return resp, r, nil
		}
		errs = append(errs, fmt.Errorf("ask %s: %w", r, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, errors.Join(errs...)
}

// typeName is a query type's mnemonic, TYPEn for types miekg/dns does not
// name.
func typeName(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", t)
}

// IdleTimeout is how long ServeStream waits for the next message.
const IdleTimeout = 10 * time.Second

// ServeStream answers the query messages of a DNS-over-TCP connection one
// after the other until the agent closes it, stays idle for IdleTimeout,
// or ctx ends; each message's exchange goes to record. It does not close
// conn.
func (p *Proxy) ServeStream(ctx context.Context, conn net.Conn, decide Decide, record func(Exchange)) error {
	co := &dns.Conn{Conn: conn}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, dns.MaxMsgSize)
	for {
		conn.SetReadDeadline(time.Now().Add(IdleTimeout))
		n, err := co.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.Is(err, net.ErrClosed) || errors.As(err, &ne) && ne.Timeout() || isEOF(err) {
				return nil
			}
			return fmt.Errorf("read dns message: %w", err)
		}
		resp, ex := p.Answer(ctx, buf[:n], false, decide)
		record(ex)
		if resp == nil {
			return fmt.Errorf("read dns message: %s", ex.Reason)
		}
		if _, err := co.Write(resp); err != nil {
			return fmt.Errorf("write dns answer: %w", err)
		}
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
