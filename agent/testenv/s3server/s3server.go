// Package s3server is a TEST S3-compatible server (gofakes3, in memory)
// that checks every request's AWS Signature V4 with an implementation of
// its own: smithy-go's aws-http-auth, not the aws-sdk-go-v2 signer that
// interlockd re-signs requests with, so a signature both agree on is a
// signature AWS would accept. An aws-chunked upload has its seed checked
// with aws-sdk-go-v2's signer and every chunk's signature
// (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) or its trailing checksum
// (STREAMING-UNSIGNED-PAYLOAD-TRAILER) checked too (see verifyStreaming).
// It knows the key pairs the vault-compat
// server's AWS engine mints (it is that engine's vaultcompat.AWSKeys) and
// refuses them once their lease is revoked.
package s3server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/aws/smithy-go/aws-http-auth/credentials"
	"github.com/aws/smithy-go/aws-http-auth/sigv4"
	v4 "github.com/aws/smithy-go/aws-http-auth/v4"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

// maxSkew is how far a request's X-Amz-Date may be from the server's
// clock, as S3 allows.
const maxSkew = 15 * time.Minute

// Server is the test server; it is an http.Handler. Safe for concurrent
// use.
type Server struct {
	s3 http.Handler

	mu   sync.Mutex
	keys map[string]key
	seen map[string]int // accepted requests per access key id
	last map[string]*http.Request
}

type key struct{ secret, token string }

// New returns a server with no bucket and no key.
func New() *Server {
	return &Server{s3: gofakes3.New(s3mem.New()).Server(), keys: map[string]key{}, seen: map[string]int{}, last: map[string]*http.Request{}}
}

// AddKey implements vaultcompat.AWSKeys.
func (s *Server) AddKey(accessKeyID, secretAccessKey, sessionToken string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[accessKeyID] = key{secretAccessKey, sessionToken}
}

// RemoveKey implements vaultcompat.AWSKeys.
func (s *Server) RemoveKey(accessKeyID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, accessKeyID)
}

// Seen returns how many requests signed with each access key id were
// accepted.
func (s *Server) Seen() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.seen))
	for k, n := range s.seen {
		out[k] = n
	}
	return out
}

// Last returns the last accepted request without a body that was signed
// with accessKeyID (its head, for a replay), nil if none.
func (s *Server) Last(accessKeyID string) *http.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last[accessKeyID]
}

// ServeHTTP checks the signature, then serves S3.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id, code, err := s.verify(r)
	if err != nil {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(http.StatusForbidden)
		xml.NewEncoder(w).Encode(struct {
			XMLName xml.Name `xml:"Error"`
			Code    string
			Message string
		}{Code: code, Message: err.Error()})
		return
	}
	s.mu.Lock()
	s.seen[id]++
	if r.ContentLength <= 0 {
		s.last[id] = r.Clone(context.Background())
	}
	s.mu.Unlock()
	s.s3.ServeHTTP(w, r)
}

// verify checks r's Authorization header and returns its access key id,
// or S3's error code and why.
func (s *Server) verify(r *http.Request) (string, string, error) {
	const alg = "AWS4-HMAC-SHA256 "
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), alg)
	if !ok {
		return "", "AccessDenied", errors.New("anonymous and non-SigV4 requests are refused")
	}
	fields := map[string]string{}
	for _, f := range strings.Split(auth, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		fields[k] = v
	}
	scope := strings.Split(fields["Credential"], "/")
	if len(scope) != 5 || scope[4] != "aws4_request" || fields["SignedHeaders"] == "" || fields["Signature"] == "" {
		return "", "AuthorizationHeaderMalformed", fmt.Errorf("malformed Authorization %q", r.Header.Get("Authorization"))
	}
	id, region, service := scope[0], scope[2], scope[3]
	s.mu.Lock()
	k, ok := s.keys[id]
	s.mu.Unlock()
	if !ok {
		return "", "InvalidAccessKeyId", fmt.Errorf("the access key %s does not exist", id)
	}
	if k.token != "" && r.Header.Get("X-Amz-Security-Token") != k.token {
		return "", "InvalidToken", errors.New("the security token is missing or wrong")
	}
	t, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil || time.Since(t).Abs() > maxSkew || t.Format("20060102") != scope[1] {
		return "", "RequestTimeTooSkewed", errors.New("X-Amz-Date is missing, skewed or not the credential's date")
	}
	hash := r.Header.Get("X-Amz-Content-Sha256")
	var payload []byte
	switch {
	case hash == "UNSIGNED-PAYLOAD":
		payload = []byte(hash)
	case hash == streamingSigned || hash == streamingUnsignedTrailer:
		if code, err := s.verifyStreaming(r, fields, hash, id, region, service, k, t); err != nil {
			return "", code, err
		}
		return id, "", nil
	default:
		if payload, err = hex.DecodeString(hash); err != nil || len(payload) != sha256.Size {
			return "", "InvalidArgument", fmt.Errorf("x-amz-content-sha256 %q is not a SHA-256 or UNSIGNED-PAYLOAD", hash)
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return "", "IncompleteBody", err
		}
		if sum := sha256.Sum256(body); !bytes.Equal(sum[:], payload) {
			return "", "XAmzContentSHA256Mismatch", errors.New("the body does not hash to x-amz-content-sha256")
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	// The request as the client signed it: only the headers it named.
	signed := map[string]bool{}
	check := &http.Request{Method: r.Method, URL: r.URL, Host: r.Host, Header: http.Header{}}
	for _, h := range strings.Split(fields["SignedHeaders"], ";") {
		signed[h] = true
		if h != "host" {
			check.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	signer := sigv4.New(func(o *v4.SignerOptions) {
		o.HeaderRules = headerSet(signed)
		o.DisableDoublePathEscape = service == "s3"
	})
	if err := signer.SignRequest(&sigv4.SignRequestInput{Request: check, PayloadHash: payload,
		Credentials: credentials.Credentials{AccessKeyID: id, SecretAccessKey: k.secret, SessionToken: k.token},
		Service:     service, Region: region, Time: t}); err != nil {
		return "", "InternalError", err
	}
	_, want, _ := strings.Cut(check.Header.Get("Authorization"), "Signature=")
	if !hmac.Equal([]byte(want), []byte(fields["Signature"])) {
		return "", "SignatureDoesNotMatch", errors.New("the request signature we calculated does not match the signature you provided")
	}
	return id, "", nil
}

// headerSet signs exactly the headers a request's SignedHeaders names.
type headerSet map[string]bool

// IsSigned implements v4.SignedHeaderRules.
func (h headerSet) IsSigned(name string) bool { return h[name] }
