package recording

import (
	"errors"
	"fmt"
	"io"

	"github.com/interlock-dev/interlock/decoders/http"
)

// HTTPRequest is a decided HTTP request read back from its session's
// recording: what the policy decided it on.
type HTTPRequest struct {
	Seq int64
	http.Request
}

// HTTPRequests reads back the requests of an HTTP session's recording
// whose seq decided accepts, in recording order. A decision keeps only the
// request's path as its statement; the method, host and headers a policy
// also decides on are in the request head recorded beside it. A head that
// does not read back is left out: its decision cannot be made again.
func HTTPRequests(rd *Reader, decided func(seq int64) bool) ([]HTTPRequest, error) {
	var out []HTTPRequest
	for {
		fr, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read the recording: %w", err)
		}
		if fr.IsVerdict || !fr.FromClient || fr.Type != http.MsgRequest || !decided(fr.Seq) {
			continue
		}
		if req, err := http.RecordedRequest(fr.Body); err == nil {
			out = append(out, HTTPRequest{Seq: fr.Seq, Request: req})
		}
	}
}
