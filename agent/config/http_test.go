package config

import (
	"strings"
	"testing"

	"github.com/interlock-dev/interlock/decoders/http"
)

// TestHTTPLimits: the http block sets the decoder's caps, keys left out
// keep the decoder's defaults, and a cap that cannot work is refused by
// key.
func TestHTTPLimits(t *testing.T) {
	cfg, err := loadYAML(t, "http: {max_request_body: 10MiB, recorded_body: 1KiB}\n")
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.HTTP.Decoder(nil)
	if d.MaxRequestBody != 10<<20 || d.MaxRecordedBody != 1<<10 || d.MaxHeaderBytes != http.DefaultMaxHeaderBytes ||
		d.MaxConcurrentStreams != http.DefaultMaxConcurrentStreams {
		t.Errorf("decoder: %+v", d)
	}
	if cfg, err := loadYAML(t, "listen_port: 16000\n"); err != nil || cfg.HTTP != DefaultHTTP() {
		t.Errorf("defaults without an http block: %+v, %v", cfg.HTTP, err)
	}
	for name, tc := range map[string]struct{ yaml, err string }{
		"tiny head":       {"http: {max_header: 100}\n", "http.max_header"},
		"no body at all":  {"http: {max_request_body: 0}\n", "http.max_request_body"},
		"nothing kept":    {"http: {recorded_body: 0}\n", "http.recorded_body"},
		"no streams":      {"http: {max_concurrent_streams: 0}\n", "http.max_concurrent_streams"},
		"misspelled key":  {"http: {max_headers: 1MiB}\n", "max_headers"},
		"not a size":      {"http: {max_request_body: big}\n", "not a size"},
		"too many stream": {"http: {max_concurrent_streams: 100000}\n", "1 to 10000"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := loadYAML(t, tc.yaml)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.err)
			}
		})
	}
}
