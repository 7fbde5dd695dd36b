package config

import (
	"github.com/interlock-dev/interlock/decoders/http"
)

// HTTP bounds what one HTTP session may send and what its recording keeps;
// every identity's sessions get the same.
type HTTP struct {
	// MaxHeader caps a request head and an upstream's response head; a
	// larger one is refused.
	MaxHeader Size `yaml:"max_header"`
	// MaxRequestBody caps a request body; a larger one gets 413 and
	// never reaches the upstream whole.
	MaxRequestBody Size `yaml:"max_request_body"`
	// RecordedBody is how much of each request and response body the
	// recording keeps.
	RecordedBody Size `yaml:"recorded_body"`
	// MaxConcurrentStreams bounds the HTTP/2 streams of one connection.
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
}

// DefaultHTTP are the HTTP limits in force without configuration: the
// decoder's own defaults.
func DefaultHTTP() HTTP {
	return HTTP{MaxHeader: http.DefaultMaxHeaderBytes, MaxRequestBody: http.DefaultMaxRequestBody,
		RecordedBody: http.DefaultMaxRecordedBody, MaxConcurrentStreams: http.DefaultMaxConcurrentStreams}
}

// Decoder returns the HTTP decoder these limits configure, choosing its
// targets with target.
func (h HTTP) Decoder(target func(string) (http.Target, error)) *http.Decoder {
	return &http.Decoder{Target: target, MaxHeaderBytes: int(h.MaxHeader), MaxRequestBody: int64(h.MaxRequestBody),
		MaxRecordedBody: int(h.RecordedBody), MaxConcurrentStreams: h.MaxConcurrentStreams}
}

func (h HTTP) validate() error {
	switch {
	case h.MaxHeader < 1<<10 || h.MaxHeader > 16<<20:
		return keyErrorf("http.max_header", "%d bytes: use 1KiB to 16MiB", h.MaxHeader)
	case h.MaxRequestBody < 1:
		return keyErrorf("http.max_request_body", "%d bytes: use at least 1", h.MaxRequestBody)
	case h.RecordedBody < 1 || h.RecordedBody > 64<<20:
		return keyErrorf("http.recorded_body", "%d bytes: use 1 to 64MiB", h.RecordedBody)
	case h.MaxConcurrentStreams < 1 || h.MaxConcurrentStreams > 10000:
		return keyErrorf("http.max_concurrent_streams", "%d: use 1 to 10000", h.MaxConcurrentStreams)
	}
	return nil
}
