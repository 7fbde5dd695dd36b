package http

import (
	"io"
	nethttp "net/http"
	"testing"
)

// BenchmarkRequest is one GET on a kept-alive connection: straight to the
// upstream, and through an intercepting session over HTTP/1.1 and HTTP/2
// (TLS on both sides, a decision and a recorded exchange per request).
func BenchmarkRequest(b *testing.B) {
	for _, bc := range []struct {
		name   string
		direct bool
		h2     bool
	}{{"direct", true, false}, {"intercept-h1", false, false}, {"intercept-h2", false, true}} {
		b.Run(bc.name, func(b *testing.B) {
			h := newHarness(b, harnessOpts{mode: Intercept, tls: true})
			c := h.client(true, bc.h2)
			url := "https://example.com/x"
			if bc.direct {
				c = h.up.Client()
				url = h.up.URL + "/x"
			}
			for b.Loop() {
				resp, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != nethttp.StatusOK {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}
