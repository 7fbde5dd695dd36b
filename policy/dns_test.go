package policy

import (
	"strings"
	"testing"
)

const dnsPolicyText = `
identities:
  - name: ci
  - name: fetcher
    dns:
      allow: [api.github.com, "*.s3.amazonaws.com"]
      types: [txt]
      max_name_length: 60
      refuse_encoded_labels: true
  - name: idle
targets:
  - {name: db, protocol: postgres, addresses: [db.prod.internal, 10.0.0.9], port: 5432}
  - {name: web, protocol: ssh, hosts: [web-1.internal], addresses: [10.0.0.5], port: 22, known_hosts: /k}
  - {name: other, protocol: tcp, addresses: [other.internal], port: 80}
rules:
  - {name: ci-db, identity: ci, target: [db, web], action: allow}
  - {name: nobody-other, identity: ci, target: other, action: deny}
`

func TestDecideDNS(t *testing.T) {
	p := mustParse(t, dnsPolicyText)
	ci, fetcher, idle, stranger := &Subject{Tag: "ci"}, &Subject{Tag: "fetcher"}, &Subject{Tag: "idle"}, &Subject{Tag: "stranger"}
	hexLabel := "4a6f686e20536d6974682c2031323320" // xxd -p of 16 bytes
	for _, c := range []struct {
		s           *Subject
		name, qtype string
		allow       bool
		reason      string
	}{
		// By default: the host names of the targets ci's allowing rules reach.
		{ci, "db.prod.internal", "A", true, ""},
		{ci, "DB.Prod.Internal.", "AAAA", true, ""},
		{ci, "web-1.internal", "A", true, ""},
		{ci, "other.internal", "A", false, DNSRefuseName}, // only a deny rule reaches it
		{ci, "example.com", "A", false, DNSRefuseName},
		{ci, "db.prod.internal", "TXT", false, DNSRefuseType},
		{ci, "db.prod.internal", "HTTPS", true, ""},
		{fetcher, "api.github.com", "A", true, ""},
		{fetcher, "api.github.com", "TXT", true, ""},
		{fetcher, "bucket.s3.amazonaws.com", "AAAA", true, ""},
		{fetcher, "a.b.s3.amazonaws.com", "A", true, ""},
		{fetcher, "s3.amazonaws.com", "A", false, DNSRefuseName},
		{fetcher, "db.prod.internal", "A", false, DNSRefuseName}, // an explicit list replaces the default
		{fetcher, "api.github.com", "MX", false, DNSRefuseType},
		{fetcher, strings.Repeat("a", 45) + ".s3.amazonaws.com", "A", false, DNSRefuseLength},
		{fetcher, hexLabel + ".s3.amazonaws.com", "A", false, DNSRefuseEncoded},
		{fetcher, "x7k2q9wzp4m8r1t6y3v5n0bj.s3.amazonaws.com", "A", false, DNSRefuseEncoded},
		{fetcher, "my-application-bucket.s3.amazonaws.com", "A", true, ""},
		{idle, "db.prod.internal", "A", false, DNSRefuseName},
		{stranger, "db.prod.internal", "A", false, DNSRefuseUnknownIdentity},
	} {
		d := p.DecideDNS(c.s, c.name, c.qtype)
		if d.Allow != c.allow || d.Reason != c.reason {
			t.Errorf("%s asks %s %s: %+v, want allow %v reason %q", c.s.Tag, c.name, c.qtype, d, c.allow, c.reason)
		}
	}
	if got := p.DNSNames("ci"); strings.Join(got, ",") != "db.prod.internal,web-1.internal" {
		t.Errorf("ci's default names: %v", got)
	}
}

func TestDNSLoadErrors(t *testing.T) {
	for _, c := range []struct{ src, err string }{
		{"identities:\n  - name: a\n    dns:\n      allow: [\"bad name!\"]\n", `test.yaml:4:14: identity "a": dns allow "bad name!" is not a host name`},
		{"identities:\n  - name: a\n    dns:\n      allow: [\"*\"]\n", `identity "a": dns allow "*" is not`},
		{"identities:\n  - name: a\n    dns:\n      types: [\"T-X\"]\n", `test.yaml:4:14: identity "a": dns type "T-X"`},
		{"identities:\n  - name: a\n    dns:\n      max_name_length: 300\n", `test.yaml:4:24: identity "a": dns max_name_length 300: use 1 to 253`},
		{"identities:\n  - name: a\n    dns:\n      alow: [x.example]\n", `test.yaml:4:7: unknown key "alow"; did you mean "allow"?`},
		{"identities:\n  - name: a\n    udp_allow: [{to: 10.0.0.53, ports: \"53\"}]\n", `test.yaml:3:40: identity "a": port 53 is DNS, which always goes through interlockd`},
		{"identities:\n  - name: a\n    intercept: [{to: 10.0.0.53, ports: 53, action: pass}]\n", `identity "a": port 53 is DNS`},
	} {
		_, err := compile("test.yaml", []byte(c.src), protocols)
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%q: err = %v, want %q", c.src, err, c.err)
		}
	}
}

// TestEncodedLabelRule measures the encoded-label rule on host names of
// well-known services (labels of real names must pass) and on look-ups
// that carry data (hex, base32, base64 chunks must not).
func TestEncodedLabelRule(t *testing.T) {
	real := []string{
		"api.github.com", "objects.githubusercontent.com", "registry-1.docker.io",
		"production.cloudflare.docker.com", "storage.googleapis.com", "pypi.org",
		"files.pythonhosted.org", "registry.npmjs.org", "proxy.golang.org",
		"sum.golang.org", "dl-cdn.alpinelinux.org", "deb.debian.org",
		"security.ubuntu.com", "my-application-bucket.s3.amazonaws.com",
		"ec2-54-210-167-204.compute-1.amazonaws.com", "login.microsoftonline.com",
		"management.azure.com", "oauth2.googleapis.com", "sts.us-east-1.amazonaws.com",
		"d1uauaxba7bl26.cloudfront.net", "prod-eu-west-1-starport-layer-bucket.s3.eu-west-1.amazonaws.com",
		"thisisaverylongsubdomainname.example.com", "internationalization-service.example.com",
		"s3-website-us-east-1.amazonaws.com", "e12345.dsca.akamaiedge.net",
	}
	for _, n := range real {
		if hasEncodedLabel(n) {
			t.Errorf("real host name %s is taken for encoded data", n)
		}
	}
	data := []string{
		"4a6f686e20536d6974682c2031323320.exfil.example",             // xxd -p, 16 bytes
		"7365637265742d746f6b656e2d3132333435363738393031.x.example", // 24 bytes
		"x7k2q9wzp4m8r1t6y3v5n0bj.exfil.example",                     // random
		"nbswy3dpeb3w64tmmqqq5dfpa.exfil.example",                    // base32
		"SGVsbG8gd29ybGQsIHRoaXMgaXM.exfil.example",                  // base64
	}
	for _, n := range data {
		if !hasEncodedLabel(n) {
			t.Errorf("data-carrying name %s passes", n)
		}
	}
}
