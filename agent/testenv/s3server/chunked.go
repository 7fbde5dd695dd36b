package s3server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsv4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go/aws-http-auth/credentials"
	"github.com/aws/smithy-go/aws-http-auth/sigv4"
)

// streamingSigned is the payload hash of an aws-chunked upload whose
// chunks are signed.
const streamingSigned = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"

// verifyChunked checks an aws-chunked upload: its seed signature, then
// the signature of every chunk, chained from it. smithy-go's request
// signer hex-encodes any payload hash but UNSIGNED-PAYLOAD, so the seed
// is checked with aws-sdk-go-v2's (the signer agent/session checks
// against AWS's example upload); the chunks with smithy-go's event stream
// signer, whose string to sign with no headers is a chunk's. The body is
// read whole (a test server) and handed on framed, for gofakes3 to
// decode. It returns S3's error code and why, or "" and nil.
func (s *Server) verifyChunked(r *http.Request, fields map[string]string, id, region, service string, k key, t time.Time) (string, error) {
	check := &http.Request{Method: r.Method, URL: r.URL, Host: r.Host, Header: http.Header{}}
	for _, h := range strings.Split(fields["SignedHeaders"], ";") {
		switch h {
		case "host":
		case "content-length":
			check.ContentLength = r.ContentLength
		default:
			check.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
		}
	}
	if err := awsv4.NewSigner(func(o *awsv4.SignerOptions) { o.DisableURIPathEscaping = service == "s3" }).SignHTTP(r.Context(),
		aws.Credentials{AccessKeyID: id, SecretAccessKey: k.secret, SessionToken: k.token}, check, streamingSigned, service, region, t); err != nil {
		return "InternalError", err
	}
	_, seed, _ := strings.Cut(check.Header.Get("Authorization"), "Signature=")
	if check.Header.Get("X-Amz-Date") != r.Header.Get("X-Amz-Date") || !hmac.Equal([]byte(seed), []byte(fields["Signature"])) {
		return "SignatureDoesNotMatch", errors.New("the request signature we calculated does not match the signature you provided")
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		return "IncompleteBody", err
	}
	r.Body = io.NopCloser(bytes.NewReader(raw))
	prev, _ := hex.DecodeString(seed)
	chain := sigv4.NewEventStreamSigner(credentials.Credentials{AccessKeyID: id, SecretAccessKey: k.secret, SessionToken: k.token}, service, region, prev)
	body := bufio.NewReader(bytes.NewReader(raw))
	for n := 0; ; n++ {
		line, err := body.ReadString('\n')
		sizeHex, sig, ok := strings.Cut(strings.TrimSuffix(line, "\r\n"), ";chunk-signature=")
		size, perr := strconv.ParseUint(sizeHex, 16, 31)
		if err != nil || !ok || perr != nil {
			return "IncompleteBody", fmt.Errorf("chunk %d: malformed header line %q", n, line)
		}
		data := make([]byte, size+2)
		if _, err := io.ReadFull(body, data); err != nil || string(data[size:]) != "\r\n" {
			return "IncompleteBody", fmt.Errorf("chunk %d: %d bytes and CRLF expected", n, size)
		}
		want, err := chain.SignMessage(nil, data[:size], t)
		if err != nil {
			return "InternalError", err
		}
		if !hmac.Equal([]byte(hex.EncodeToString(want)), []byte(sig)) {
			return "SignatureDoesNotMatch", fmt.Errorf("the signature of chunk %d does not match", n)
		}
		if size == 0 {
			if _, err := body.ReadByte(); err != io.EOF {
				return "IncompleteBody", errors.New("data after the final chunk")
			}
			// As S3 does, the object keeps its own encoding, not the
			// upload's (gofakes3 would store and serve it).
			var enc []string
			for _, e := range strings.Split(r.Header.Get("Content-Encoding"), ",") {
				if e = strings.TrimSpace(e); e != "" && e != "aws-chunked" {
					enc = append(enc, e)
				}
			}
			r.Header.Del("Content-Encoding")
			if len(enc) > 0 {
				r.Header.Set("Content-Encoding", strings.Join(enc, ","))
			}
			return "", nil
		}
	}
}

// SignChunked makes req, a PUT with no body, an aws-chunked upload of
// chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) signed with the key id and
// secret for S3 in region at t, as the AWS SDKs send one: the head's
// signature seeds the chunks', each chained from the one before (the
// chunk signer is aws-sdk-go-v2's). It returns the framed body, also set
// as req's.
func SignChunked(req *http.Request, id, secret, region string, t time.Time, chunks ...[]byte) ([]byte, error) {
	creds := aws.Credentials{AccessKeyID: id, SecretAccessKey: secret}
	framed := func(sign func([]byte) ([]byte, error)) ([]byte, error) {
		var b bytes.Buffer
		for _, c := range append(chunks, nil) {
			sig, err := sign(c)
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&b, "%x;chunk-signature=%x\r\n%s\r\n", len(c), sig, c)
		}
		return b.Bytes(), nil
	}
	// The framed length does not depend on the signatures, only on
	// their size.
	zero, _ := framed(func([]byte) ([]byte, error) { return make([]byte, 32), nil })
	decoded := 0
	for _, c := range chunks {
		decoded += len(c)
	}
	req.ContentLength = int64(len(zero))
	req.Header.Set("X-Amz-Content-Sha256", streamingSigned)
	req.Header.Set("Content-Encoding", "aws-chunked")
	req.Header.Set("X-Amz-Decoded-Content-Length", strconv.Itoa(decoded))
	if err := awsv4.NewSigner(func(o *awsv4.SignerOptions) { o.DisableURIPathEscaping = true }).
		SignHTTP(context.Background(), creds, req, streamingSigned, "s3", region, t); err != nil {
		return nil, err
	}
	_, seed, _ := strings.Cut(req.Header.Get("Authorization"), "Signature=")
	prev, err := hex.DecodeString(seed)
	if err != nil {
		return nil, err
	}
	chain := awsv4.NewStreamSigner(creds, "s3", region, prev)
	body, err := framed(func(c []byte) ([]byte, error) { return chain.GetSignature(context.Background(), nil, c, t) })
	if err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}
