package daemon_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/interlock-dev/interlock/agent/ca"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// httpsBenchLoads are the loads BenchmarkHTTPS puts on each path: wrk
// (HTTP/1.1) and h2load (HTTP/2, 10 streams per connection) at 1 and 16
// connections, and a new connection, TLS handshake and first byte for
// every request: HTTP/1.1 from wrk, HTTP/2 from the test binary
// (h2Connects; neither wrk nor h2load opens a connection per request
// over HTTP/2). Each runs for loadFor.
var httpsBenchLoads = []struct {
	name string
	argv func(url string) []string
}{
	{"wrk-c1", func(u string) []string { return []string{"wrk", "-t1", "-c1", "-d" + loadFor.String(), u} }},
	{"wrk-c16", func(u string) []string { return []string{"wrk", "-t2", "-c16", "-d" + loadFor.String(), u} }},
	{"h2load-c1", func(u string) []string {
		return []string{"h2load", "-t1", "-c1", "-m10", "-D" + strconv.Itoa(int(loadFor.Seconds())), u}
	}},
	{"h2load-c16", func(u string) []string {
		return []string{"h2load", "-t2", "-c16", "-m10", "-D" + strconv.Itoa(int(loadFor.Seconds())), u}
	}},
	{"connect", func(u string) []string {
		return []string{"wrk", "-t1", "-c1", "-d" + loadFor.String(), "-H", "Connection: close", u}
	}},
	{"h2-connect", func(u string) []string { return []string{"env", clientEnv + "=h2connect", testBinary(), u} }},
}

// loadFor is how long each load of BenchmarkHTTPS runs: a proxy's CPU per
// request is its CPU over the load's requests, its rate times loadFor.
const loadFor = 2 * time.Second

// testBinary is this test binary's path, which runs client modes.
func testBinary() string {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return exe
}

// h2Connects opens a new HTTP/2 connection for every request to rawURL,
// one at a time for loadFor (TLS resumed, as wrk resumes it), and
// returns how many it completed a second and their median TLS handshake,
// from the TCP connect's end: the phase where a proxy that dials its
// upstream only once it has read the ClientHello waits longest. Like wrk
// and h2load it does not verify the server: it is a load, not a client
// under test.
func h2Connects(rawURL string) (float64, time.Duration, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, 0, err
	}
	// X25519 alone, as wrk and h2load offer (OpenSSL 3.0): Go's default
	// adds ML-KEM, which interlockd accepts and nginx 1.22 does not have,
	// so that the handshakes would differ by path.
	cfg := &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"h2"}, InsecureSkipVerify: true,
		ClientSessionCache: tls.NewLRUClientSessionCache(1), CurvePreferences: []tls.CurveID{tls.X25519}}
	tr := &http2.Transport{}
	var handshakes []time.Duration
	start := time.Now()
	for time.Since(start) < loadFor {
		hs, err := h2Connect(tr, cfg, u)
		if err != nil {
			return 0, 0, err
		}
		handshakes = append(handshakes, hs)
	}
	slices.Sort(handshakes)
	return float64(len(handshakes)) / time.Since(start).Seconds(), handshakes[len(handshakes)/2], nil
}

// h2Connect makes one request over a new HTTP/2 connection and returns
// how long its TLS handshake took.
func h2Connect(tr *http2.Transport, cfg *tls.Config, u *url.URL) (time.Duration, error) {
	nc, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		return 0, err
	}
	tc := tls.Client(nc, cfg)
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	began := time.Now()
	if err := tc.Handshake(); err != nil {
		return 0, err
	}
	handshake := time.Since(began)
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		return 0, fmt.Errorf("%s: ALPN %q, not h2", u.Host, p)
	}
	cc, err := tr.NewClientConn(tc)
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	resp, err := cc.RoundTrip(&nethttp.Request{Method: "GET", URL: u, Host: u.Host, Header: nethttp.Header{}})
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != nethttp.StatusOK {
		err = fmt.Errorf("%s: %s", u, resp.Status)
	}
	return handshake, err
}

// rateLine finds the requests per second in wrk's and h2load's reports;
// handshakeLine the median TLS handshake in h2Connects' report.
var (
	rateLine      = regexp.MustCompile(`(?:Requests/sec:\s+|finished in [0-9.]+m?s, |"rate":)([0-9.]+)`)
	handshakeLine = regexp.MustCompile(`"handshake_us":([0-9.]+)`)
)

// BenchmarkHTTPS compares, in one run, HTTPS to nginx serving a small
// body: direct; through interlockd intercepting (TLS terminated with a
// leaf of Interlock's CA, each request decided and recorded, TLS again
// upstream); through interlockd passing TLS through (SNI decided, bytes
// relayed); through nginx as a TLS-terminating reverse proxy (keep-alive
// upstream); through HAProxy in TCP mode. Each load is reported as
// requests per second direct and as each path's ratio to direct (connect:
// µs per new connection, TLS handshake and first byte, and its ratio),
// with each proxy's CPU per request, and the user time of it (a proxy's
// process; on a machine of few cores, where the clients and servers share
// the proxy's, it is what a new connection costs it that limits its rate;
// its system time is mostly the kernel's TCP, which every proxy pays);
// medians of the iterations.
//
//	sudo go test ./agent/daemon -run '^$' -bench HTTPS -benchtime 3x
func BenchmarkHTTPS(b *testing.B) {
	testenv.Privileged(b)
	for _, bin := range []string{"nginx", "haproxy", "wrk", "h2load", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			testenv.Unavailable(b, "no %s (make deps): %v", bin, err)
		}
	}
	dir := b.TempDir()
	public, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "public-ca"), PublicCert: filepath.Join(dir, "upstream-ca.crt")})
	if err != nil {
		b.Fatal(err)
	}
	leaf := &httpFixture{dir: dir}
	crt, key := leaf.leafFiles(b, public, "bench.test")
	direct, passPort, proxyPort := testenv.FreePort(b), testenv.FreePort(b), testenv.FreePort(b)
	// The upstream and the reverse proxy are two nginx processes, one
	// worker each, so that neither takes the other's CPU. Both speak TLS
	// 1.3, as interlockd does to agents: Debian 12's nginx (1.22) leaves it
	// off unless told (it is on by default since 1.23.4), and over TLS 1.2
	// wrk resumed its session at every new connection, a handshake without
	// a key exchange, which TLS 1.3 makes at every handshake.
	upDir, proxyDir := filepath.Join(dir, "upstream"), filepath.Join(dir, "proxy")
	for _, d := range []string{upDir, proxyDir} {
		os.Mkdir(d, 0o755)
	}
	startNginx(b, upDir, fmt.Sprintf(`  server {
    listen 127.0.0.1:%d ssl http2;
    listen 127.0.0.1:%d ssl http2;
    server_name bench.test;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_protocols TLSv1.2 TLSv1.3;
    access_log off;
    keepalive_requests 10000000;
    location / { return 200 "hello from nginx\n"; }
  }
`, direct, passPort, crt, key), direct)
	startNginx(b, proxyDir, fmt.Sprintf(`  upstream up { server 127.0.0.1:%[1]d; keepalive 32; }
  server {
    listen 127.0.0.1:%[2]d ssl http2;
    server_name bench.test;
    ssl_certificate %[3]s;
    ssl_certificate_key %[4]s;
    ssl_protocols TLSv1.2 TLSv1.3;
    access_log off;
    keepalive_requests 10000000;
    location / {
      proxy_pass https://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_server_name on;
      proxy_ssl_name bench.test;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate %[5]s;
      proxy_ssl_session_reuse on;
    }
  }
`, direct, proxyPort, crt, key, public.PublicCertPath()), proxyPort)
	haPort, haPID := testenv.HAProxyTCP(b, fmt.Sprintf("127.0.0.1:%d", direct))
	proxyPID, err := os.ReadFile(filepath.Join(proxyDir, "nginx.pid"))
	if err != nil {
		b.Fatal(err)
	}
	nginxPID, err := strconv.Atoi(strings.TrimSpace(string(proxyPID)))
	if err != nil {
		b.Fatalf("nginx.pid: %v", err)
	}

	pol, conf := filepath.Join(dir, "policy.yaml"), filepath.Join(dir, "interlockd.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
identities: [{name: ci-bot}]
targets:
  - {name: intercepted, protocol: http, hosts: [bench.test], port: %d, tls: intercept, upstream_ca: %s}
  - {name: passed, protocol: http, hosts: [bench.test], port: %d, tls: passthrough}
rules:
  - {name: bench-get, identity: ci-bot, target: intercepted, http: {methods: [GET], paths: [/]}, action: allow}
  - {name: bench-pass, identity: ci-bot, target: passed, action: allow}
`, direct, public.PublicCertPath(), passPort)), 0o644)
	os.WriteFile(conf, []byte("log_level: warn\n"), 0o600)
	d := daemontest.Start(b, daemontest.Options{Policy: pol, Config: conf})
	// The clients resolve bench.test from a hosts file of their own mount
	// namespace: no DNS on the measured path.
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost bench.test\n"), 0o644)
	client := []string{"unshare", "-m", "--", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hosts}

	// pid is the path's proxy (nginx, HAProxy and interlockd each run as
	// one process), whose CPU a request costs.
	paths := []struct {
		name   string
		port   int
		tagged bool
		pid    int
	}{{"direct", direct, false, 0}, {"intercept", direct, true, d.PID()}, {"passthrough", passPort, true, d.PID()},
		{"nginx", proxyPort, false, nginxPID}, {"haproxy", haPort, false, haPID}}
	rates := map[string][]float64{}      // load/path -> requests per second
	handshakes := map[string][]float64{} // load/path -> median TLS handshake, µs
	cpu := map[string][]float64{}        // load/path -> the proxy's CPU per request, µs
	user := map[string][]float64{}       // load/path -> the user time of it
	for i := 0; i < b.N; i++ {
		for _, load := range httpsBenchLoads {
			for _, p := range paths {
				key := load.name + "/" + p.name
				argv := append(append([]string{}, client...), load.argv(fmt.Sprintf("https://bench.test:%d/", p.port))...)
				ctx, cancel := context.WithTimeout(b.Context(), time.Minute)
				cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
				if p.tagged {
					cmd = d.Command(ctx, append([]string{"exec", "--identity", "ci-bot", "--"}, argv...)...)
				}
				cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
				user0, sys0 := testenv.ProcessTimes(p.pid)
				out, err := cmd.CombinedOutput()
				user1, sys1 := testenv.ProcessTimes(p.pid)
				cancel()
				m := rateLine.FindSubmatch(out)
				if err != nil || m == nil {
					b.Fatalf("%s %s: %v\n%s", load.name, p.name, err, out)
				}
				rps, _ := strconv.ParseFloat(string(m[1]), 64)
				if rps == 0 {
					b.Fatalf("%s %s: no request completed\n%s", load.name, p.name, out)
				}
				rates[key] = append(rates[key], rps)
				if p.pid != 0 {
					n := rps * loadFor.Seconds()
					cpu[key] = append(cpu[key], float64((user1-user0+sys1-sys0).Microseconds())/n)
					user[key] = append(user[key], float64((user1-user0).Microseconds())/n)
				}
				if m := handshakeLine.FindSubmatch(out); m != nil {
					us, _ := strconv.ParseFloat(string(m[1]), 64)
					handshakes[key] = append(handshakes[key], us)
				}
			}
		}
	}
	mid := func(v []float64) float64 { v = slices.Clone(v); slices.Sort(v); return v[len(v)/2] }
	for _, load := range httpsBenchLoads {
		base := mid(rates[load.name+"/direct"])
		if strings.HasSuffix(load.name, "connect") {
			b.ReportMetric(1e6/base, load.name+"-direct-µs")
		} else {
			b.ReportMetric(base, load.name+"-direct-req/s")
		}
		for _, p := range paths[1:] {
			key, name := load.name+"/"+p.name, load.name+"-"+p.name
			b.ReportMetric(mid(rates[key])/base, name+"-ratio")
			b.ReportMetric(mid(cpu[key]), name+"-cpu-µs")
			b.ReportMetric(mid(user[key]), name+"-user-µs")
		}
		for _, p := range paths {
			if hs := handshakes[load.name+"/"+p.name]; len(hs) > 0 {
				b.ReportMetric(mid(hs), load.name+"-"+p.name+"-handshake-µs")
			}
		}
	}
}
