package approvals

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/decoders/transcript"
)

// webhookQueue bounds messages waiting for delivery. When the endpoint is
// down long enough to fill it, new messages are dropped (and logged): a
// held session must never wait on a chat service.
const webhookQueue = 256

// notifier delivers Slack-compatible webhook messages from one goroutine,
// retrying each with exponential backoff a bounded number of times.
type notifier struct {
	url      string
	client   *http.Client
	attempts int
	backoff  time.Duration
	log      zerolog.Logger
	queue    chan string
	ctx      context.Context // ends in-flight requests and backoff waits when close gives up
	stop     context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex // orders post against close
	closed   bool
}

func newNotifier(cfg Config, log zerolog.Logger) *notifier {
	n := &notifier{url: cfg.Webhook, client: cfg.HTTPClient, attempts: cfg.WebhookAttempts,
		backoff: cfg.WebhookBackoff, log: log, done: make(chan struct{})}
	if n.url == "" {
		close(n.done)
		return n
	}
	if n.client == nil {
		n.client = &http.Client{Timeout: 10 * time.Second}
	}
	if n.attempts <= 0 {
		n.attempts = 6
	}
	if n.backoff <= 0 {
		n.backoff = 500 * time.Millisecond
	}
	n.queue = make(chan string, webhookQueue)
	n.ctx, n.stop = context.WithCancel(context.Background())
	go n.run()
	return n
}

// post queues text without blocking.
func (n *notifier) post(text string) {
	if n.queue == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	select {
	case n.queue <- text:
	default:
		n.log.Warn().Str("event", "webhook_dropped").Msg("webhook queue full; message dropped")
	}
}

// close lets queued messages go out until ctx ends, then stops. Messages
// posted after close are dropped.
func (n *notifier) close(ctx context.Context) error {
	if n.queue == nil {
		return nil
	}
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.queue)
	}
	n.mu.Unlock()
	select {
	case <-n.done:
		return nil
	case <-ctx.Done():
		n.stop()
		<-n.done
		return fmt.Errorf("flush webhook messages: %w", ctx.Err())
	}
}

func (n *notifier) run() {
	defer close(n.done)
	defer n.stop()
	for text := range n.queue {
		if n.ctx.Err() != nil {
			continue // close gave up: drain without sending
		}
		if err := n.deliver(text); err != nil {
			n.log.Warn().Err(err).Str("event", "webhook_failed").Msg("webhook message not delivered")
		}
	}
}

// deliver POSTs one message, retrying network errors, 429 and 5xx answers
// with exponential backoff (capped at 30s between tries); other answers are
// final.
func (n *notifier) deliver(text string) error {
	body, err := json.Marshal(map[string]string{"text": text})
	if err != nil {
		return fmt.Errorf("encode webhook message: %w", err)
	}
	delay := n.backoff
	for attempt := 1; ; attempt++ {
		retry, err := n.send(body)
		if err == nil {
			return nil
		}
		if !retry || attempt == n.attempts {
			return fmt.Errorf("post webhook (attempt %d of %d): %w", attempt, n.attempts, err)
		}
		select {
		case <-time.After(delay):
		case <-n.ctx.Done():
			return fmt.Errorf("post webhook: stopped after %d attempts: %w", attempt, err)
		}
		delay = min(delay*2, 30*time.Second)
	}
}

func (n *notifier) send(body []byte) (retry bool, err error) {
	req, err := http.NewRequestWithContext(n.ctx, http.MethodPost, n.url, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.client.Do(req)
	if err != nil {
		return true, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode/100 == 2:
		return false, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("answer %s", resp.Status)
	}
	return false, fmt.Errorf("answer %s", resp.Status)
}

// heldText is the webhook message for a new hold. It quotes the redacted
// statement: chat services are outside the trust boundary.
func heldText(a store.Approval, stmt audit.Statement, webURL string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Interlock: request held for approval %s on %s\n", a.ID, a.Host)
	fmt.Fprintf(&b, "identity %s (pid %d, %s) -> target %s, rule %s\n", a.Identity, a.PID, chatText(a.Exe), a.Target, a.Rule)
	fmt.Fprintf(&b, "statement: %s\n", chatText(stmt.String()))
	fmt.Fprintf(&b, "reviewers: %s (quorum %d), denied if undecided by %s\n",
		strings.Join(a.Reviewers, ", "), a.Quorum, a.Deadline.Format(time.RFC3339))
	fmt.Fprintf(&b, "decide: interlock approve %s | interlock deny %s", a.ID, a.ID)
	if webURL != "" {
		fmt.Fprintf(&b, " | %s", webURL)
	}
	return b.String()
}

// decidedText is the webhook message for a final state.
func decidedText(a store.Approval, via string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Interlock: approval %s %s (identity %s, target %s, rule %s)", a.ID, a.State, a.Identity, a.Target, a.Rule)
	for _, v := range a.Votes {
		verdict := "denied"
		if v.Approve {
			verdict = "approved"
		}
		fmt.Fprintf(&b, "\n%s %s", v.Reviewer, verdict)
		if v.Comment != "" {
			fmt.Fprintf(&b, ": %s", chatText(v.Comment))
		}
	}
	if via != "" {
		fmt.Fprintf(&b, "\n(decided via %s)", via)
	}
	return b.String()
}

// chatText is what an agent or a reviewer chose (a statement, an
// executable's name, a comment) as a chat message must show it: literally,
// on its own line (transcript.Line), with &, < and > as the entities Slack
// asks for. Slack and its kin read <...> as markup: a statement could show
// a harmless label over a link that hid the rest of it, or ping the whole
// channel (<!channel>).
func chatText(s string) string { return chatEscapes.Replace(transcript.Line(s)) }

var chatEscapes = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")
