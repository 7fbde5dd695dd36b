package sqlclass

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

const typicalQuery = "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.created_at > $1 ORDER BY o.id LIMIT 50"

// BenchmarkParse measures an uncached parse and classification of a typical
// SELECT (the summary fast path), reporting p50 and p99 from per-call
// timings.
func BenchmarkParse(b *testing.B) {
	samples := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		if _, err := (Postgres{}).Classify(typicalQuery); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(t0))
	}
	reportPercentiles(b, samples)
}

// BenchmarkParseFull measures an uncached statement that needs the full
// parse tree (anything but a plain SELECT).
func BenchmarkParseFull(b *testing.B) {
	const q = "UPDATE orders SET status = $1, updated_at = now() WHERE id = $2 AND customer_id IN (SELECT id FROM customers WHERE region = $3)"
	samples := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		if _, err := (Postgres{}).Classify(q); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(t0))
	}
	reportPercentiles(b, samples)
}

// BenchmarkCachedExact measures a cache hit on identical text.
func BenchmarkCachedExact(b *testing.B) {
	c := NewClassifier(Postgres{}, 4096)
	c.Classify(typicalQuery)
	samples := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		c.Classify(typicalQuery)
		samples = append(samples, time.Since(t0))
	}
	reportPercentiles(b, samples)
}

// BenchmarkCachedShape measures a cache hit for a statement that differs
// from the cached one only in its literals (pgbench -S style traffic).
func BenchmarkCachedShape(b *testing.B) {
	c := NewClassifier(Postgres{}, 4096)
	c.Classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
	texts := make([]string, 1024)
	for i := range texts {
		texts[i] = fmt.Sprintf("SELECT abalance FROM pgbench_accounts WHERE aid = %d", i*7919+13)
	}
	samples := make([]time.Duration, 0, b.N)
	i := 0
	for b.Loop() {
		t0 := time.Now()
		c.Classify(texts[i&1023])
		samples = append(samples, time.Since(t0))
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
