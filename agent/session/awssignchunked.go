package session

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	nethttp "net/http"
	"strconv"
	"time"

	awsv4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/interlock-dev/interlock/decoders/http"
)

// The x-amz-content-sha256 values of aws-chunked uploads this interlockd
// re-signs: with signed chunks, each chunk's signature chained from the
// head's (the seed); with unsigned chunks and a trailing checksum, the
// head alone.
const (
	streamingSigned          = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	streamingUnsignedTrailer = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
)

// chunkSignatureExt is what follows a chunk's hex size on its header line;
// the signature after it is 64 hex digits.
const chunkSignatureExt = ";chunk-signature="

// maxChunkLine caps a chunk's header line: 16 hex digits of size, the
// extension and its signature fit with room to spare.
const maxChunkLine = 128

// maxChunk caps one chunk, the unit a re-signed aws-chunked body is held
// in memory by; the SDKs' chunks are far smaller (64 KiB is common).
const maxChunk = maxSignedBody

// chunkResigner is an aws-chunked body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)
// re-signed as it streams: each chunk is read whole (up to maxChunk) and
// handed on with its signature replaced by the next of signer's chain,
// the header line's other bytes as the agent sent them, so the body keeps
// its length (Content-Length and x-amz-decoded-content-length stay
// true). Framing it cannot read is refused with 400 and reported to
// malformed first; other read errors (the agent's connection, a secret
// refused below) pass on as they are. Not safe for concurrent use.
type chunkResigner struct {
	ctx       context.Context
	src       *bufio.Reader
	body      io.Closer
	signer    *awsv4.StreamSigner
	at        time.Time // the head's X-Amz-Date
	malformed func(why string)

	frame bytes.Buffer // the chunk being handed on, re-signed
	final bool         // the zero-length chunk is in frame or gone
	err   error        // sticky: io.EOF after the final chunk
}

func newChunkResigner(ctx context.Context, body io.ReadCloser, signer *awsv4.StreamSigner, at time.Time, malformed func(string)) *chunkResigner {
	return &chunkResigner{ctx: ctx, src: bufio.NewReaderSize(body, 64<<10), body: body, signer: signer, at: at, malformed: malformed}
}

// Read implements io.Reader.
func (r *chunkResigner) Read(p []byte) (int, error) {
	for r.frame.Len() == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.err = r.next()
	}
	return r.frame.Read(p)
}

// Close implements io.Closer.
func (r *chunkResigner) Close() error { return r.body.Close() }

// next reads the next chunk into frame and re-signs it; after the final
// chunk it checks that the body ends there and returns io.EOF.
func (r *chunkResigner) next() error {
	r.frame.Reset()
	if r.final {
		switch _, err := r.src.ReadByte(); {
		case err == nil:
			return r.refuse("data after the final chunk")
		case err != io.EOF:
			return err
		}
		return io.EOF
	}
	line, err := r.src.ReadSlice('\n')
	switch {
	case err == io.EOF:
		return r.refuse("the body ends before its final chunk")
	case errors.Is(err, bufio.ErrBufferFull) || err == nil && len(line) > maxChunkLine:
		return r.refuse(fmt.Sprintf("a chunk header line over %d bytes", maxChunkLine))
	case err != nil:
		return err
	}
	head, crlf := bytes.CutSuffix(line, []byte("\r\n"))
	sizeHex, agentSig, ext := bytes.Cut(head, []byte(chunkSignatureExt))
	size, perr := strconv.ParseUint(string(sizeHex), 16, 64)
	if !crlf || !ext || perr != nil || !isSHA256Hex(string(agentSig)) {
		return r.refuse(fmt.Sprintf("a chunk header line is not HEX-SIZE%sSIGNATURE", chunkSignatureExt))
	}
	if size > maxChunk {
		return r.refuse(fmt.Sprintf("a chunk of %d bytes, over the %d bytes a chunk is re-signed up to", size, maxChunk))
	}
	r.frame.Write(line)
	if _, err := io.CopyN(&r.frame, r.src, int64(size)); err != nil {
		if err == io.EOF {
			return r.refuse("the body ends inside a chunk")
		}
		return err
	}
	var end [2]byte
	if _, err := io.ReadFull(r.src, end[:]); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return r.refuse("the body ends inside a chunk")
		}
		return err
	}
	if string(end[:]) != "\r\n" {
		return r.refuse("a chunk's data is not followed by CRLF")
	}
	r.frame.Write(end[:])
	// A chunk's string to sign is the event stream message's with no
	// headers: sha256("") where those would be hashed.
	b := r.frame.Bytes()
	s, err := r.signer.GetSignature(r.ctx, nil, b[len(line):len(line)+int(size)], r.at)
	if err != nil {
		return fmt.Errorf("sign a chunk: %w", err)
	}
	sigAt := len(sizeHex) + len(chunkSignatureExt)
	hex.Encode(b[sigAt:sigAt+hex.EncodedLen(sha256.Size)], s)
	r.final = size == 0
	return nil
}

// refuse reports why the body is malformed and returns the 400 the agent
// gets.
func (r *chunkResigner) refuse(why string) error {
	r.frame.Reset()
	r.malformed(why)
	return &http.Refusal{Status: nethttp.StatusBadRequest, Message: "malformed aws-chunked body: " + why}
}
