package datapath

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/bpf"
)

// probe loads verdict_probe with fresh, unpinned maps and returns a
// Datapath around those maps (to fill them with the real setters) and the
// program. The cgroup program types do not support BPF_PROG_TEST_RUN, so
// the rule and resolver logic they share is run through this program.
func probe(t *testing.T) (*Datapath, *ebpf.Program) {
	t.Helper()
	testenv.Privileged(t)
	if err := CheckKernel(); err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	spec, err := bpf.LoadInterlock()
	if err != nil {
		t.Fatal(err)
	}
	spec.Programs = map[string]*ebpf.ProgramSpec{bpf.InterlockProgVerdictProbe: spec.Programs[bpf.InterlockProgVerdictProbe]}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load verdict_probe: %v", verbose(err))
	}
	t.Cleanup(coll.Close)
	d := &Datapath{}
	if err := coll.Assign(&d.maps); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.maps.Close() })
	return d, coll.Programs[bpf.InterlockProgVerdictProbe]
}

func runProbe(t *testing.T, prog *ebpf.Program, udp bool, identity uint32, dst string) int32 {
	t.Helper()
	ap := netip.MustParseAddrPort(dst)
	q := bpf.InterlockVerdictQuery{Port: ap.Port(), Identity: identity, Result: -100}
	q.Dst.W = words(ap.Addr())
	if udp {
		q.Udp = 1
	}
	var out bpf.InterlockVerdictQuery
	if _, err := prog.Run(&ebpf.RunOptions{Context: q, ContextOut: &out}); err != nil {
		t.Fatalf("run verdict_probe: %v", err)
	}
	return out.Result
}

func TestTCPVerdicts(t *testing.T) {
	d, prog := probe(t)
	pfx := netip.MustParsePrefix
	first := []Rule{
		{Prefix: pfx("10.0.0.0/8"), PortMin: 5432, PortMax: 5432, Verdict: Deny},
		{Prefix: pfx("10.1.0.0/16"), Verdict: Pass},
		{Prefix: pfx("::1/128"), PortMin: 80, PortMax: 90, Verdict: Pass},
		{Prefix: pfx("2001:db8::/32"), Verdict: Deny},
		{Prefix: pfx("0.0.0.0/0"), PortMin: 22, PortMax: 22, Verdict: Deny},
	}
	if err := d.SetRules(1, first); err != nil {
		t.Fatal(err)
	}
	// Identity 3: the last of MaxRules rules is reachable.
	var many []Rule
	for i := 0; i < MaxRules-1; i++ {
		many = append(many, Rule{Prefix: pfx("192.0.2.1/32"), Verdict: Deny})
	}
	many = append(many, Rule{Prefix: pfx("198.51.100.0/24"), Verdict: Pass})
	if err := d.SetRules(3, many); err != nil {
		t.Fatal(err)
	}
	// Identity 4: the shape policy.Intercept derives, redirects for what
	// some rule could allow, then deny for the rest.
	refuse := []Rule{
		{Prefix: pfx("10.0.0.5/32"), PortMin: 5432, PortMax: 5432, Verdict: Redirect},
		{Prefix: pfx("2001:db8::/64"), PortMin: 443, PortMax: 443, Verdict: Redirect},
		{Prefix: pfx("0.0.0.0/0"), PortMin: 1, PortMax: 65535, Verdict: Deny},
		{Prefix: pfx("::/0"), PortMin: 1, PortMax: 65535, Verdict: Deny},
	}
	if err := d.SetRules(4, refuse); err != nil {
		t.Fatal(err)
	}
	sets := map[uint32][]Rule{1: first, 3: many, 4: refuse}
	const (
		redirect = int32(bpf.InterlockVerdictVERDICT_REDIRECT)
		deny     = int32(bpf.InterlockVerdictVERDICT_DENY)
		pass     = int32(bpf.InterlockVerdictVERDICT_PASS)
	)
	for _, c := range []struct {
		identity uint32
		dst      string
		want     int32
	}{
		{1, "10.2.3.4:5432", deny},
		{1, "10.1.2.3:5432", deny}, // first match wins
		{1, "10.1.2.3:80", pass},
		{1, "11.0.0.1:5432", redirect},
		{1, "[::1]:80", pass},
		{1, "[::1]:90", pass},
		{1, "[::1]:79", redirect},
		{1, "[::1]:91", redirect},
		{1, "[2001:db8::5]:1", deny},
		{1, "[2001:db9::5]:1", redirect},
		{1, "203.0.113.9:22", deny},
		{1, "[2001:db9::5]:22", redirect}, // an IPv4 prefix never matches IPv6
		{2, "10.2.3.4:5432", redirect},    // no rules: redirect everything
		{3, "198.51.100.7:443", pass},
		{3, "192.0.2.1:443", deny},
		{4, "10.0.0.5:5432", redirect},
		{4, "[::ffff:10.0.0.5]:5432", redirect},
		{4, "10.0.0.5:5433", deny},
		{4, "10.0.0.6:5432", deny},
		{4, "[2001:db8::1]:443", redirect},
		{4, "[2001:db8:1::1]:443", deny},
		{4, "203.0.113.9:80", deny},
	} {
		got := runProbe(t, prog, false, c.identity, c.dst)
		if got != c.want {
			t.Errorf("tcp identity %d to %s: verdict %d, want %d", c.identity, c.dst, got, c.want)
		}
		// Match, which deny events are explained with, agrees.
		want := redirect
		if i := Match(sets[c.identity], netip.MustParseAddrPort(c.dst)); i >= 0 {
			want = map[Verdict]int32{Redirect: redirect, Deny: deny, Pass: pass}[sets[c.identity][i].Verdict]
		}
		if got != want {
			t.Errorf("tcp identity %d to %s: the kernel's verdict %d, Match's %d", c.identity, c.dst, got, want)
		}
	}
}

func TestUDPVerdicts(t *testing.T) {
	d, prog := probe(t)
	err := d.writeConfig(Config{Resolvers: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53")}})
	if err != nil {
		t.Fatal(err)
	}
	err = d.SetUDPAllow(1, []Rule{
		{Prefix: netip.MustParsePrefix("192.0.2.7/32"), PortMin: 123, PortMax: 123, Verdict: Deny},
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), PortMin: 123, PortMax: 123, Verdict: Pass},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		identity uint32
		dst      string
		want     int32
	}{
		// A resolver is no direct destination any more: DNS goes to
		// interlockd (TestDNSDestinations).
		{1, "127.0.0.53:53", 0},
		{2, "127.0.0.53:53", 0},
		{1, "192.0.2.8:123", 1},
		{1, "192.0.2.7:123", 0},
		{1, "192.0.2.8:124", 0},
		{2, "192.0.2.8:123", 0},
	} {
		if got := runProbe(t, prog, true, c.identity, c.dst); got != c.want {
			t.Errorf("udp identity %d to %s: allowed %d, want %d", c.identity, c.dst, got, c.want)
		}
	}
}

// TestDNSDestinations: port 53 of any address, and the configured
// resolvers' address and port, are DNS the kernel steers to interlockd;
// nothing else is.
func TestDNSDestinations(t *testing.T) {
	d, prog := probe(t)
	err := d.writeConfig(Config{Resolvers: []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:5353"),
		netip.MustParseAddrPort("[2001:db8::53]:5300"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dst  string
		want int32
	}{
		{"127.0.0.53:53", 1},
		{"192.0.2.1:53", 1},
		{"[2001:db8::1]:53", 1},
		{"[::ffff:192.0.2.1]:53", 1},
		{"127.0.0.1:5353", 1},
		{"[::ffff:127.0.0.1]:5353", 1},
		{"127.0.0.2:5353", 0},
		{"127.0.0.1:5354", 0},
		{"[2001:db8::53]:5300", 1},
		{"[2001:db8::54]:5300", 0},
		{"192.0.2.1:54", 0},
	} {
		ap := netip.MustParseAddrPort(c.dst)
		q := bpf.InterlockVerdictQuery{Port: ap.Port(), Udp: 2, Result: -100}
		q.Dst.W = words(ap.Addr())
		var out bpf.InterlockVerdictQuery
		if _, err := prog.Run(&ebpf.RunOptions{Context: q, ContextOut: &out}); err != nil {
			t.Fatalf("run verdict_probe: %v", err)
		}
		if out.Result != c.want {
			t.Errorf("%s: is DNS %d, want %d", c.dst, out.Result, c.want)
		}
	}
}
