package session

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsv4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/smithy-go/aws-http-auth/credentials"
	"github.com/aws/smithy-go/aws-http-auth/sigv4"

	"github.com/interlock-dev/interlock/agent/testenv/s3server"
	"github.com/interlock-dev/interlock/decoders/http"
)

// frameChunks is an aws-chunked body of chunks and the final empty one,
// each signed by sign.
func frameChunks(sign func([]byte) []byte, chunks ...[]byte) []byte {
	var b bytes.Buffer
	for _, c := range append(chunks, nil) {
		fmt.Fprintf(&b, "%x%s%x\r\n", len(c), chunkSignatureExt, sign(c))
		b.Write(c)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// streamSign is sign for frameChunks with aws-sdk-go-v2's stream signer.
func streamSign(t testing.TB, s *awsv4.StreamSigner, at time.Time) func([]byte) []byte {
	return func(c []byte) []byte {
		sig, err := s.GetSignature(context.Background(), nil, c, at)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestChunkSignaturesFollowTheSpec: the example upload of AWS's
// "Signature Calculations for the Authorization Header: Transferring
// Payload in Multiple Chunks" (S3 API reference, sigv4-streaming): its
// seed signature from aws-sdk-go-v2's request signer with the streaming
// payload hash, and its three chunk signatures from the stream signer
// given no headers, which is what interlockd signs with.
func TestChunkSignaturesFollowTheSpec(t *testing.T) {
	at := time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)
	creds := aws.Credentials{AccessKeyID: "AKIAIOSFODNN7EXAMPLE", SecretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
	req, _ := nethttp.NewRequest("PUT", "https://s3.amazonaws.com/examplebucket/chunkObject.txt", nil)
	req.ContentLength = 66824
	req.Header.Set("X-Amz-Storage-Class", "REDUCED_REDUNDANCY")
	req.Header.Set("X-Amz-Content-Sha256", streamingSigned)
	req.Header.Set("Content-Encoding", "aws-chunked")
	req.Header.Set("X-Amz-Decoded-Content-Length", "66560")
	if err := awsv4.NewSigner(func(o *awsv4.SignerOptions) { o.DisableURIPathEscaping = true }).
		SignHTTP(context.Background(), creds, req, streamingSigned, "s3", "us-east-1", at); err != nil {
		t.Fatal(err)
	}
	const seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
	if a := req.Header.Get("Authorization"); !strings.HasSuffix(a, "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class, Signature="+seed) {
		t.Errorf("seed: %s", a)
	}
	s := awsv4.NewStreamSigner(creds, "s3", "us-east-1", mustHex(seed))
	for _, c := range []struct {
		size int
		want string
	}{
		{65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"},
		{1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"},
		{0, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"},
	} {
		if got := streamSign(t, s, at)(bytes.Repeat([]byte("a"), c.size)); hex.EncodeToString(got) != c.want {
			t.Errorf("chunk of %d bytes: %x, want %s", c.size, got, c.want)
		}
	}
}

// chunkedRequest is a PUT of an aws-chunked body of chunks that an agent
// signed with dummy keys, head and chunks.
func chunkedRequest(t testing.TB, chunks ...[]byte) *nethttp.Request {
	req, _ := nethttp.NewRequest("PUT", "https://s3.eu-west-1.amazonaws.com/bucket/key", nil)
	if _, err := s3server.SignChunked(req, "AKIADUMMY", "dummy", "eu-west-1", time.Now(), chunks...); err != nil {
		t.Fatal(err)
	}
	return req
}

// TestSignAWSChunked: an aws-chunked upload signed with dummy keys leaves
// with its head signed by the session's keys and every chunk's signature
// the next of the chain that head seeds, as smithy-go's event stream
// signer (not the one interlockd signs with) computes it; its length and
// aws-chunked headers are the agent's.
func TestSignAWSChunked(t *testing.T) {
	chunks := [][]byte{bytes.Repeat([]byte("x"), 64<<10), bytes.Repeat([]byte("y"), 64<<10), []byte("the rest")}
	req := chunkedRequest(t, chunks...)
	length := req.ContentLength
	if err := signAWS(context.Background(), req, benchCred, "eu-west-1", "s3", func(why string) { t.Errorf("malformed: %s", why) }); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(req.Body)
	if err != nil {
		t.Fatal(err)
	}
	auth := req.Header.Get("Authorization")
	_, seed, _ := strings.Cut(auth, "Signature=")
	if !strings.Contains(auth, "Credential="+benchCred.Username+"/") || req.Header.Get("X-Amz-Content-Sha256") != streamingSigned ||
		req.Header.Get("Content-Encoding") != "aws-chunked" || req.Header.Get("X-Amz-Decoded-Content-Length") != strconv.Itoa(128<<10+8) ||
		req.ContentLength != length || int64(len(out)) != length {
		t.Fatalf("head %v, length %d of %d", req.Header, len(out), length)
	}
	at, err := time.Parse("20060102T150405Z", req.Header.Get("X-Amz-Date"))
	if err != nil {
		t.Fatal(err)
	}
	verifier := sigv4.NewEventStreamSigner(credentials.Credentials{AccessKeyID: benchCred.Username, SecretAccessKey: benchCred.Password},
		"s3", "eu-west-1", mustHex(seed))
	want := frameChunks(func(c []byte) []byte {
		sig, err := verifier.SignMessage(nil, c, at)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}, chunks...)
	if !bytes.Equal(out, want) {
		t.Errorf("re-signed body:\n%.300q\nwant:\n%.300q", out, want)
	}
}

// TestSignAWSUnsignedTrailer: STREAMING-UNSIGNED-PAYLOAD-TRAILER's chunks
// carry no signature: the head is re-signed, the body goes as sent.
func TestSignAWSUnsignedTrailer(t *testing.T) {
	req, _ := nethttp.NewRequest("PUT", "https://s3.eu-west-1.amazonaws.com/bucket/key", nil)
	body, err := s3server.SignUnsignedTrailer(req, "AKIADUMMY", "dummy", "eu-west-1", time.Now(), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := signAWS(context.Background(), req, benchCred, "eu-west-1", "s3", noMalformed); err != nil {
		t.Fatal(err)
	}
	if a := req.Header.Get("Authorization"); !strings.Contains(a, "Credential="+benchCred.Username+"/") || req.Header.Get("X-Amz-Content-Sha256") != streamingUnsignedTrailer {
		t.Errorf("head: %v", req.Header)
	}
	if b, _ := io.ReadAll(req.Body); !bytes.Equal(b, body) {
		t.Errorf("body: %q", b)
	}
}

// TestChunkResignerRefusesMalformed: framing it cannot read is a 400,
// reported once; nothing of a chunk goes on before all of it is read
// ('hel' begins each cut one).
func TestChunkResignerRefusesMalformed(t *testing.T) {
	sig := strings.Repeat("0", 64)
	for name, body := range map[string]string{
		"long line":        strings.Repeat("0", maxChunkLine) + ";chunk-signature=" + sig + "\r\n\r\n",
		"size not hex":     "g;chunk-signature=" + sig + "\r\n",
		"size empty":       ";chunk-signature=" + sig + "\r\n",
		"size signed":      "+5;chunk-signature=" + sig + "\r\nhello\r\n",
		"no signature":     "5\r\nhello\r\n0\r\n\r\n",
		"short signature":  "5;chunk-signature=" + sig[1:] + "\r\nhello\r\n",
		"bare LF":          "5;chunk-signature=" + sig + "\nhello\r\n",
		"chunk over cap":   fmt.Sprintf("%x;chunk-signature=%s\r\n", maxChunk+1, sig),
		"cut in data":      "5;chunk-signature=" + sig + "\r\nhel",
		"cut before CRLF":  "5;chunk-signature=" + sig + "\r\nhello\r",
		"no CRLF":          "5;chunk-signature=" + sig + "\r\nhello!!",
		"no final chunk":   "5;chunk-signature=" + sig + "\r\nworld\r\n",
		"cut in line":      "5;chunk-sig",
		"after final":      "0;chunk-signature=" + sig + "\r\n\r\nmore",
		"final without LF": "0;chunk-signature=" + sig + "\r\n",
	} {
		reported := 0
		r := newChunkResigner(context.Background(), io.NopCloser(strings.NewReader(body)), awsv4.NewStreamSigner(aws.Credentials{}, "s3", "eu-west-1", nil),
			time.Now(), func(string) { reported++ })
		out, err := io.ReadAll(r)
		var ref *http.Refusal
		if !errors.As(err, &ref) || ref.Status != 400 || reported != 1 {
			t.Errorf("%s: %v, reported %d", name, err, reported)
		}
		if bytes.Contains(out, []byte("hel")) {
			t.Errorf("%s: part of a chunk went on: %q", name, out)
		}
	}
}

// FuzzChunkResigner: any body is re-signed or refused with 400, never
// anything else; a re-signed body has the agent's length, and re-signing
// it again with the same chain changes nothing.
func FuzzChunkResigner(f *testing.F) {
	sig := strings.Repeat("0", 64)
	f.Add([]byte("5;chunk-signature=" + sig + "\r\nhello\r\n0;chunk-signature=" + sig + "\r\n\r\n"))
	f.Add([]byte("0000a;chunk-signature=" + sig + "\r\n0123456789\r\n00;chunk-signature=" + sig + "\r\n\r\n"))
	f.Add([]byte("5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n"))
	f.Add([]byte("ffffffff;chunk-signature=" + sig + "\r\n"))
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	resign := func(in []byte) ([]byte, error) {
		signer := awsv4.NewStreamSigner(aws.Credentials{AccessKeyID: "AKID", SecretAccessKey: "secret"}, "s3", "eu-west-1", []byte("seed"))
		return io.ReadAll(newChunkResigner(context.Background(), io.NopCloser(bytes.NewReader(in)), signer, at, func(string) {}))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := resign(in)
		if err != nil {
			var ref *http.Refusal
			if !errors.As(err, &ref) || ref.Status != 400 {
				t.Fatalf("not a 400: %v", err)
			}
			return
		}
		if len(out) != len(in) {
			t.Fatalf("%d bytes in, %d out", len(in), len(out))
		}
		again, err := resign(out)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("re-signed twice: %v\n%q\n%q", err, out, again)
		}
	})
}

// BenchmarkAWSResignChunked is the cost interlockd adds to one aws-chunked
// upload (STREAMING-AWS4-HMAC-SHA256-PAYLOAD) of 1 MiB in 64 KiB chunks:
// the head re-signed, then every chunk hashed and signed as it streams.
func BenchmarkAWSResignChunked(b *testing.B) {
	chunks := make([][]byte, 16)
	for i := range chunks {
		chunks[i] = make([]byte, 64<<10)
	}
	proto := chunkedRequest(b, chunks...)
	body, _ := io.ReadAll(proto.Body)
	ctx := context.Background()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		req := proto.Clone(ctx)
		req.Body = io.NopCloser(bytes.NewReader(body))
		if err := signAWS(ctx, req, benchCred, "eu-west-1", "s3", noMalformed); err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			b.Fatal(err)
		}
	}
}
