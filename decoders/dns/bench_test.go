package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkLookup is the latency a look-up gains through the proxy: the
// same A question asked of a loopback resolver directly and through a
// Proxy serving UDP on loopback (the daemon's loop: read, Answer, write),
// with p50 and p99 per look-up.
func BenchmarkLookup(b *testing.B) {
	r := newResolver(b)
	p := &Proxy{Resolvers: []netip.AddrPort{r.addr}}
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			q := slices.Clone(buf[:n])
			go func() {
				resp, _ := p.Answer(context.Background(), q, true, allowExample)
				pc.WriteToUDPAddrPort(resp, from)
			}()
		}
	}()
	for _, c := range []struct{ name, addr string }{{"direct", r.addr.String()}, {"proxy", pc.LocalAddr().String()}} {
		b.Run(c.name, func(b *testing.B) {
			client := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
			m := new(dns.Msg).SetQuestion("api.example.com.", dns.TypeA)
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				if _, _, err := client.Exchange(m, c.addr); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// BenchmarkDistinctNames is the memory 100 000 distinct names cost the
// proxy: it keeps no per-name state, so the heap after them is what it was
// before (bytes-retained), whatever the names.
func BenchmarkDistinctNames(b *testing.B) {
	r := newResolver(b)
	p := &Proxy{Resolvers: []netip.AddrPort{r.addr}}
	const names = 100000
	queries := make([][]byte, names)
	for i := range queries {
		queries[i], _ = new(dns.Msg).SetQuestion(fmt.Sprintf("n%d.example.com.", i), dns.TypeA).Pack()
	}
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for _, q := range queries {
			p.Answer(context.Background(), q, true, func(Question) Verdict { return Verdict{Reason: "refused"} })
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)), "bytes-retained")
	}
}
