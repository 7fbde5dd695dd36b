package s3server

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsv4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// do sends a request signed by aws-sdk-go-v2's signer (interlockd's) with
// secret, and returns the status and body.
func do(t *testing.T, url, method, path, body, id, secret string, edit func(*http.Request)) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url+path, strings.NewReader(body))
	req.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
	err := awsv4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: id, SecretAccessKey: secret}, req,
		"UNSIGNED-PAYLOAD", "s3", "eu-west-1", time.Now(), func(o *awsv4.SignerOptions) { o.DisableURIPathEscaping = true })
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestVerifiesSignatures: what aws-sdk-go-v2 signs with a known key is
// served; a wrong secret, a header changed after signing, an unknown or
// removed key, and no signature are refused.
func TestVerifiesSignatures(t *testing.T) {
	s := New()
	srv := httptest.NewServer(s)
	defer srv.Close()
	const id, secret = "AKIATESTKEY0000001", "secret-key-of-forty-characters-000000000"
	s.AddKey(id, secret, "")
	if st, b := do(t, srv.URL, "PUT", "/bucket-1", "", id, secret, nil); st != 200 {
		t.Fatalf("create bucket: %d %s", st, b)
	}
	if st, b := do(t, srv.URL, "PUT", "/bucket-1/dir/a b.txt", "hello", id, secret, nil); st != 200 {
		t.Fatalf("put object: %d %s", st, b)
	}
	if st, b := do(t, srv.URL, "GET", "/bucket-1/dir/a b.txt", "", id, secret, nil); st != 200 || b != "hello" {
		t.Fatalf("get object: %d %s", st, b)
	}
	for name, c := range map[string]struct {
		secret string
		edit   func(*http.Request)
		code   string
	}{
		"wrong secret": {secret: "another-secret-of-forty-characters-00000", code: "SignatureDoesNotMatch"},
		"changed header": {secret: secret, edit: func(r *http.Request) {
			// A second later, or earlier if later is the next day: only
			// the signature may refuse it, not the date check.
			at, _ := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
			moved := at.Add(time.Second)
			if moved.Day() != at.Day() {
				moved = at.Add(-time.Second)
			}
			r.Header.Set("X-Amz-Date", moved.Format("20060102T150405Z"))
		}, code: "SignatureDoesNotMatch"},
		"changed path":       {secret: secret, edit: func(r *http.Request) { r.URL.Path = "/bucket-1/dir/b.txt" }, code: "SignatureDoesNotMatch"},
		"unsigned":           {secret: secret, edit: func(r *http.Request) { r.Header.Del("Authorization") }, code: "AccessDenied"},
		"signed payload lie": {secret: secret, edit: func(r *http.Request) { r.Header.Set("X-Amz-Content-Sha256", emptySHA256) }, code: "SignatureDoesNotMatch"},
	} {
		if st, b := do(t, srv.URL, "GET", "/bucket-1/dir/a b.txt", "", id, c.secret, c.edit); st != 403 || !strings.Contains(b, c.code) {
			t.Errorf("%s: %d %s", name, st, b)
		}
	}
	s.RemoveKey(id)
	if st, b := do(t, srv.URL, "GET", "/bucket-1/dir/a b.txt", "", id, secret, nil); st != 403 || !strings.Contains(b, "InvalidAccessKeyId") {
		t.Errorf("removed key: %d %s", st, b)
	}
	if n := s.Seen()[id]; n != 3 {
		t.Errorf("seen %d accepted requests, want 3", n)
	}
}

// TestVerifiesChunkedUploads: an aws-chunked upload signed with a known
// key is stored decoded; one with a chunk changed after signing, a chunk
// signed with another key, a seed that is not the head's, or broken
// framing is refused.
func TestVerifiesChunkedUploads(t *testing.T) {
	s := New()
	srv := httptest.NewServer(s)
	defer srv.Close()
	const id, secret = "AKIATESTKEY0000001", "secret-key-of-forty-characters-000000000"
	s.AddKey(id, secret, "")
	if st, b := do(t, srv.URL, "PUT", "/bucket-1", "", id, secret, nil); st != 200 {
		t.Fatalf("create bucket: %d %s", st, b)
	}
	chunks := [][]byte{[]byte(strings.Repeat("a", 8<<10)), []byte("the end")}
	put := func(secret string, edit func(body []byte) []byte) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("PUT", srv.URL+"/bucket-1/chunked", nil)
		body, err := SignChunked(req, id, secret, "eu-west-1", time.Now(), chunks...)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			body = edit(bytes.Clone(body))
			req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, b := put(secret, nil); st != 200 {
		t.Fatalf("chunked put: %d %s", st, b)
	}
	if st, b := do(t, srv.URL, "GET", "/bucket-1/chunked", "", id, secret, nil); st != 200 || b != strings.Repeat("a", 8<<10)+"the end" {
		t.Fatalf("get the chunked object: %d %.40q", st, b)
	}
	// A second chain, from the same head and chunks with another secret:
	// its chunk signatures are right for that secret only.
	req, _ := http.NewRequest("PUT", srv.URL+"/bucket-1/chunked", nil)
	at := time.Now()
	other, _ := SignChunked(req, id, "another-secret-of-forty-characters-00000", "eu-west-1", at, chunks...)
	for name, c := range map[string]struct {
		edit func([]byte) []byte
		code string
	}{
		"changed chunk": {func(b []byte) []byte { b[bytes.Index(b, []byte("the end"))] = 'T'; return b }, "SignatureDoesNotMatch"},
		"chunk of another key": {func(b []byte) []byte {
			// The first chunk's signature from the other chain.
			i := bytes.Index(b, []byte("chunk-signature=")) + 16
			copy(b[i:i+64], other[i:i+64])
			return b
		}, "SignatureDoesNotMatch"},
		// Framing broken at the same length, which the head signs.
		"wrong size":     {func(b []byte) []byte { b[3] = '1'; return b }, "IncompleteBody"},
		"final not CRLF": {func(b []byte) []byte { copy(b[len(b)-2:], "XY"); return b }, "IncompleteBody"},
	} {
		if st, b := put(secret, c.edit); st != 403 || !strings.Contains(b, c.code) {
			t.Errorf("%s: %d %s", name, st, b)
		}
	}
	if st, b := put("another-secret-of-forty-characters-00000", nil); st != 403 || !strings.Contains(b, "SignatureDoesNotMatch") {
		t.Errorf("seed of another key: %d %s", st, b)
	}
}

// TestVerifiesUnsignedTrailerUploads: an aws-chunked upload of unsigned
// chunks with a CRC32 trailer, its head signed with a known key, is
// stored decoded; a wrong checksum or head signature is refused.
func TestVerifiesUnsignedTrailerUploads(t *testing.T) {
	s := New()
	srv := httptest.NewServer(s)
	defer srv.Close()
	const id, secret = "AKIATESTKEY0000001", "secret-key-of-forty-characters-000000000"
	s.AddKey(id, secret, "")
	if st, b := do(t, srv.URL, "PUT", "/bucket-1", "", id, secret, nil); st != 200 {
		t.Fatalf("create bucket: %d %s", st, b)
	}
	put := func(secret string, edit func([]byte)) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("PUT", srv.URL+"/bucket-1/trailer", nil)
		body, err := SignUnsignedTrailer(req, id, secret, "eu-west-1", time.Now(), []byte("checked by its CRC32"))
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			edit(body)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, b := put(secret, nil); st != 200 {
		t.Fatalf("put: %d %s", st, b)
	}
	if st, b := do(t, srv.URL, "GET", "/bucket-1/trailer", "", id, secret, nil); st != 200 || b != "checked by its CRC32" {
		t.Fatalf("get: %d %q", st, b)
	}
	if st, b := put(secret, func(b []byte) { b[bytes.Index(b, []byte("CRC32"))] = 'c' }); st != 403 || !strings.Contains(b, "BadDigest") {
		t.Errorf("changed data: %d %s", st, b)
	}
	if st, b := put("another-secret-of-forty-characters-00000", nil); st != 403 || !strings.Contains(b, "SignatureDoesNotMatch") {
		t.Errorf("another key: %d %s", st, b)
	}
}
