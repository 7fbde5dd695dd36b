package main

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

const httpReplayPolicy = `
identities:
  - name: ci
targets:
  - {name: api, protocol: http, hosts: [api.example.com], port: 80}
rules:
  - {name: no-admin, identity: ci, target: api, http: {paths: [/admin/]}, action: deny}
  - {name: api-read, identity: ci, target: api, http: {methods: [GET]}, action: allow}
`

// TestReplayCaptureHTTP: plain HTTP/1.1 requests of a capture are decided
// one by one, whatever their bodies, and a TLS stream is reported, not
// decoded.
func TestReplayCaptureHTTP(t *testing.T) {
	a := &synthConn{client: netip.MustParseAddrPort("10.0.0.1:40001"), server: netip.MustParseAddrPort("10.0.0.9:80"), clientSeq: 1000, serverSeq: 5000}
	b := &synthConn{client: netip.MustParseAddrPort("10.0.0.1:40002"), server: netip.MustParseAddrPort("10.0.0.9:443"), clientSeq: 2000, serverSeq: 7000}
	ok := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	ms := time.Millisecond
	pkts := []synthPacket{
		a.packet(t, 0*ms, true, true, false, nil),
		a.packet(t, 1*ms, false, true, true, nil),
		a.packet(t, 2*ms, true, false, true, nil),
		a.packet(t, 10*ms, true, false, true, []byte("GET /repos/acme?page=2 HTTP/1.1\r\nHost: api.example.com\r\n\r\n")),
		a.packet(t, 11*ms, false, false, true, ok),
		a.packet(t, 20*ms, true, false, true, []byte("POST /repos/acme HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\n")),
		a.packet(t, 21*ms, false, false, true, ok),
		a.packet(t, 30*ms, true, false, true, []byte("GET /admin/users HTTP/1.1\r\nHost: api.example.com\r\n\r\n")),
		a.packet(t, 31*ms, false, false, true, ok),
		// Decoded, as interlockd decides it: /admin/users.
		a.packet(t, 32*ms, true, false, true, []byte("GET /%61dmin/users HTTP/1.1\r\nHost: api.example.com\r\n\r\n")),
		a.packet(t, 33*ms, false, false, true, ok),
		// Dot segments: interlockd answers 400 before any rule.
		a.packet(t, 34*ms, true, false, true, []byte("GET /repos/../admin/users HTTP/1.1\r\nHost: api.example.com\r\n\r\n")),
		a.packet(t, 35*ms, false, false, true, ok),
		b.packet(t, 40*ms, true, false, true, []byte{0x16, 3, 1, 0, 4, 1, 0, 0, 0}),
	}
	path := writePcapng(t, "http.pcapng", time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC), pkts)
	pol := writePolicy(t, httpReplayPolicy)
	code, stdout, errOut := runReplay(t, nil, "--policy", pol, "--pcap", path, "--identity", "ci", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	reqs, streams := jsonLines(t, stdout)
	var got []string
	for _, r := range reqs {
		got = append(got, r.HTTP+" ["+r.Target+"] "+r.Verdict+" by "+r.Rule)
	}
	want := []string{
		"GET /repos/acme?page=2 [api] allow by api-read",
		"POST /repos/acme [api] deny by default-deny",
		"GET /admin/users [api] deny by no-admin",
		"GET /admin/users [api] deny by no-admin",
		"GET /repos/../admin/users [api] refused (400) by interlockd",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	status := map[string]string{}
	for _, s := range streams {
		status[s.Stream] = s.Status + " " + s.Protocol
	}
	for stream, want := range map[string]string{
		"10.0.0.1:40001 -> 10.0.0.9:80":  "decoded http",
		"10.0.0.1:40002 -> 10.0.0.9:443": "unsupported tls",
	} {
		if status[stream] != want {
			t.Errorf("stream %s: %q, want %q (all: %v)", stream, status[stream], want, status)
		}
	}
	code, stdout, _ = runReplay(t, nil, "--policy", pol, "--pcap", path, "--identity", "ci")
	if code != 0 || !strings.Contains(stdout, "10.0.0.1:40001 -> 10.0.0.9:80 [api] deny by no-admin: GET /admin/users\n") {
		t.Errorf("text output: exit %d\n%s", code, stdout)
	}
}
