package session

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	nethttp "net/http"
	"regexp"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsv4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/decoders/http"
	"github.com/interlock-dev/interlock/decoders/protocol"
)

// maxSignedBody caps the body interlockd reads whole to hash it, for a
// request whose agent sent no payload hash: the signature covers the body,
// so it cannot go before it is all read. Larger bodies are refused with
// 413; clients that sign (with any keys) or send UNSIGNED-PAYLOAD stream.
const maxSignedBody = 32 << 20

// emptySHA256 is the payload hash of an empty body.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// awsRegion matches an AWS region name (eu-west-1, us-gov-east-1).
var awsRegion = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]$`)

// awsResign signs req with the session's AWS keys (Signature V4,
// aws-sdk-go-v2's signer), whatever the agent signed it with: the region
// and service of the agent's own signature, else of the host name
// (SERVICE.REGION.amazonaws.com). The payload hash the agent sent
// (UNSIGNED-PAYLOAD, a SHA-256, or an aws-chunked upload's STREAMING-...)
// is kept, since the server checks it against the body; with none, the
// body is read (up to maxSignedBody) and hashed. A malformed aws-chunked
// body is audited as a protocol error.
func (g httpGuard) awsResign(ctx context.Context, u *upstream, target string, req *nethttp.Request) error {
	region, service := awsScope(req)
	if region == "" {
		return &http.Refusal{Status: nethttp.StatusBadRequest,
			Message: "the request names no AWS region and service: sign it (with any keys) or use a SERVICE.REGION.amazonaws.com host"}
	}
	cred, err := g.credential(ctx, u, target)
	if err != nil {
		return err
	}
	return signAWS(ctx, req, cred, region, service, func(why string) {
		g.p.record(audit.ProtocolError{Session: u.c.id, Identity: u.c.identity.Name, Target: target,
			Error: fmt.Sprintf("%s %s: malformed aws-chunked body: %s", req.Method, req.URL.Path, why)})
	})
}

// signAWS replaces req's signature with one of cred's keys for service
// in region. An aws-chunked body with signed chunks is re-signed chunk by
// chunk as it streams, each malformed one reported to malformed.
func signAWS(ctx context.Context, req *nethttp.Request, cred protocol.Credential, region, service string, malformed func(why string)) error {
	hash := req.Header.Get("X-Amz-Content-Sha256")
	switch {
	case hash == streamingSigned || hash == streamingUnsignedTrailer:
	case strings.HasPrefix(hash, "STREAMING-"):
		// STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER's trailer is signed
		// with an algorithm (AWS4-HMAC-SHA256-TRAILER) aws-sdk-go-v2's
		// signer does not implement; the ECDSA ones are SigV4a.
		return &http.Refusal{Status: nethttp.StatusNotImplemented,
			Message: "aws-chunked uploads with x-amz-content-sha256 " + hash + " are not re-signed by this interlockd: send " +
				streamingSigned + ", " + streamingUnsignedTrailer + ", UNSIGNED-PAYLOAD or a signed payload"}
	case hash == "UNSIGNED-PAYLOAD" || isSHA256Hex(hash):
	case req.Body == nil || req.Body == nethttp.NoBody || req.ContentLength == 0:
		hash = emptySHA256
	default:
		body, err := io.ReadAll(io.LimitReader(req.Body, maxSignedBody+1))
		if err != nil {
			return fmt.Errorf("read the body to sign: %w", err)
		}
		if len(body) > maxSignedBody {
			return &http.Refusal{Status: nethttp.StatusRequestEntityTooLarge,
				Message: fmt.Sprintf("a body signed by interlockd is read whole, up to %d bytes; send UNSIGNED-PAYLOAD for larger ones", maxSignedBody)}
		}
		sum := sha256.Sum256(body)
		hash = hex.EncodeToString(sum[:])
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	sentHash := req.Header.Get("X-Amz-Content-Sha256") != ""
	for _, h := range []string{"Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-Sha256"} {
		req.Header.Del(h)
	}
	if sentHash || service == "s3" {
		// S3 wants the hash as a header too; others take it when sent.
		req.Header.Set("X-Amz-Content-Sha256", hash)
	}
	creds := aws.Credentials{AccessKeyID: cred.Username, SecretAccessKey: cred.Password, SessionToken: cred.Fields["security_token"]}
	signer := awsv4.NewSigner(func(o *awsv4.SignerOptions) {
		// S3 signs the path as sent; every other service escapes it again.
		o.DisableURIPathEscaping = service == "s3"
	})
	now := time.Now()
	if err := signer.SignHTTP(ctx, creds, req, hash, service, region, now); err != nil {
		return fmt.Errorf("sign the request for %s in %s: %w", service, region, err)
	}
	if hash != streamingSigned || req.Body == nil || req.Body == nethttp.NoBody {
		return nil
	}
	// The head's signature seeds the chunks' chain.
	_, sig, _ := strings.Cut(req.Header.Get("Authorization"), "Signature=")
	seed, err := hex.DecodeString(sig)
	if err != nil {
		return fmt.Errorf("read the seed signature: %w", err)
	}
	req.Body = newChunkResigner(ctx, req.Body, awsv4.NewStreamSigner(creds, service, region, seed), now, malformed)
	return nil
}

// awsScope is the region and service a request is for: those of the
// agent's own signature, else of its host name.
func awsScope(req *nethttp.Request) (region, service string) {
	if rest, ok := strings.CutPrefix(req.Header.Get("Authorization"), "AWS4-HMAC-SHA256 "); ok {
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(f), "Credential="); ok {
				if scope := strings.Split(v, "/"); len(scope) == 5 && awsRegion.MatchString(scope[2]) {
					return scope[2], scope[3]
				}
			}
		}
	}
	labels := strings.Split(hostOnly(req.Host), ".")
	for i := 1; i < len(labels); i++ {
		if awsRegion.MatchString(labels[i]) {
			return labels[i], labels[i-1]
		}
	}
	return "", ""
}

func isSHA256Hex(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == sha256.Size
}

// credential is the session's credential for target, issued on first
// use; a failure is audited and answered 502 naming the target.
func (g httpGuard) credential(ctx context.Context, u *upstream, target string) (protocol.Credential, error) {
	cred, err := u.Credential(ctx, protocol.CredentialRequest{})
	if err != nil {
		t := u.c.target
		g.p.record(auditCredentialFailed(g.p, u, t, err))
		return cred, &http.Refusal{Status: nethttp.StatusBadGateway,
			Message: fmt.Sprintf("the credential for target %s could not be issued", target)}
	}
	return cred, nil
}
