package metrics

import (
	"io"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func TestBuildInfoAndCounters(t *testing.T) {
	m := New("1.2.3", "abc123", func() (map[string][2]int, error) { return map[string][2]int{"sock_origin": {3, 1024}}, nil })
	m.RevokeFails.WithLabelValues("pg").Inc()
	m.KernelDenials.WithLabelValues("tcp-rule").Add(2)
	m.DNSQuestions.WithLabelValues("udp", DNSRefused).Inc()
	m.WatchLearned(func() int { return 7 })
	m.WatchRecordings(func() bool { return true })
	body := scrape(t, m)
	for _, want := range []string{
		`interlock_build_info{commit="abc123",`,
		`go_version="` + runtime.Version() + `",version="1.2.3"} 1`,
		`interlock_credential_revoke_failures_total{source="pg"} 1`,
		`interlock_kernel_denials_total{reason="tcp-rule"} 2`,
		`interlock_bpf_map_capacity{map="sock_origin"} 1024`,
		`interlock_dns_questions_total{outcome="refused",transport="udp"} 1`,
		`interlock_dns_learned_addresses 7`,
		`interlock_recordings_stopped 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
