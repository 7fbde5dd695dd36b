package daemon_test

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestLogLines: a decision line has each key once (JSON readers keep the
// last of two "message" keys and lost the reason), carries its SQL without
// literals, and durations name their unit.
func TestLogLines(t *testing.T) {
	f := startPG(t)
	out, err := f.psql(t, "CREATE TABLE leak AS SELECT 'ada@example.com' AS email, 4111 AS card")
	if err == nil || !strings.Contains(out, "no-ddl") {
		t.Fatalf("CREATE TABLE was not denied: err=%v\n%s", err, out)
	}
	ev := waitEvent(t, f.d, "decision", func(m map[string]any) bool { return m["rule"] == "no-ddl" })
	if ev["reason"] != "schema changes are not for agents" {
		t.Errorf("decision reason = %v, want the rule's message under \"reason\"", ev["reason"])
	}
	op, _ := ev["op"].(string)
	if strings.Contains(op, "ada@example.com") || strings.Contains(op, "4111") || !strings.Contains(op, "CREATE TABLE leak") {
		t.Errorf("op = %q, want the statement's shape without its literals", op)
	}
	closed := waitEvent(t, f.d, "connection_close", func(map[string]any) bool { return true })
	if _, ok := closed["duration_ms"].(float64); !ok || closed["duration"] != nil {
		t.Errorf("connection_close: duration_ms = %v, duration = %v; want only duration_ms", closed["duration_ms"], closed["duration"])
	}
	for _, line := range strings.Split(f.d.Logs(), "\n") {
		if strings.HasPrefix(line, "{") {
			if dup := duplicateKey(line); dup != "" {
				t.Errorf("key %q twice in %s", dup, line)
			}
		}
	}
}

// duplicateKey returns a top-level key that appears twice in a JSON object.
func duplicateKey(line string) string {
	dec := json.NewDecoder(strings.NewReader(line))
	if _, err := dec.Token(); err != nil {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := k.(string)
		if seen[key] {
			return key
		}
		seen[key] = true
		var v json.RawMessage
		if dec.Decode(&v) != nil {
			return ""
		}
	}
	return ""
}
