package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/agent/session"
	dnsdec "github.com/interlock-dev/interlock/decoders/dns"
	"github.com/interlock-dev/interlock/decoders/protocol"
	"github.com/interlock-dev/interlock/policy"
)

// dnsInFlight bounds the UDP questions served at once; beyond it datagrams
// are dropped (the agent's resolver asks again), so a flood of names costs
// a bounded number of goroutines and buffers. One identity has at most
// dnsInFlightPerIdentity of them: an agent flooding names a slow resolver
// answers held them all, and every other agent's questions were dropped.
const (
	dnsInFlight            = 256
	dnsInFlightPerIdentity = dnsInFlight / 4
)

// dnsServer is interlockd's DNS proxy: the data path steers every tagged
// UDP DNS datagram to its sockets and every tagged TCP DNS connection to
// the proxy listeners, which hand them here (handler). One home for the
// decision and the record of a question: answer.
type dnsServer struct {
	d     *Daemon
	proxy *dnsdec.Proxy
	// resolvers are the addresses whose DNS, besides port 53, is steered.
	resolvers []netip.AddrPort
	conns     []*net.UDPConn
	slots     chan struct{}
	log       zerolog.Logger
}

// listenDNS binds the DNS proxy's UDP sockets at 127.0.0.1:port and
// [::1]:port, the addresses the data path sends tagged DNS to.
func (d *Daemon) listenDNS(port uint16, resolvers []netip.AddrPort) (*dnsServer, error) {
	s := &dnsServer{
		d: d, proxy: &dnsdec.Proxy{Resolvers: resolvers}, resolvers: resolvers,
		slots: make(chan struct{}, dnsInFlight), log: d.log.With().Str("component", "dns").Logger(),
	}
	for _, a := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
		if err != nil {
			s.close()
			return nil, fmt.Errorf("listen dns: %w", err)
		}
		s.conns = append(s.conns, c)
	}
	return s, nil
}

// arm makes the sockets the only ones the data path delivers the DNS
// proxy addresses' datagrams to.
func (s *dnsServer) arm(dp *datapath.Datapath) error {
	for _, c := range s.conns {
		if err := dp.ServeDNS(c); err != nil {
			return err
		}
	}
	return nil
}

// addrs returns the DNS proxy's IPv4 and IPv6 addresses.
func (s *dnsServer) addrs() (v4, v6 netip.AddrPort) {
	return s.conns[0].LocalAddr().(*net.UDPAddr).AddrPort(), s.conns[1].LocalAddr().(*net.UDPAddr).AddrPort()
}

func (s *dnsServer) close() {
	for _, c := range s.conns {
		c.Close()
	}
}

// serve reads datagrams on every socket until they are closed.
func (s *dnsServer) serve(ctx context.Context) {
	for _, c := range s.conns {
		go s.serveUDP(ctx, c, s.d.dp.LookupDNS)
	}
}

// serveUDP answers the datagrams of one socket until it is closed; lookup
// finds their senders' records in the socket's network namespace.
func (s *dnsServer) serveUDP(ctx context.Context, c *net.UDPConn, lookup func(peer, local netip.AddrPort) (datapath.Origin, error)) {
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error().Err(err).Msg("read dns datagram")
			}
			return
		}
		// The sender is known before a slot is taken, so that a slot is
		// taken from its identity's share.
		o, ok := s.sender(lookup, from, local)
		if !ok {
			continue
		}
		release, ok := s.take(o.Identity)
		if !ok {
			continue
		}
		msg := slices.Clone(buf[:n])
		go func() {
			defer release()
			defer func() {
				// A defect a question reaches drops that question, not
				// interlockd.
				if ie := protocol.Contained("dns over udp", recover()); ie != nil {
					proxy.LogDefect(&s.log, ie, "peer", from.String())
				}
			}()
			s.answerUDP(ctx, c, o, from, msg)
		}()
	}
}

// sender finds the kernel's record of a datagram's sender, or logs why the
// datagram is dropped. A defect in the look-up drops that datagram, not the
// socket's loop.
func (s *dnsServer) sender(lookup func(peer, local netip.AddrPort) (datapath.Origin, error), from, local netip.AddrPort) (o datapath.Origin, ok bool) {
	defer func() {
		if ie := protocol.Contained("dns over udp", recover()); ie != nil {
			proxy.LogDefect(&s.log, ie, "peer", from.String())
			ok = false
		}
	}()
	o, err := lookup(from, local)
	if err != nil {
		s.log.Warn().Err(err).Str("peer", from.String()).Msg("dropping unidentified dns datagram")
		return o, false
	}
	return o, true
}

// take holds a slot for a UDP question of identity id, or reports that
// none is free: dnsInFlight in all, dnsInFlightPerIdentity of one identity
// (the identity's share, kept with its other slots: session.HoldQuestion).
func (s *dnsServer) take(id uint32) (release func(), ok bool) {
	select {
	case s.slots <- struct{}{}:
	default:
		return nil, false
	}
	give, ok := s.d.sessions.HoldQuestion(s.d.ids.name(id), dnsInFlightPerIdentity)
	if !ok {
		<-s.slots
		return nil, false
	}
	return func() {
		give()
		<-s.slots
	}, true
}

// answerUDP answers one datagram of a steered socket, from the sender the
// kernel recorded in o. (A datagram the kernel did not steer has no record
// and gets no answer: nobody we can vouch for.)
func (s *dnsServer) answerUDP(ctx context.Context, c *net.UDPConn, o datapath.Origin, from netip.AddrPort, msg []byte) {
	id, err := session.IdentityOf(o, s.d.ids.name(o.Identity))
	if err != nil {
		s.log.Warn().Err(err).Str("peer", from.String()).Msg("dropping unidentified dns datagram")
		return
	}
	resp, ex := s.proxy.Answer(ctx, msg, true, s.decider(id))
	s.record(id, "udp", o.Dst, ex)
	if resp != nil {
		c.WriteToUDPAddrPort(resp, from)
	}
}

// handler returns next with tagged TCP DNS (to port 53, or to a resolver)
// taken out of it and served here.
func (s *dnsServer) handler(next proxy.Handler) proxy.Handler {
	return proxy.HandlerFunc(func(ctx context.Context, c *proxy.Conn) {
		if c.Dst.Port() != 53 && !slices.Contains(s.resolvers, c.Dst) {
			next.Handle(ctx, c)
			return
		}
		s.serveStream(ctx, c)
	})
}

// serveStream serves one tagged DNS over TCP connection. It is a function
// of its own so that every other connection's goroutine, which parks in
// next.Handle for as long as its session lasts, carries none of its locals.
func (s *dnsServer) serveStream(ctx context.Context, c *proxy.Conn) {
	defer c.Client.Close()
	defer func() {
		if ie := protocol.Contained("dns over tcp", recover()); ie != nil {
			proxy.LogDefect(&s.log, ie, "conn", c.ID)
		}
	}()
	release, over := s.d.sessions.HoldConnection(c.Identity.Name)
	if over != nil {
		c.Client.SetLinger(0)
		s.d.chain.Record(audit.LimitExceeded{Session: c.ID, Identity: c.Identity.Name, Limit: over.Limit, Error: over.Msg})
		return
	}
	defer release()
	err := s.proxy.ServeStream(ctx, c.Client, s.decider(c.Identity), func(ex dnsdec.Exchange) {
		s.record(c.Identity, "tcp", c.Dst, ex)
	})
	if err != nil {
		s.log.Warn().Err(err).Str("conn", c.ID).Msg("dns over tcp")
	}
}

// decider decides the questions of id under the policy in force at each
// one. In audit mode a refused question is forwarded all the same (record
// says it would have been refused).
func (s *dnsServer) decider(id proxy.Identity) dnsdec.Decide {
	return func(q dnsdec.Question) dnsdec.Verdict {
		pol := s.d.policy.Current()
		subj, err := session.SubjectOf(id, pol)
		if err != nil {
			return dnsdec.Verdict{Reason: "caller not identified: " + err.Error()}
		}
		d := pol.DecideDNS(&subj, q.Name, q.Type)
		if !d.Allow && pol.Mode(&subj, nil) == policy.Audit {
			return dnsdec.Verdict{Allow: true, Reason: d.Reason}
		}
		return dnsdec.Verdict{Allow: d.Allow, Reason: d.Reason}
	}
}

// record learns what an answer's addresses stand for and writes the
// question's audit event; it runs before the answer goes to the agent.
func (s *dnsServer) record(id proxy.Identity, transport string, dst netip.AddrPort, ex dnsdec.Exchange) {
	s.learn(id.Name, ex)
	e := audit.DNSQuestion{
		Identity: id.Name, PID: id.PID, UID: id.UID, Comm: id.Comm, Transport: transport, Dst: dst.String(),
		Name: ex.Question.Name, Type: ex.Question.Type, Action: "allow", Enforced: true,
		Reason: ex.Reason, Rcode: ex.Rcode, Answers: ex.Answers,
	}
	switch {
	case !ex.Allowed:
		e.Action = "deny"
	case ex.Reason != "":
		// Forwarded in audit mode although the policy refuses it.
		e.Action, e.Enforced = "deny", false
	}
	if ex.Resolver.IsValid() {
		e.Resolver = ex.Resolver.String()
	}
	if ex.Err != nil {
		e.Error = ex.Err.Error()
	}
	s.d.chain.Record(e)
	s.d.metrics.DNSQuestions.WithLabelValues(transport, dnsOutcome(ex)).Inc()
}

// dnsOutcome is how an exchange counts in interlock_dns_questions_total.
func dnsOutcome(ex dnsdec.Exchange) string {
	switch {
	case ex.Err != nil:
		return metrics.DNSFailed
	case ex.Allowed:
		return metrics.DNSForwarded
	case ex.Question.Name == "":
		return metrics.DNSMalformed
	}
	return metrics.DNSRefused
}

// learn tells the policy in force which addresses an allowed answer to the
// identity tagged tag gave its name, so a target named by that host
// matches them for that identity; when a target gained one, the kernel
// rules are pushed again first, so the agent's connect to it is
// redirected, not refused, from the first try.
func (s *dnsServer) learn(tag string, ex dnsdec.Exchange) {
	if !ex.Allowed || len(ex.Addresses) == 0 {
		return
	}
	now := time.Now()
	bs := make([]policy.Binding, 0, len(ex.Addresses))
	for _, a := range ex.Addresses {
		bs = append(bs, policy.Binding{Addr: a.Addr, Expires: now.Add(a.TTL)})
	}
	if !s.d.policy.Current().Learn(tag, ex.Question.Name, bs) {
		return
	}
	if _, err := s.d.rules.Refresh(s.d.policy.Current, s.d.ids.all()); err != nil {
		s.log.Error().Err(err).Str("name", ex.Question.Name).Msg("push kernel rules for learned addresses")
	}
}

// dnsResolvers are the resolvers interlockd forwards to: dns_resolvers, or
// /etc/resolv.conf's nameservers.
func dnsResolvers(configured []netip.AddrPort) []netip.AddrPort {
	if len(configured) > 0 {
		return configured
	}
	r := resolvers("/etc/resolv.conf")
	if len(r) > datapath.MaxResolvers {
		r = r[:datapath.MaxResolvers]
	}
	return r
}
