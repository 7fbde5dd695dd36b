package policy

import (
	"strings"
	"testing"
)

func TestHTTPCredentialInject(t *testing.T) {
	src := `
targets:
  - name: forge
    protocol: http
    hosts: [api.forge.test]
    port: 443
    tls: intercept
    credential:
      source: forge-token
      inject: {header: authorization, template: "Bearer {{.secret}}"}
  - name: s3
    protocol: http
    hosts: [s3.test]
    port: 443
    tls: intercept
    credential: {source: vault, kind: aws, role: s3-reader}
`
	p, err := load("test.yaml", src, fakeResolver{})
	if err != nil {
		t.Fatal(err)
	}
	in := p.Target("forge").Inject
	if in == nil || in.Header != "Authorization" {
		t.Fatalf("inject = %+v", in)
	}
	var b strings.Builder
	if err := in.Template.Execute(&b, map[string]string{"secret": "s3cr3t"}); err != nil || b.String() != "Bearer s3cr3t" {
		t.Fatalf("template: %q %v", b.String(), err)
	}
	if err := in.Template.Execute(&b, map[string]string{}); err == nil {
		t.Error("a missing field executed without error")
	}
	if p.Target("s3").Inject != nil {
		t.Error("aws target has an inject block")
	}
}

func TestHTTPCredentialErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], credential: {source: s, inject: {header: X, template: \"{{.secret}}\"}}}\n",
			`test.yaml:2:60: target "f": a credential is only added to requests interlockd decrypts: set tls: intercept`},
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], tls: intercept, credential: {source: s}}\n", `credential needs inject`},
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], tls: intercept, credential: {source: s, inject: {header: X}}}\n", `inject needs header and template`},
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], tls: intercept, credential: {source: s, inject: {header: X, template: \"{{.secret\"}}}\n", `inject template: template: f:1: unclosed action`},
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], tls: intercept, credential: {source: s, inject: {header: X, template: t, heder: Y}}}\n", `inject: unknown key "heder"`},
		{"targets:\n  - {name: f, protocol: http, hosts: [a.test], tls: intercept, credential: {source: vault, kind: aws, role: r, inject: {header: X, template: t}}}\n", `aws credentials re-sign each request`},
		{"targets:\n  - {name: db, protocol: postgres, addresses: [10.0.0.1], credential: {source: s, inject: {header: X, template: t}}}\n", `credential inject is only for http targets`},
	}
	for _, c := range cases {
		_, err := load("test.yaml", c.src, fakeResolver{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q:\n got: %v\nwant: %s", c.src, err, c.want)
		}
	}
}

// TestHTTPAWSActions: rules name AWS actions by X-Amz-Target, and S3
// operations by method and bucket path.
func TestHTTPAWSActions(t *testing.T) {
	src := `
identities: [{name: ci}]
targets:
  - name: dynamo
    protocol: http
    hosts: [dynamodb.eu-west-1.amazonaws.com]
    port: 443
    tls: intercept
    credential: {source: vault, kind: aws, role: reader}
  - name: s3
    protocol: http
    hosts: [s3.eu-west-1.amazonaws.com]
    port: 443
    tls: intercept
    credential: {source: vault, kind: aws, role: reader}
rules:
  - {name: dynamo-read, identity: ci, target: dynamo, http: {methods: [POST], aws_actions: ["DynamoDB_20120810.Get*", "DynamoDB_20120810.Query"]}, action: allow}
  - {name: reports-read, identity: ci, target: s3, http: {methods: [GET, HEAD], paths: ["/reports/*"]}, action: allow}
tests:
  - {name: get-item, identity: ci, target: dynamo, http: {method: POST, path: /, headers: {X-Amz-Target: [DynamoDB_20120810.GetItem]}}, expect: {action: allow, rule: dynamo-read}}
  - {name: delete-item, identity: ci, target: dynamo, http: {method: POST, path: /, headers: {X-Amz-Target: [DynamoDB_20120810.DeleteItem]}}, expect: {action: deny}}
  - {name: no-target, identity: ci, target: dynamo, http: {method: POST, path: /}, expect: {action: deny}}
  - {name: s3-get, identity: ci, target: s3, http: {method: GET, path: /reports/q3.txt}, expect: {action: allow, rule: reports-read}}
  - {name: s3-put, identity: ci, target: s3, http: {method: PUT, path: /reports/q3.txt}, expect: {action: deny}}
  - {name: s3-other-bucket, identity: ci, target: s3, http: {method: GET, path: /payroll/x}, expect: {action: deny}}
`
	p, err := load("test.yaml", src, fakeResolver{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(p.RunTests()); n != 6 {
		t.Fatalf("%d tests ran", n)
	}
	for _, r := range p.RunTests() {
		if !r.Pass {
			t.Error(r)
		}
	}
}
