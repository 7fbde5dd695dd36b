// Package metrics is interlockd's Prometheus endpoint: connections,
// sessions, decisions, approval waits, credential issue latency, proxy
// latency and how full the kernel maps are.
package metrics

import (
	"net/http"
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
	DecideLatency prometheus.Histogram     // policy decision per statement
	ConnectSetup  *prometheus.HistogramVec // accept to first byte relayed, by protocol
}

// New registers the collectors. mapFill is called at scrape time and
// returns entries and capacity per BPF map.
func New(mapFill func() (map[string][2]int, error)) *Metrics {
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
		DecideLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "interlock_decision_seconds", Help: "Policy decision latency per request (parse included).",
			Buckets: prometheus.ExponentialBuckets(1e-7, 2, 16),
		}),
		ConnectSetup: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "interlock_session_setup_seconds", Help: "Accept to session ready (handshake, credential, upstream login), by protocol.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"protocol"}),
	}
	reg.MustRegister(m.Connections, m.Active, m.Decisions, m.ApprovalWait, m.CredentialLat, m.DecideLatency,
		m.ConnectSetup, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&mapCollector{fill: mapFill})
	return m
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
