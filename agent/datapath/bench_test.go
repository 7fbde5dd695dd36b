package datapath

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// helperBench connects to addr n times, reading the first byte each time,
// and prints the total nanoseconds. The connection is reset on close so
// that ports do not pile up in TIME_WAIT.
func helperBench(arg string) int {
	addr, count, _ := strings.Cut(arg, ",")
	n, err := strconv.Atoi(count)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	buf := make([]byte, 1)
	start := time.Now()
	for i := 0; i < n; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			fmt.Println("error", err)
			return 1
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	fmt.Println(time.Since(start).Nanoseconds())
	return 0
}

// relay is the trivial proxy of the benchmark: identify the caller, dial
// its original destination, copy both ways. Connections for answerSelf are
// answered by the proxy itself, to time the redirect without the upstream.
func relay(dp *Datapath, c net.Conn, answerSelf netip.AddrPort) {
	defer c.Close()
	o, err := dp.Lookup(c.RemoteAddr().(*net.TCPAddr).AddrPort(), c.LocalAddr().(*net.TCPAddr).AddrPort())
	if err != nil {
		return
	}
	if o.Dst == answerSelf {
		c.Write([]byte{'!'})
		io.Copy(io.Discard, c)
		return
	}
	up, err := net.Dial("tcp", o.Dst.String())
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}

// BenchmarkConnectFirstByte measures connect() plus the first byte from a
// loopback server: from an untagged cgroup (direct), and from a tagged one
// redirected to a proxy that looks the connection up and either answers
// itself (redirect: the cost of the data path alone) or dials the original
// destination and relays (relay: what an agent sees through a trivial
// proxy). It reports each per connection and the ratios to direct. Each op
// is one connection of each kind.
func BenchmarkConnectFirstByte(b *testing.B) {
	e := newEnv(b)
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer target.Close()
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			c.Write([]byte{'!'})
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	// A port nothing listens on: only the proxy can answer there.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	answerSelf := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()
	proxy := tcpListen(b, "tcp", "127.0.0.1:0")
	defer proxy.Close()
	e.cfg.Proxy4 = proxy.Addr().(*net.TCPAddr).AddrPort()
	e.listeners = append(e.listeners, proxy)
	dp := e.open()
	go func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			go relay(dp, c, answerSelf)
		}
	}()
	plain, _ := e.cgroup("plain")
	agent, agentID := e.cgroup("agent")
	if err := dp.Tag(agentID, 1); err != nil {
		b.Fatal(err)
	}

	measure := func(dir string, addr string, n int) time.Duration {
		cmd, done := helperCmd(b, dir, "bench", fmt.Sprintf("%s,%d", addr, n))
		defer done()
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("bench helper: %v\n%s", err, out)
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		if err != nil {
			b.Fatalf("bench helper: %s", out)
		}
		return time.Duration(ns)
	}
	b.ResetTimer()
	// Interleave the three kinds in rounds so that drift in the load of
	// the machine spreads over all of them.
	var direct, redirect, relayed time.Duration
	const rounds = 5
	for r := 0; r < rounds; r++ {
		n := b.N / rounds
		if r == rounds-1 {
			n = b.N - n*(rounds-1)
		}
		if n == 0 {
			continue
		}
		redirect += measure(agent, answerSelf.String(), n)
		direct += measure(plain, target.Addr().String(), n)
		relayed += measure(agent, target.Addr().String(), n)
	}
	b.StopTimer()
	perConn := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
	b.ReportMetric(perConn(direct), "direct-ns/conn")
	b.ReportMetric(perConn(redirect), "redirect-ns/conn")
	b.ReportMetric(perConn(relayed), "relay-ns/conn")
	b.ReportMetric(float64(redirect)/float64(direct), "redirect/direct")
	b.ReportMetric(float64(relayed)/float64(direct), "relay/direct")
}
