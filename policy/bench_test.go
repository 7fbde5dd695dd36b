package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// hundredRulePolicy builds a policy of 100 rules over 20 identities and 10
// targets in which the request benchmarked matches only rule 96, so Decide
// walks nearly every rule: the worst case for first-match evaluation.
func hundredRulePolicy(tb testing.TB) *Policy {
	var b strings.Builder
	b.WriteString("identities:\n")
	for i := range 20 {
		fmt.Fprintf(&b, "  - {name: id%d, tag: tag%d, uid: [%d, %d]}\n", i, i, 1000+i, 2000+i)
	}
	b.WriteString("targets:\n")
	for i := range 10 {
		fmt.Fprintf(&b, "  - {name: db%d, protocol: postgres, addresses: [10.0.%d.0/24], port: 5432}\n", i, i)
	}
	b.WriteString("masks:\n  - {name: m, columns: {email: partial}, detectors: {pii: partial}}\nrules:\n")
	for i := range 100 {
		id, tg := i%20, i%10
		switch {
		case i == 96:
			b.WriteString("  - {name: r96, identity: [id3, id7], target: db1, sql: {class: [read], only_tables: [orders, \"public.*\"]}, action: mask, mask: m}\n")
		case i%4 == 0:
			fmt.Fprintf(&b, "  - {name: r%d, identity: id%d, target: db%d, sql: {class: [write, ddl]}, action: deny}\n", i, id, tg)
		case i%4 == 1:
			fmt.Fprintf(&b, "  - {name: r%d, identity: id%d, sql: {tables: [secret_%d, \"*_audit\"]}, action: deny}\n", i, id, i)
		case i%4 == 2:
			fmt.Fprintf(&b, "  - {name: r%d, target: db%d, sql: {class: read, functions: [fn_%d]}, action: allow}\n", i, tg, i)
		default:
			fmt.Fprintf(&b, "  - {name: r%d, identity: [id%d, id%d], sql: {destructive: true, command: [DELETE]}, action: deny}\n", i, id, (id+1)%20)
		}
	}
	return mustParse(tb, b.String())
}

const benchQuery = "SELECT o.id, o.total, c.email FROM orders o JOIN public.customers c ON c.id = o.customer_id WHERE o.created_at > $1 ORDER BY o.id LIMIT 50"

// BenchmarkDecide measures Decide on the 100-rule policy with the statement
// already parsed, reporting p50 and p99 from per-call timings.
func BenchmarkDecide(b *testing.B) {
	p := hundredRulePolicy(b)
	q := Classifier("postgres").Classify(benchQuery)
	in := &Input{Subject: &Subject{Tag: "tag3", UID: 1003, Exe: "/usr/bin/psql"}, Target: p.Target("db1"),
		Op: Operation{Kind: OpSQL, SQL: &q.Statements[0]}}
	if d := p.Decide(in); d.Rule != "r96" {
		b.Fatalf("decided by %s, want r96", d.Rule)
	}
	samples := make([]time.Duration, 0, 1<<20)
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		p.Decide(in)
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(t0))
		}
	}
	reportPercentiles(b, samples)
}

// BenchmarkDecideSQLCached measures the whole per-statement path a decoder
// takes for a statement seen before with other literals: parse-cache lookup
// plus Decide on the 100-rule policy.
func BenchmarkDecideSQLCached(b *testing.B) {
	p := hundredRulePolicy(b)
	s, t := &Subject{Tag: "tag3", UID: 1003}, p.Target("db1")
	texts := make([]string, 256)
	for i := range texts {
		texts[i] = fmt.Sprintf("SELECT id, total FROM orders WHERE customer_id = %d AND status = 'open'", i*31+7)
	}
	if d, _ := p.DecideSQL(s, t, texts[0]); d.Rule != "r96" {
		b.Fatalf("decided by %s", d.Rule)
	}
	samples := make([]time.Duration, 0, 1<<20)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		t0 := time.Now()
		p.DecideSQL(s, t, texts[i&255])
		if len(samples) < cap(samples) {
			samples = append(samples, time.Since(t0))
		}
		i++
	}
	reportPercentiles(b, samples)
}

func reportPercentiles(b *testing.B, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(samples[len(samples)*99/100].Nanoseconds()), "p99-ns")
}
