package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/interlock-dev/interlock/agent/control"
)

// replayPolicy lets the identity ci read and denies destructive statements;
// everything else falls to default-deny.
const replayPolicy = `
identities:
  - name: ci
  - name: reporter
    mode: audit
targets:
  - name: db
    protocol: postgres
    addresses: [0.0.0.0/0, "::/0"]
rules:
  - name: reads
    identity: [ci, reporter]
    sql: {class: [read]}
    action: allow
  - name: no-destruction
    identity: [ci, reporter]
    sql: {destructive: true}
    action: deny
  - name: writes
    identity: [ci]
    sql: {class: [write, ddl]}
    action: allow
`

// stricterPolicy no longer lets ci write or create, and holds DELETEs of
// audit_log for a reviewer.
const stricterPolicy = `
identities:
  - name: ci
targets:
  - name: db
    protocol: postgres
    addresses: [127.0.0.1]
    port: 5432
  - name: api
    protocol: http
    hosts: [api.example.com]
    port: 443
    tls: intercept
  - name: web
    protocol: ssh
    addresses: [10.0.0.8]
    port: 22
    known_hosts: /dev/null
masks:
  - name: pii
    columns: {email: redact}
rules:
  - name: customers-masked
    identity: [ci]
    sql: {class: [read], tables: [customers]}
    action: mask
    mask: pii
  - name: reads
    identity: [ci]
    sql: {class: [read]}
    action: allow
  - name: audit-log-deletes
    identity: [ci]
    sql: {command: [DELETE], tables: [audit_log]}
    action: approve
    approve: {reviewers: [alice]}
  - name: no-writes
    identity: [ci]
    sql: {class: [write]}
    action: deny
    message: ci is read-only now
  - name: ticketed-deletes
    identity: [ci]
    target: api
    http: {methods: [DELETE], headers: [X-Change-Ticket]}
    action: allow
  - name: api-reads
    identity: [ci]
    target: api
    http: {methods: [GET]}
    action: allow
  - name: no-rm
    identity: [ci]
    target: web
    ssh: {exec: ["rm *"]}
    action: deny
  - name: inspect
    identity: [ci]
    target: web
    ssh: {exec: ["uptime", "ls *"]}
    action: allow
`

func writePolicy(t *testing.T, src string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(f, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// corpusRoot is the shared capture corpus beside the repository.
func corpusRoot(t *testing.T) string {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(here), "..", "..", "..", "shared", "corpus", "pcap")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("shared capture corpus: %v (it must be checked out beside the repository)", err)
	}
	return dir
}

func runReplay(t *testing.T, c *control.Client, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	sock := filepath.Join(t.TempDir(), "none.sock")
	if c != nil {
		sock = c.Socket
	}
	code := run(append([]string{"--socket", sock, "policy", "replay"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// jsonLines decodes --json output into requests and stream reports.
func jsonLines(t *testing.T, out string) ([]replayedRequest, []replayedStream) {
	t.Helper()
	var reqs []replayedRequest
	var streams []replayedStream
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var kind struct{ Type string }
		if err := json.Unmarshal(sc.Bytes(), &kind); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		switch kind.Type {
		case "request":
			var r replayedRequest
			json.Unmarshal(sc.Bytes(), &r)
			reqs = append(reqs, r)
		case "stream":
			var s replayedStream
			json.Unmarshal(sc.Bytes(), &s)
			streams = append(streams, s)
		default:
			t.Fatalf("line of unknown type: %q", sc.Text())
		}
	}
	return reqs, streams
}

func readQueries(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var s string
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, s)
	}
	return out
}

// wantStatus is the report expected for the one stream of a capture whose
// stream is not simply decoded.
var wantStatus = map[string]string{
	"postgresql/bad-startup-message-1.pcap": "malformed",
	"postgresql/mysql-on-port-5432.pcap":    "malformed",
	"postgresql/psql-aws-ssl-require.pcap":  "encrypted",
}

// wantHTTPRequests is how many requests some HTTP captures of the corpus
// hold.
var wantHTTPRequests = map[string]int{
	"http/pipelined-requests.pcap": 5,
	"http/post.pcap":               1,
	"http/multipart.pcap":          1,
	"http/x-gzip.pcap":             1,
}

// TestReplayCorpus replays every capture of the shared corpus: PostgreSQL
// captures print exactly the queries of their .queries.jsonl, each decided;
// HTTP captures their requests in clear, each decided; MySQL and Redis
// captures report unsupported streams; all exit 0.
func TestReplayCorpus(t *testing.T) {
	root := corpusRoot(t)
	pol := writePolicy(t, replayPolicy)
	var captures []string
	for _, pattern := range []string{"*/*.pcap", "*/*.pcapng"} {
		m, _ := filepath.Glob(filepath.Join(root, pattern))
		captures = append(captures, m...)
	}
	seen := map[string]int{}
	for _, path := range captures {
		rel, _ := filepath.Rel(root, path)
		proto := filepath.Dir(rel)
		seen[proto]++
		t.Run(rel, func(t *testing.T) {
			code, out, errOut := runReplay(t, nil, "--policy", pol, "--pcap", path, "--identity", "ci", "--json")
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			reqs, streams := jsonLines(t, out)
			if len(streams) == 0 {
				t.Fatal("no stream reported")
			}
			switch proto {
			case "postgresql":
				want := readQueries(t, path+".queries.jsonl")
				var got []string
				for _, r := range reqs {
					got = append(got, r.SQL)
					if r.Action == "" || r.Rule == "" || r.Target != "db" || r.Protocol != "postgres" || r.Identity != "ci" {
						t.Errorf("request not fully decided: %+v", r)
					}
				}
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("queries:\n got %q\nwant %q", got, want)
				}
				status := "decoded"
				if s, ok := wantStatus[rel]; ok {
					status = s
				}
				for _, s := range streams {
					if s.Status != status && s.Status != "empty" {
						t.Errorf("stream %s: status %s (%s), want %s", s.Stream, s.Status, s.Error, status)
					}
				}
			case "http":
				// Requests in clear are decided (for a policy with no http
				// target: default-deny), or refused by interlockd before
				// any rule ("OPTIONS *", a path in no canonical form); the
				// corpus's deliberately broken requests end their stream
				// as malformed, and streams on other ports stay unsupported.
				for _, r := range reqs {
					if r.HTTP == "" || r.Protocol != "http" || (r.Rule != "default-deny" && r.Rule != refusedRule) {
						t.Errorf("request not fully decided: %+v", r)
					}
				}
				for _, s := range streams {
					if s.Status == "encrypted" {
						t.Errorf("stream %s: status %s (%s)", s.Stream, s.Status, s.Error)
					}
				}
				if n, ok := wantHTTPRequests[rel]; ok && len(reqs) != n {
					t.Errorf("%d requests, want %d", len(reqs), n)
				}
			default:
				if len(reqs) > 0 {
					t.Errorf("%d requests decoded from a %s capture", len(reqs), proto)
				}
				for _, s := range streams {
					if s.Status != "unsupported" && s.Status != "empty" {
						t.Errorf("stream %s: status %s, want unsupported", s.Stream, s.Status)
					}
				}
			}
		})
	}
	for _, proto := range []string{"postgresql", "mysql", "redis"} {
		if seen[proto] == 0 {
			t.Errorf("no %s captures in %s", proto, root)
		}
	}
}

// Every statement of a capture gets its own rule, as the daemon would give.
func TestReplayCaptureDecisions(t *testing.T) {
	path := filepath.Join(corpusRoot(t), "postgresql", "psql-create-insert-select-delete-drop.pcap")
	pol := writePolicy(t, replayPolicy)
	code, out, errOut := runReplay(t, nil, "--policy", pol, "--pcap", path, "--identity", "ci", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	reqs, _ := jsonLines(t, out)
	var got []string
	for _, r := range reqs {
		got = append(got, r.Verdict+" by "+r.Rule)
	}
	want := []string{
		"deny by no-destruction", // DROP TABLE IF EXISTS
		"allow by writes",        // CREATE TABLE
		"allow by writes",        // INSERT
		"allow by writes",        // INSERT
		"allow by reads",         // SELECT
		"deny by no-destruction", // DELETE without WHERE
		"deny by no-destruction", // DROP TABLE
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("decisions:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := 1; i < len(reqs); i++ {
		if reqs[i].Time.Before(reqs[i-1].Time) {
			t.Errorf("request %d sent before request %d", i, i-1)
		}
	}

	// The text form: one line per request and a summary.
	code, out, _ = runReplay(t, nil, "--policy", pol, "--pcap", path, "--identity", "ci")
	if code != 0 {
		t.Fatalf("text: exit %d", code)
	}
	for _, want := range []string{
		"127.0.0.1:5432 [db] deny by no-destruction: DROP TABLE IF EXISTS t;\n",
		"[db] allow by reads: SELECT * from t;\n",
		"7 requests (allow 4, deny 3) in 1 streams\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
}

// An identity in audit mode gets "would deny" verdicts from replay too.
func TestReplayCaptureAuditMode(t *testing.T) {
	path := filepath.Join(corpusRoot(t), "postgresql", "psql-create-insert-select-delete-drop.pcap")
	pol := writePolicy(t, replayPolicy)
	code, out, _ := runReplay(t, nil, "--policy", pol, "--pcap", path, "--identity", "reporter", "--json")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	reqs, _ := jsonLines(t, out)
	if len(reqs) != 7 {
		t.Fatalf("%d requests, want 7", len(reqs))
	}
	if r := reqs[1]; r.Mode != "audit" || r.Action != "deny" || r.Verdict != "would deny" || r.Rule != "default-deny" {
		t.Errorf("CREATE TABLE as reporter: %+v, want would deny by default-deny in audit mode", r)
	}
	if r := reqs[4]; r.Verdict != "allow" {
		t.Errorf("SELECT as reporter: %+v, want allow", r)
	}
}

// --port-map overrides the port's protocol; --target overrides the address.
func TestReplayCaptureOverrides(t *testing.T) {
	root := corpusRoot(t)
	pol := writePolicy(t, strings.Replace(replayPolicy, "rules:", `  - name: other
    protocol: postgres
    addresses: [192.0.2.1]
rules:`, 1))
	pg := filepath.Join(root, "postgresql", "psql-select-now.pcap")
	code, out, errOut := runReplay(t, nil, "--policy", pol, "--pcap", pg, "--identity", "ci", "--json", "--port-map", "5432=mysql")
	reqs, streams := jsonLines(t, out)
	if code != 0 || len(reqs) != 0 || len(streams) != 1 || streams[0].Status != "unsupported" || streams[0].Protocol != "mysql" {
		t.Errorf("5432=mysql: exit %d, requests %v, streams %+v", code, reqs, streams)
	}
	if !strings.Contains(errOut, "no decoder for mysql") {
		t.Errorf("no warning about the mapping: %q", errOut)
	}
	_, out, _ = runReplay(t, nil, "--policy", pol, "--pcap", pg, "--identity", "ci", "--json", "--target", "other")
	if reqs, _ = jsonLines(t, out); len(reqs) != 1 || reqs[0].Target != "other" || reqs[0].Rule != "reads" {
		t.Errorf("--target other: %+v", reqs)
	}
	// A MySQL capture mapped to postgres is decoded as such: malformed.
	my := filepath.Join(root, "mysql", "mysql.pcap")
	code, out, _ = runReplay(t, nil, "--policy", pol, "--pcap", my, "--json", "--port-map", "3306=postgres")
	if _, streams = jsonLines(t, out); code != 0 || len(streams) != 1 || streams[0].Status != "malformed" {
		t.Errorf("3306=postgres: exit %d, streams %+v", code, streams)
	}
}

// Only an unreadable input, an invalid policy or bad usage make replay fail.
func TestReplayFailures(t *testing.T) {
	pol := writePolicy(t, replayPolicy)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pcap")
	os.WriteFile(garbage, []byte("this is not a capture at all"), 0o600)
	badPolicy := writePolicy(t, "rules: [{name: r, action: alow}]")
	pg := filepath.Join(corpusRoot(t), "postgresql", "psql-select-now.pcap")
	for _, c := range []struct {
		name      string
		args      []string
		code      int
		errSubstr string
	}{
		{"missing capture", []string{"--policy", pol, "--pcap", filepath.Join(dir, "none.pcap")}, 1, "open capture"},
		{"not a capture", []string{"--policy", pol, "--pcap", garbage}, 1, "read pcap"},
		{"invalid policy", []string{"--policy", badPolicy, "--pcap", pg}, 1, `action "alow"`},
		{"unknown identity", []string{"--policy", pol, "--pcap", pg, "--identity", "ghost"}, 1, `no identity "ghost"`},
		{"unknown target", []string{"--policy", pol, "--pcap", pg, "--target", "ghost"}, 1, `no target "ghost"`},
		{"no policy", []string{"--pcap", pg}, 2, "give --policy"},
		{"two sources", []string{"--policy", pol, "--pcap", pg, "--session", "s1"}, 2, "one of"},
		{"bad port map", []string{"--policy", pol, "--pcap", pg, "--port-map", "x=postgres"}, 2, "PORT=PROTOCOL"},
		{"bad since", []string{"--policy", pol, "--since", "yesterday"}, 2, "--since"},
	} {
		code, _, errOut := runReplay(t, nil, c.args...)
		if code != c.code || !strings.Contains(errOut, c.errSubstr) {
			t.Errorf("%s: exit %d (want %d), stderr %q (want %q)", c.name, code, c.code, errOut, c.errSubstr)
		}
	}
}

// recordedSessions is what GET /v1/decisions answers for two sessions of
// ci against the db target under the old, permissive policy.
func recordedSessions() []control.SessionDecisions {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	sess := func(id string) control.Session {
		return control.Session{ID: id, Host: "host-1", Identity: "ci", PID: 4242, UID: 1000, Exe: "/usr/bin/psql",
			Cgroup: "/interlock/ci-job", Target: "db", Protocol: "postgresql", ClientAddr: "127.0.0.1:40190",
			UpstreamAddr: "127.0.0.1:5432", Started: t0, Ended: t0.Add(time.Minute), Outcome: "closed"}
	}
	dec := func(id string, seq int64, stmt, action, rule string, enforced bool) control.Decision {
		return control.Decision{SessionID: id, Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second), Action: action,
			Rule: rule, Enforced: enforced, Statement: stmt}
	}
	return []control.SessionDecisions{
		{Session: sess("s-1"), Decisions: []control.Decision{
			dec("s-1", 3, "SELECT id FROM orders", "allow", "reads", true),
			dec("s-1", 5, "INSERT INTO orders VALUES (1)", "allow", "writes", true),
			dec("s-1", 7, "SELECT email FROM customers", "allow", "reads", true),
			dec("s-1", 9, "DROP TABLE orders", "deny", "no-destruction", true),
			dec("s-1", 10, "SELECT * FROM secrets", "deny", "no-secrets", true),
			dec("s-1", 11, "connect", "allow", "reads", true),
		}},
		{Session: sess("s-2"), Decisions: []control.Decision{
			dec("s-2", 3, "UPDATE orders SET n = 2 WHERE id = 1", "allow", "writes", false),
			dec("s-2", 5, "DELETE FROM audit_log WHERE id = 3", "allow", "writes", true),
			dec("s-2", 7, "SELECT 1", "allow", "reads", true),
			dec("s-2", 9, "INSERT INTO orders VALUES (2)", "deny", "identity-revoked", true),
		}},
		{Session: other("s-3", "http", "api", "10.0.0.7:443"), Decisions: []control.Decision{
			op(dec("s-3", 1, "/v1/orders", "allow", "api", true), "DELETE"),
			op(dec("s-3", 3, "/v1/orders/2", "allow", "api", true), "DELETE"),
			op(dec("s-3", 5, "/v1/orders/3", "allow", "api", true), "DELETE"),
		}, Requests: []control.HTTPRequest{
			{Seq: 1, Method: "DELETE", Host: "api.example.com", URI: "/v1/orders"},
			{Seq: 3, Method: "DELETE", Host: "api.example.com", URI: "/v1/orders/2",
				Header: map[string][]string{"X-Change-Ticket": {"CHG-7"}}},
			// seq 5's head is not in the recording
		}},
		{Session: other("s-4", "ssh", "web", "10.0.0.8:22"), Decisions: []control.Decision{
			op(dec("s-4", 2, "rm -rf /srv/app", "allow", "admin", true), "exec"),
			op(dec("s-4", 4, "uptime", "allow", "admin", true), "exec"),
			op(dec("s-4", 6, "", "allow", "admin", true), "shell"),
			dec("s-4", 8, "ls /srv", "allow", "admin", true), // decided before ops were kept
		}},
		{Session: other("s-5", "redis", "cache", "10.0.0.9:6379"), Decisions: []control.Decision{
			dec("s-5", 1, "FLUSHALL", "allow", "cache", true),
		}},
	}
}

// other is a session of ci of another protocol than PostgreSQL.
func other(id, protocol, target, upstream string) control.Session {
	return control.Session{ID: id, Host: "host-1", Identity: "ci", PID: 4243, UID: 1000, Exe: "/usr/bin/agent",
		Cgroup: "/interlock/ci-job", Target: target, Protocol: protocol, ClientAddr: "127.0.0.1:40191",
		UpstreamAddr: upstream, Outcome: "closed"}
}

// op sets the operation a recorded decision was made as.
func op(d control.Decision, op string) control.Decision {
	d.Op = op
	return d
}

// stubDaemon serves GET /v1/decisions on a unix socket as interlockd does
// and records the queries it was asked.
func stubDaemon(t *testing.T, answer []control.SessionDecisions) (*control.Client, func() []string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "interlock.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var queries []string
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/decisions", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		queries = append(queries, r.URL.RawQuery)
		mu.Unlock()
		if r.URL.Query().Get("session") == "missing" {
			control.WriteError(w, http.StatusNotFound, "session missing: no such session")
			return
		}
		control.WriteJSON(w, http.StatusOK, answer)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return control.NewClient(sock), func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), queries...)
	}
}

// Replaying recorded sessions under a stricter policy lists exactly the
// statements whose action changes.
func TestReplaySessions(t *testing.T) {
	c, asked := stubDaemon(t, recordedSessions())
	pol := writePolicy(t, stricterPolicy)
	code, out, errOut := runReplay(t, c, "--policy", pol, "--since", "1d", "--identity", "ci", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, note := range []string{
		"note: 1 sessions of other protocols skipped",
		"note: 1 requests not re-decided: the request's head is not in its session's recording",
		"note: 1 requests not re-decided: decided before interlockd kept an SSH request's kind",
	} {
		if !strings.Contains(errOut, note) {
			t.Errorf("stderr lacks %q: %q", note, errOut)
		}
	}
	if q := asked(); len(q) != 1 || q[0] != "identity=ci&since=24h0m0s" {
		t.Errorf("daemon asked %q", q)
	}
	var got []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var ch changedDecision
		if err := json.Unmarshal(sc.Bytes(), &ch); err != nil {
			t.Fatal(err)
		}
		got = append(got, ch.Change+" "+ch.Session+" "+strings.TrimSpace(ch.Op+" "+ch.Statement)+": "+ch.OldAction+"/"+ch.OldRule+" -> "+ch.NewAction+"/"+ch.NewRule)
	}
	want := []string{
		"newly denied s-1 INSERT INTO orders VALUES (1): allow/writes -> deny/no-writes",
		"newly masked s-1 SELECT email FROM customers: allow/reads -> mask/customers-masked",
		"newly allowed s-1 SELECT * FROM secrets: deny/no-secrets -> allow/reads",
		"newly denied s-2 UPDATE orders SET n = 2 WHERE id = 1: allow/writes -> deny/no-writes",
		"newly held s-2 DELETE FROM audit_log WHERE id = 3: allow/writes -> approve/audit-log-deletes",
		// Decided on the recorded head: the second DELETE carries a ticket.
		"newly denied s-3 DELETE /v1/orders: allow/api -> deny/default-deny",
		"newly denied s-4 exec rm -rf /srv/app: allow/admin -> deny/no-rm",
		"newly denied s-4 shell: allow/admin -> deny/default-deny",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("changes:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestReplaySessionsText(t *testing.T) {
	c, asked := stubDaemon(t, recordedSessions()[1:])
	pol := writePolicy(t, stricterPolicy)
	code, out, errOut := runReplay(t, c, "--policy", pol, "--session", "s-2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if q := asked(); len(q) != 1 || q[0] != "session=s-2" {
		t.Errorf("daemon asked %q", q)
	}
	want := "newly denied: session s-2 seq 3 (ci -> db): allow (audit) by writes -> deny by no-writes: UPDATE orders SET n = 2 WHERE id = 1\n" +
		"newly held: session s-2 seq 5 (ci -> db): allow by writes -> approve by audit-log-deletes: DELETE FROM audit_log WHERE id = 3\n" +
		"newly denied: session s-3 seq 1 (ci -> api): allow by api -> deny by default-deny: DELETE /v1/orders\n" +
		"newly denied: session s-4 seq 2 (ci -> web): allow by admin -> deny by no-rm: exec rm -rf /srv/app\n" +
		"newly denied: session s-4 seq 6 (ci -> web): allow by admin -> deny by default-deny: shell\n" +
		"8 statements in 3 sessions re-decided: 5 would change (newly denied 4, newly held 1), 2 keep their action under another rule\n" +
		"1 sessions of other protocols skipped: replay re-decides SQL, HTTP and SSH requests\n" +
		"1 requests not re-decided: decided before interlockd kept an SSH request's kind (exec, shell, sftp) with its decision\n" +
		"1 requests not re-decided: the request's head is not in its session's recording\n"
	if out != want {
		t.Errorf("output:\n%s\nwant\n%s", out, want)
	}

	// A daemon error is reported and fails the command.
	code, _, errOut = runReplay(t, c, "--policy", pol, "--session", "missing")
	if code != 1 || !strings.Contains(errOut, "no such session") {
		t.Errorf("missing session: exit %d, stderr %q", code, errOut)
	}
	// No daemon at all.
	code, _, errOut = runReplay(t, control.NewClient(filepath.Join(t.TempDir(), "none.sock")), "--policy", pol, "--session", "s-2")
	if code != 1 || !strings.Contains(errOut, "not running") {
		t.Errorf("no daemon: exit %d, stderr %q", code, errOut)
	}
}

// explain says what an audited identity's request would get.
func TestPolicyExplainAuditMode(t *testing.T) {
	pol := writePolicy(t, replayPolicy)
	code, out, errOut := runPolicyCmd("explain", "--policy", pol, "--identity", "reporter", "--target", "db", "--sql", "DROP TABLE t")
	if code != 0 || !strings.Contains(out, "decision:  would deny by rule no-destruction (audit mode: the agent is not blocked)\n") {
		t.Errorf("explain as reporter: exit %d, out %q, err %q", code, out, errOut)
	}
	code, out, _ = runPolicyCmd("explain", "--policy", pol, "--identity", "ci", "--target", "db", "--sql", "DROP TABLE t", "--json")
	var ex explanation
	if err := json.Unmarshal([]byte(out), &ex); code != 0 || err != nil || ex.Mode != "enforce" || ex.Verdict != "deny" || ex.Rule != "no-destruction" {
		t.Errorf("explain --json as ci: exit %d, %+v, %v", code, ex, err)
	}
}

// synthConn builds the packets of one TCP connection of a synthetic
// capture, tracking sequence numbers per direction.
type synthConn struct {
	client, server       netip.AddrPort
	clientSeq, serverSeq uint32
}

type synthPacket struct {
	at   time.Duration
	data []byte
}

func (c *synthConn) packet(t *testing.T, at time.Duration, fromClient, syn, ack bool, payload []byte) synthPacket {
	t.Helper()
	src, dst, seq := c.client, c.server, &c.clientSeq
	if !fromClient {
		src, dst, seq = c.server, c.client, &c.serverSeq
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: *seq, SYN: syn, ACK: ack, PSH: len(payload) > 0, Window: 65535}
	tcp.SetNetworkLayerForChecksum(ip)
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	*seq += uint32(len(payload))
	if syn {
		*seq++
	}
	return synthPacket{at, buf.Bytes()}
}

// writePcapng writes pkts, timed from start, as a pcapng file in a test
// directory and returns its path.
func writePcapng(t *testing.T, name string, start time.Time, pkts []synthPacket) string {
	t.Helper()
	var out bytes.Buffer
	w, err := pcapgo.NewNgWriter(&out, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: start.Add(p.at), CaptureLength: len(p.data), Length: len(p.data)}, p.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func pgMessage(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
	return append(b, body...)
}

func pgStartup(user string) []byte {
	body := "\x00\x03\x00\x00user\x00" + user + "\x00\x00"
	b := make([]byte, 4, 4+len(body))
	binary.BigEndian.PutUint32(b, uint32(4+len(body)))
	return append(b, body...)
}

// A capture of PostgreSQL on ports replay has never heard of, one connection
// from its SYN and one that began mid-session, interleaved with a stream of
// something else: both PostgreSQL streams are recognised, their queries
// come out in the order they were sent, and the rest is reported.
func TestReplayCaptureUnknownPorts(t *testing.T) {
	a := &synthConn{client: netip.MustParseAddrPort("10.0.0.1:40001"), server: netip.MustParseAddrPort("10.0.0.9:6543"), clientSeq: 1000, serverSeq: 5000}
	b := &synthConn{client: netip.MustParseAddrPort("10.0.0.1:40002"), server: netip.MustParseAddrPort("10.0.0.9:7777"), clientSeq: 2000, serverSeq: 7000}
	c := &synthConn{client: netip.MustParseAddrPort("10.0.0.1:40003"), server: netip.MustParseAddrPort("10.0.0.9:9999"), clientSeq: 3000, serverSeq: 9000}
	ready := pgMessage('Z', "I")
	ms := time.Millisecond
	pkts := []synthPacket{
		a.packet(t, 0*ms, true, true, false, nil),
		a.packet(t, 1*ms, false, true, true, nil),
		a.packet(t, 2*ms, true, false, true, nil),
		a.packet(t, 10*ms, true, false, true, pgStartup("ci")),
		a.packet(t, 11*ms, false, false, true, append(pgMessage('R', "\x00\x00\x00\x00"), ready...)),
		a.packet(t, 20*ms, true, false, true, pgMessage('Q', "SELECT 1\x00")),
		a.packet(t, 21*ms, false, false, true, ready),
		b.packet(t, 30*ms, true, false, true, pgMessage('Q', "SELECT 2\x00")),
		b.packet(t, 31*ms, false, false, true, ready),
		c.packet(t, 35*ms, true, false, true, []byte("HELLO there\r\n")),
		a.packet(t, 40*ms, true, false, true, pgMessage('Q', "DELETE FROM t\x00")),
		a.packet(t, 41*ms, false, false, true, ready),
		b.packet(t, 50*ms, true, false, true, []byte("\x01garbage that is no message")),
	}
	path := writePcapng(t, "odd-ports.pcapng", time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC), pkts)
	pol := writePolicy(t, replayPolicy)
	code, stdout, errOut := runReplay(t, nil, "--policy", pol, "--pcap", path, "--identity", "ci", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	reqs, streams := jsonLines(t, stdout)
	var got []string
	for _, r := range reqs {
		got = append(got, r.SQL+" "+r.Verdict+" by "+r.Rule)
	}
	want := []string{"SELECT 1 allow by reads", "SELECT 2 allow by reads", "DELETE FROM t deny by no-destruction"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	status := map[string]string{}
	for _, s := range streams {
		status[s.Stream] = s.Status + " " + s.Protocol
	}
	for stream, want := range map[string]string{
		"10.0.0.1:40001 -> 10.0.0.9:6543": "decoded postgres",
		"10.0.0.1:40002 -> 10.0.0.9:7777": "malformed postgres",
		"10.0.0.1:40003 -> 10.0.0.9:9999": "unsupported ",
	} {
		if status[stream] != want {
			t.Errorf("stream %s: %q, want %q (all: %v)", stream, status[stream], want, status)
		}
	}
}
