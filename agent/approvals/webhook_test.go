package approvals

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/store"
)

func openSQLite(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// hookServer is a Slack-like endpoint that answers the first failures
// requests with 503 and records the text of every message it accepts.
type hookServer struct {
	mu       sync.Mutex
	failures int
	requests int
	texts    []string
	got      chan string
}

func (h *hookServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests++
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "want a JSON POST", http.StatusBadRequest)
		return
	}
	if h.failures > 0 {
		h.failures--
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	var msg struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(body, &msg); err != nil || msg.Text == "" {
		http.Error(w, "want {\"text\": ...}", http.StatusBadRequest)
		return
	}
	h.texts = append(h.texts, msg.Text)
	h.got <- msg.Text
	io.WriteString(w, "ok")
}

// A hold and its decision are each delivered once, after retries through
// the endpoint's failures, and the statement's literals stay out of them.
func TestWebhookRetries(t *testing.T) {
	hook := &hookServer{failures: 2, got: make(chan string, 10)}
	srv := httptest.NewServer(hook)
	t.Cleanup(srv.Close)
	s, _ := newService(t, openSQLite(t), "h-hook", func(c *Config) {
		c.Webhook, c.WebhookBackoff, c.WebURL = srv.URL, 10*time.Millisecond, "http://127.0.0.1:15002/"
	})
	ctx := context.Background()
	id, wait, err := s.Hold(ctx, request([]string{"alice"}, 1, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	next := func() string {
		select {
		case m := <-hook.got:
			return m
		case <-time.After(10 * time.Second):
			t.Fatal("webhook message never arrived")
			return ""
		}
	}
	held := next()
	for _, want := range []string{id, "ci-runner", "orders-db", "hold-writes", "UPDATE accounts SET password = ? WHERE id = ?",
		"interlock approve " + id, "http://127.0.0.1:15002/"} {
		if !strings.Contains(held, want) {
			t.Errorf("held message lacks %q:\n%s", want, held)
		}
	}
	done := waitAsync(ctx, wait)
	if _, err := s.Decide(ctx, id, Reviewer{Name: "alice", Via: "web"}, true, "ship it"); err != nil {
		t.Fatal(err)
	}
	receive(t, done)
	decided := next()
	for _, want := range []string{id, "approved", "alice approved: ship it", "via web"} {
		if !strings.Contains(decided, want) {
			t.Errorf("decided message lacks %q:\n%s", want, decided)
		}
	}
	ctxClose, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Close(ctxClose); err != nil {
		t.Fatal(err)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.requests != 4 || len(hook.texts) != 2 {
		t.Fatalf("%d requests, %d messages; want 2 failures + 2 deliveries", hook.requests, len(hook.texts))
	}
	for _, m := range hook.texts {
		if strings.Contains(m, "hunter2") {
			t.Fatalf("webhook carried the statement's literal: %s", m)
		}
	}
}

// A failing endpoint gets a bounded number of attempts per message.
func TestWebhookGivesUp(t *testing.T) {
	hook := &hookServer{failures: 1 << 30, got: make(chan string, 10)}
	srv := httptest.NewServer(hook)
	t.Cleanup(srv.Close)
	s, _ := newService(t, openSQLite(t), "h-hook", func(c *Config) {
		c.Webhook, c.WebhookBackoff, c.WebhookAttempts = srv.URL, time.Millisecond, 3
	})
	if _, _, err := s.Hold(context.Background(), request([]string{"alice"}, 1, time.Minute)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	if hook.requests != 3 {
		t.Fatalf("%d attempts, want 3", hook.requests)
	}
}

// An endpoint that never answers does not hold up Hold or the decision;
// the session is released while the webhook is still stuck.
func TestWebhookNeverBlocks(t *testing.T) {
	arrived, release := make(chan struct{}, 10), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	s, _ := newService(t, openSQLite(t), "h-hook", func(c *Config) { c.Webhook = srv.URL })
	ctx := context.Background()
	id, wait, err := s.Hold(ctx, request([]string{"alice"}, 1, time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	<-arrived // the webhook is now stuck on the held message
	done := waitAsync(ctx, wait)
	if _, err := s.Decide(ctx, id, Reviewer{Name: "alice", Via: "web"}, true, ""); err != nil {
		t.Fatal(err)
	}
	if r := receive(t, done); !r.approved {
		t.Fatalf("wait = %+v", r)
	}
	// Close is bounded too: it gives up on the stuck endpoint.
	ctxClose, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := s.Close(ctxClose); err == nil {
		t.Fatal("Close reported every message delivered")
	}
}

// What an agent chose reaches the chat literally: a quoted identifier
// (kept by the redaction) or an executable's name that Slack would read as
// a mention or a link shows as text, and a line break in it stays on its
// line.
func TestWebhookQuotesTheAgent(t *testing.T) {
	hook := &hookServer{got: make(chan string, 10)}
	srv := httptest.NewServer(hook)
	t.Cleanup(srv.Close)
	s, _ := newService(t, openSQLite(t), "h-hook", func(c *Config) { c.Webhook = srv.URL })
	req := request([]string{"alice"}, 1, time.Minute)
	req.Statement = `SELECT 1 AS "<!channel>", 2 AS "<https://evil.example/|approve here>"`
	req.Exe = "/tmp/<!here>\nreviewers: nobody"
	if _, _, err := s.Hold(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	var held string
	select {
	case held = <-hook.got:
	case <-time.After(10 * time.Second):
		t.Fatal("webhook message never arrived")
	}
	if strings.Contains(held, "<!") || strings.Contains(held, "<https:") || strings.Contains(held, "\nreviewers: nobody") {
		t.Errorf("the agent's markup reached the chat:\n%s", held)
	}
	for _, want := range []string{`"&lt;!channel&gt;"`, `"&lt;https://evil.example/|approve here&gt;"`, `/tmp/&lt;!here&gt;\nreviewers: nobody`} {
		if !strings.Contains(held, want) {
			t.Errorf("held message lacks %q:\n%s", want, held)
		}
	}
}
