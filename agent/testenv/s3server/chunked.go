package s3server

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsv4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go/aws-http-auth/credentials"
	"github.com/aws/smithy-go/aws-http-auth/sigv4"
)

// The payload hashes of the aws-chunked uploads the server takes: chunks
// signed, and chunks unsigned with a trailing checksum.
const (
	streamingSigned          = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	streamingUnsignedTrailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
)

// verifyStreaming checks an aws-chunked upload whose payload hash is
// hash: its seed signature, then the signature of every chunk, chained
// from it, or the trailing checksum of unsigned chunks. smithy-go's
// request signer hex-encodes any payload hash but UNSIGNED-PAYLOAD, so
// the seed is checked with aws-sdk-go-v2's (the signer agent/session
// checks against AWS's example upload); the chunks with smithy-go's event
// stream signer, whose string to sign with no headers is a chunk's. The
// body is read whole (a test server). It returns S3's error code and why,
// or "" and nil.
func (s *Server) verifyStreaming(r *http.Request, fields map[string]string, hash, id, region, service string, k key, t time.Time) (string, error) {
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
		aws.Credentials{AccessKeyID: id, SecretAccessKey: k.secret, SessionToken: k.token}, check, hash, service, region, t); err != nil {
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
	var code string
	if hash == streamingSigned {
		prev, _ := hex.DecodeString(seed)
		chain := sigv4.NewEventStreamSigner(credentials.Credentials{AccessKeyID: id, SecretAccessKey: k.secret, SessionToken: k.token}, service, region, prev)
		// gofakes3 decodes these chunks itself.
		r.Body = io.NopCloser(bytes.NewReader(raw))
		code, err = verifyChunks(raw, chain, t)
	} else {
		code, err = decodeUnsignedTrailer(r, raw)
	}
	if err != nil {
		return code, err
	}
	// As S3 does, the object keeps its own encoding, not the upload's
	// (gofakes3 would store and serve it).
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

// verifyChunks checks the signature of every chunk of raw, an aws-chunked
// body with signed chunks, as chain computes them.
func verifyChunks(raw []byte, chain *sigv4.EventStreamSigner, t time.Time) (string, error) {
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
			return "", nil
		}
	}
}

// trailerChecksums are the trailing checksums the server checks.
var trailerChecksums = map[string]*crc32.Table{
	"x-amz-checksum-crc32":  crc32.IEEETable,
	"x-amz-checksum-crc32c": crc32.MakeTable(crc32.Castagnoli),
}

// decodeUnsignedTrailer decodes raw, an aws-chunked body of unsigned
// chunks (HTTP/1.1 chunked framing) and a trailer, checks the checksum
// the trailer carries, and makes r the plain upload gofakes3 stores.
func decodeUnsignedTrailer(r *http.Request, raw []byte) (string, error) {
	body := bufio.NewReader(bytes.NewReader(raw))
	data, err := io.ReadAll(httputil.NewChunkedReader(body))
	if err != nil {
		return "IncompleteBody", fmt.Errorf("aws-chunked body: %w", err)
	}
	trailer, err := textproto.NewReader(body).ReadMIMEHeader()
	if err != nil {
		return "IncompleteBody", fmt.Errorf("aws-chunked trailer: %w", err)
	}
	name := strings.ToLower(r.Header.Get("X-Amz-Trailer"))
	table, ok := trailerChecksums[name]
	if !ok {
		return "InvalidRequest", fmt.Errorf("x-amz-trailer %q is not a checksum this server checks", name)
	}
	sum := binary.BigEndian.AppendUint32(nil, crc32.Checksum(data, table))
	if got := trailer.Get(name); got != base64.StdEncoding.EncodeToString(sum) {
		return "BadDigest", fmt.Errorf("the %s trailer %q does not match the body", name, got)
	}
	if n := strconv.Itoa(len(data)); r.Header.Get("X-Amz-Decoded-Content-Length") != n {
		return "IncompleteBody", fmt.Errorf("%s bytes decoded, x-amz-decoded-content-length says %s", n, r.Header.Get("X-Amz-Decoded-Content-Length"))
	}
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(data)), int64(len(data))
	r.Header.Set("Content-Length", strconv.Itoa(len(data)))
	r.Header.Set("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD")
	return "", nil
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

// SignUnsignedTrailer makes req, a PUT with no body, an aws-chunked upload
// of data in one unsigned chunk with a CRC32 trailer
// (STREAMING-UNSIGNED-PAYLOAD-TRAILER), its head signed with the key id
// and secret for S3 in region at t, as the AWS SDKs send one over HTTPS.
// It returns the framed body, also set as req's.
func SignUnsignedTrailer(req *http.Request, id, secret, region string, t time.Time, data []byte) ([]byte, error) {
	sum := binary.BigEndian.AppendUint32(nil, crc32.ChecksumIEEE(data))
	body := fmt.Appendf(nil, "%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n", len(data), data, base64.StdEncoding.EncodeToString(sum))
	req.ContentLength = int64(len(body))
	req.Header.Set("X-Amz-Content-Sha256", streamingUnsignedTrailer)
	req.Header.Set("Content-Encoding", "aws-chunked")
	req.Header.Set("X-Amz-Decoded-Content-Length", strconv.Itoa(len(data)))
	req.Header.Set("X-Amz-Trailer", "x-amz-checksum-crc32")
	if err := awsv4.NewSigner(func(o *awsv4.SignerOptions) { o.DisableURIPathEscaping = true }).
		SignHTTP(context.Background(), aws.Credentials{AccessKeyID: id, SecretAccessKey: secret}, req, streamingUnsignedTrailer, "s3", region, t); err != nil {
		return nil, err
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}
