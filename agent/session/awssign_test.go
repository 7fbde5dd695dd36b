package session

import (
	"bytes"
	"context"
	"errors"
	"io"
	nethttp "net/http"
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/decoders/http"
	"github.com/interlock-dev/interlock/decoders/protocol"
)

var benchCred = protocol.Credential{Username: "AKIAEXAMPLE000000001", Password: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}

func noMalformed(string) {}

func TestAWSScope(t *testing.T) {
	for _, c := range []struct{ host, auth, region, service string }{
		{"s3.eu-west-1.amazonaws.com", "", "eu-west-1", "s3"},
		{"bucket.s3.us-gov-east-1.amazonaws.com:443", "", "us-gov-east-1", "s3"},
		{"api.example.test", "AWS4-HMAC-SHA256 Credential=AKIADUMMY/20261130/ap-south-2/execute-api/aws4_request, SignedHeaders=host, Signature=00", "ap-south-2", "execute-api"},
		{"s3.amazonaws.com", "", "", ""},
	} {
		req, _ := nethttp.NewRequest("GET", "https://"+c.host+"/", nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		if r, s := awsScope(req); r != c.region || s != c.service {
			t.Errorf("%s %q: %s %s", c.host, c.auth, r, s)
		}
	}
}

// TestSignAWS: the agent's signature is replaced; a body without a hash is
// hashed (up to maxSignedBody: 413 above), aws-chunked with a signed
// trailer is refused.
func TestSignAWS(t *testing.T) {
	req, _ := nethttp.NewRequest("PUT", "https://s3.eu-west-1.amazonaws.com/b/k", strings.NewReader("data"))
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIADUMMY/20261130/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=00")
	req.Header.Set("X-Amz-Security-Token", "agent's")
	if err := signAWS(context.Background(), req, benchCred, "eu-west-1", "s3", noMalformed); err != nil {
		t.Fatal(err)
	}
	if a := req.Header.Get("Authorization"); !strings.Contains(a, "Credential="+benchCred.Username+"/") || req.Header.Get("X-Amz-Security-Token") != "" ||
		req.Header.Get("X-Amz-Content-Sha256") != "3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7" {
		t.Errorf("signed head: %v", req.Header)
	}
	if b, _ := io.ReadAll(req.Body); string(b) != "data" {
		t.Errorf("body after hashing: %q", b)
	}
	big, _ := nethttp.NewRequest("PUT", "https://s3.eu-west-1.amazonaws.com/b/k", bytes.NewReader(make([]byte, maxSignedBody+1)))
	var ref *http.Refusal
	if err := signAWS(context.Background(), big, benchCred, "eu-west-1", "s3", noMalformed); !errors.As(err, &ref) || ref.Status != 413 {
		t.Errorf("body over the cap: %v", err)
	}
	chunked, _ := nethttp.NewRequest("PUT", "https://s3.eu-west-1.amazonaws.com/b/k", strings.NewReader("x"))
	chunked.Header.Set("X-Amz-Content-Sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER")
	if err := signAWS(context.Background(), chunked, benchCred, "eu-west-1", "s3", noMalformed); !errors.As(err, &ref) || ref.Status != 501 {
		t.Errorf("aws-chunked with a signed trailer: %v", err)
	}
}

// BenchmarkAWSResign is the cost interlockd adds to one request to re-sign
// it (SigV4, the session's keys): a PUT of 1 MiB with UNSIGNED-PAYLOAD,
// the body streamed, not read.
func BenchmarkAWSResign(b *testing.B) {
	body := bytes.NewReader(make([]byte, 1<<20))
	ctx := context.Background()
	for b.Loop() {
		body.Seek(0, io.SeekStart)
		req, _ := nethttp.NewRequest("PUT", "https://s3.eu-west-1.amazonaws.com/bucket/key", body)
		req.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIADUMMY/20261130/eu-west-1/s3/aws4_request, SignedHeaders=host, Signature=00")
		region, service := awsScope(req)
		if err := signAWS(ctx, req, benchCred, region, service, noMalformed); err != nil {
			b.Fatal(err)
		}
	}
}
