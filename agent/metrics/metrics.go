// Package metrics is interlockd's Prometheus endpoint: connections,
// sessions, decisions, approval waits, credential issue latency and
// revocation failures, kernel denials, proxy latency, DNS questions and
// the addresses their answers taught, how full the kernel maps are and
// which build is running.
package metrics

import (
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the daemon's collectors. Its methods are safe for
// concurrent use and cheap enough for the per-statement path (label values
// come from a bounded set: actions, rule names, protocols).
type Metrics struct {
	reg *prometheus.Registry

	Connections   *prometheus.CounterVec   // by protocol, outcome
	Active        prometheus.Gauge         // connections being served
	Decisions     *prometheus.CounterVec   // by action, rule, mode
	ApprovalWait  *prometheus.HistogramVec // by final state
	CredentialLat *prometheus.HistogramVec // by source, outcome
	RevokeFails   *prometheus.CounterVec   // failed revocation attempts, by source
	KernelDenials *prometheus.CounterVec   // by reason
	DecideLatency prometheus.Histogram     // policy decision per statement
	ConnectSetup  *prometheus.HistogramVec // accept to first byte relayed, by protocol
	DNSQuestions  *prometheus.CounterVec   // by transport, outcome (DNSOutcome)
	AcceptPauses  prometheus.Counter       // proxy listeners' pauses for want of descriptors or memory
}

// The outcomes of DNS questions (DNSQuestions' outcome label).
const (
	// DNSForwarded: a resolver was asked and its answer relayed (in audit
	// mode, also a question the policy would refuse).
	DNSForwarded = "forwarded"
	// DNSRefused: the policy refused the question; no resolver saw it.
	DNSRefused = "refused"
	// DNSMalformed: the message held no question that could be decided.
	DNSMalformed = "malformed"
	// DNSFailed: an allowed question no resolver answered (SERVFAIL).
	DNSFailed = "failed"
)

// New registers the collectors. version and commit are interlockd's for
// interlock_build_info;
// mapFill is called at scrape time and returns entries and capacity per BPF
// map.
func New(version, commit string, mapFill func() (map[string][2]int, error)) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		Connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "interlock_connections_total", Help: "Redirected connections, by protocol and outcome.",
		}, []string{"protocol", "outcome"}),
		Active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "interlock_connections_active", Help: "Connections being served.",
		}),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "interlock_decisions_total", Help: "Policy decisions, by action, rule and mode.",
		}, []string{"action", "rule", "mode"}),
		ApprovalWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "interlock_approval_wait_seconds", Help: "How long held requests waited, by final state.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 14),
		}, []string{"state"}),
		CredentialLat: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "interlock_credential_issue_seconds", Help: "Credential issue latency, by source and outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"source", "outcome"}),
		RevokeFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "interlock_credential_revoke_failures_total",
			Help: "Failed credential revocation attempts (each is retried until it succeeds), by source.",
		}, []string{"source"}),
		KernelDenials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "interlock_kernel_denials_total", Help: "Connects and sockets the kernel programs refused, by reason.",
		}, []string{"reason"}),
		DecideLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "interlock_decision_seconds", Help: "Policy decision latency per request (parse included).",
			Buckets: prometheus.ExponentialBuckets(1e-7, 2, 16),
		}),
		ConnectSetup: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "interlock_session_setup_seconds", Help: "Accept to session ready (handshake, credential, upstream login), by protocol.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"protocol"}),
		DNSQuestions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "interlock_dns_questions_total", Help: "DNS questions of tagged agents, by transport (udp, tcp) and outcome (forwarded, refused, malformed, failed).",
		}, []string{"transport", "outcome"}),
		AcceptPauses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "interlock_accept_pauses_total",
			Help: "Times a proxy listener paused accepting because interlockd or the host was out of descriptors or socket memory.",
		}),
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "interlock_build_info", Help: "Always 1; the labels say which interlockd build is running.",
	}, []string{"version", "commit", "go_version"})
	build.WithLabelValues(version, commit, runtime.Version()).Set(1)
	reg.MustRegister(m.Connections, m.Active, m.Decisions, m.ApprovalWait, m.CredentialLat, m.RevokeFails,
		m.KernelDenials, m.DecideLatency, m.ConnectSetup, m.DNSQuestions, m.AcceptPauses, build, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &mapCollector{fill: mapFill})
	return m
}

// WatchLearned exports count, called at scrape time, as the number of
// addresses interlockd holds from the DNS answers it relayed (the bounded
// cache that lets targets and intercept entries name hosts). Call it once.
func (m *Metrics) WatchLearned(count func() int) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "interlock_dns_learned_addresses",
		Help: "Addresses held from relayed DNS answers, counted once per target or intercept entry and identity.",
	}, func() float64 { return float64(count()) }))
}

// WatchRecordings exports stopped, called at scrape time, as
// interlock_recordings_stopped: 1 while the recordings' file system is
// under the free space kept on it (recordings.reserve), when decoded
// sessions are refused. Call it once.
func (m *Metrics) WatchRecordings(stopped func() bool) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "interlock_recordings_stopped",
		Help: "1 while the recordings' file system is under its reserve of free space and decoded sessions are refused.",
	}, func() float64 {
		if stopped() {
			return 1
		}
		return 0
	}))
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Since returns the seconds elapsed since t, for Observe.
func Since(t time.Time) float64 { return time.Since(t).Seconds() }

var (
	mapEntries  = prometheus.NewDesc("interlock_bpf_map_entries", "Entries in a BPF map.", []string{"map"}, nil)
	mapCapacity = prometheus.NewDesc("interlock_bpf_map_capacity", "Capacity of a BPF map.", []string{"map"}, nil)
)

// mapCollector reads map fill at scrape time rather than polling it.
type mapCollector struct {
	fill func() (map[string][2]int, error)
}

func (c *mapCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- mapEntries
	ch <- mapCapacity
}

func (c *mapCollector) Collect(ch chan<- prometheus.Metric) {
	if c.fill == nil {
		return
	}
	fill, err := c.fill()
	if err != nil {
		return
	}
	for name, v := range fill {
		ch <- prometheus.MustNewConstMetric(mapEntries, prometheus.GaugeValue, float64(v[0]), name)
		ch <- prometheus.MustNewConstMetric(mapCapacity, prometheus.GaugeValue, float64(v[1]), name)
	}
}
