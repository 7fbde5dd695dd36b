// Package approvals turns a policy's "approve" action into something people
// can act on: a held request becomes a pending approval in the store, a
// webhook tells reviewers, and reviewers approve or deny it from the CLI
// (the control socket, where the kernel says who is asking) or from a small
// web page (a reviewer token). The held session waits only on its own
// approval; a quorum of distinct reviewers approves, one deny or the timeout
// denies, and the first final decision stands.
//
// Fleet mode needs nothing extra: every daemon sharing a PostgreSQL store
// lists the same queue and can vote on any approval; the holding daemon polls
// its approval's row, so a vote cast on another host releases the session
// within one poll interval.
//
// Who writes what to the audit trail (each host writes its own chain): the
// host where a reviewer votes records the vote and, when the vote decides,
// the final state (an audit.ApprovalDecided whose State is still "pending"
// records a vote that did not reach the quorum); the holding host records the
// hold, and an expiry or cancellation. Statements enter the trail redacted.
package approvals

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/store"
)

// DefaultTimeout applies when a request carries no timeout.
const DefaultTimeout = 5 * time.Minute

// maxComment bounds a reviewer's comment; it is stored and audited.
const maxComment = 1000

var (
	// ErrNotReviewer means the reviewer is not among the users or groups
	// the policy names for this approval.
	ErrNotReviewer = errors.New("not a reviewer of this request")
	// ErrRequester means the reviewer is the requester itself (same uid as
	// the held session's process, or the same user name).
	ErrRequester = errors.New("the requester cannot decide its own request")
	// ErrUnknownRequester means the holding session's uid cannot be found,
	// so a uid-authenticated reviewer cannot be told apart from the
	// requester; the vote is refused rather than guessed.
	ErrUnknownRequester = errors.New("requester's uid is unknown")
	// errComment is a comment longer than maxComment.
	errComment = fmt.Errorf("comment longer than %d bytes", maxComment)
)

// Request is a request the policy holds for approval.
type Request struct {
	Session  string // the store session id of the held connection
	Host     string // empty: the service's host
	Identity string // the kernel-attested identity (tagged cgroup name)
	PID      int
	UID      uint32 // the held process's uid; that user can never decide
	Exe      string
	Target   string
	// Protocol selects how Statement is redacted for the audit trail and
	// the webhook: "postgresql" (or "sql") strips literals, anything else
	// is fingerprinted. Reviewers see the full statement.
	Protocol  string
	Statement string
	Rule      string
	// Reviewers, Quorum and Timeout come from the rule's ApprovalSpec.
	Reviewers []string
	Quorum    int
	Timeout   time.Duration
}

// Reviewer is a person deciding: authenticated by the kernel on the control
// socket (Name is the uid's user name, Groups the process's group names) or
// by a reviewer token on the web page (Name is the token's name).
type Reviewer struct {
	Name   string
	UID    uint32
	HasUID bool // UID is meaningful (control socket, or a token named after a local user)
	Groups []string
	Via    string // "cli" or "web"
}

// Config configures a Service. Store and Host are required.
type Config struct {
	Store *store.Store
	// Audit receives holds and decisions; nil writes no audit records.
	Audit *audit.Log
	// Host names this daemon in approvals and in its audit chain.
	Host string
	// Webhook is a Slack-compatible incoming-webhook URL; empty sends none.
	Webhook string
	// WebURL is where reviewers reach the web page, quoted in webhook
	// messages when set (for example "http://127.0.0.1:15002/").
	WebURL string
	// Tokens are the web page's reviewer tokens.
	Tokens []Token
	// WebHosts are extra Host header values the web page answers to
	// besides loopback addresses and "localhost" (DNS-rebinding guard).
	WebHosts []string
	// WebCaller, when set, is asked about every web request before anything
	// else and refuses it by returning an error; the daemon uses it to
	// refuse TCP peers that run in a tagged cgroup.
	WebCaller func(r *http.Request) error
	// Transcript writes a session's transcript for the web page; nil uses
	// recording.Replay on Store.
	Transcript func(ctx context.Context, sessionID string, w io.Writer) error
	// PollInterval is how often a waiting session reads its approval from
	// the store to see votes cast by other hosts; 0 means 500ms.
	PollInterval time.Duration
	// WebhookAttempts bounds deliveries of one message (0 means 6) and
	// WebhookBackoff is the first retry delay, doubled each retry up to
	// 30s (0 means 500ms).
	WebhookAttempts int
	WebhookBackoff  time.Duration
	// HTTPClient sends webhooks; nil uses a client with a 10s timeout.
	HTTPClient *http.Client
	// Logger receives webhook failures and audit write errors; nil is silent.
	Logger *zerolog.Logger
	// Observe, when set, is called once per held request when its wait
	// ends, with the final state and how long the session was held (for
	// the approval wait-time metric). It must not block.
	Observe func(state store.ApprovalState, held time.Duration)
}

// Token is a web reviewer's credential: whoever presents Secret acts as
// Name, a member of Groups.
type Token struct {
	Name   string   `yaml:"name" json:"name"`
	Secret string   `yaml:"token" json:"-"`
	Groups []string `yaml:"groups" json:"groups,omitempty"`
}

// Service holds requests and records decisions. It is safe for concurrent
// use. Close it to flush pending webhook messages.
type Service struct {
	cfg    Config
	st     *store.Store
	log    zerolog.Logger
	poll   time.Duration
	hook   *notifier
	web    *webAuth
	mu     sync.Mutex
	holds  map[string]*hold // approvals held by this process
	lookup func(uid uint32) string
}

type hold struct {
	uid     uint32
	decided chan struct{} // closed by a local Decide that made the decision final
	once    sync.Once
}

// New returns a Service. It starts the webhook sender when cfg.Webhook is
// set.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("new approvals service: no store")
	}
	if cfg.Host == "" {
		return nil, errors.New("new approvals service: no host name")
	}
	for _, t := range cfg.Tokens {
		if t.Name == "" || len(t.Secret) < 16 {
			return nil, fmt.Errorf("new approvals service: reviewer token %q: needs a name and a secret of 16 or more characters", t.Name)
		}
	}
	s := &Service{
		cfg:    cfg,
		st:     cfg.Store,
		log:    zerolog.Nop(),
		poll:   cfg.PollInterval,
		holds:  map[string]*hold{},
		lookup: userName,
	}
	if cfg.Logger != nil {
		s.log = *cfg.Logger
	}
	if s.poll <= 0 {
		s.poll = 500 * time.Millisecond
	}
	s.hook = newNotifier(cfg, s.log)
	s.web = newWebAuth(cfg.Tokens)
	return s, nil
}

// Close stops the webhook sender after giving queued messages until ctx
// ends to go out.
func (s *Service) Close(ctx context.Context) error {
	return s.hook.close(ctx)
}

// Hold records r as a pending approval, audits it, posts the webhook, and
// returns its id and a wait function. wait blocks until the approval is
// decided (by a reviewer on any host), its timeout passes (denied), or ctx
// ends (the approval is cancelled and wait reports not approved); it returns
// whether the request may run and a reason fit for the agent's error
// message. Only the caller blocks; call wait once.
func (s *Service) Hold(ctx context.Context, r Request) (string, func(ctx context.Context) (bool, string), error) {
	if r.Host == "" {
		r.Host = s.cfg.Host
	}
	if r.Timeout <= 0 {
		r.Timeout = DefaultTimeout
	}
	if len(r.Reviewers) == 0 {
		return "", nil, errors.New("hold request: the rule names no reviewers")
	}
	a := store.Approval{
		Host: r.Host, SessionID: r.Session, Identity: r.Identity, PID: int32(r.PID), Exe: r.Exe,
		Target: r.Target, Statement: r.Statement, Rule: r.Rule, Reviewers: r.Reviewers, Quorum: r.Quorum,
		Requested: time.Now().UTC(),
	}
	a.Deadline = a.Requested.Add(r.Timeout)
	if err := s.st.CreateApproval(ctx, &a); err != nil {
		return "", nil, fmt.Errorf("hold request: %w", err)
	}
	h := &hold{uid: r.UID, decided: make(chan struct{})}
	s.mu.Lock()
	s.holds[a.ID] = h
	s.mu.Unlock()
	stmt := redact(r.Protocol, r.Statement)
	s.audit(ctx, audit.ApprovalRequested{
		Approval: a.ID, Session: a.SessionID, Identity: a.Identity, Target: a.Target, Rule: a.Rule,
		Reviewers: a.Reviewers, Quorum: a.Quorum, Deadline: a.Deadline, Statement: stmt,
	})
	s.hook.post(heldText(a, stmt, s.cfg.WebURL))
	wait := func(ctx context.Context) (bool, string) {
		defer s.forget(a.ID)
		final := s.wait(ctx, h, a)
		if s.cfg.Observe != nil {
			s.cfg.Observe(final.State, time.Since(a.Requested))
		}
		return final.State == store.Approved, reason(final)
	}
	return a.ID, wait, nil
}

func (s *Service) forget(id string) {
	s.mu.Lock()
	delete(s.holds, id)
	s.mu.Unlock()
}

// wait returns the approval in its final state. It wakes on a local
// decision, every poll interval (votes from other hosts), at the deadline,
// and when ctx ends.
func (s *Service) wait(ctx context.Context, h *hold, a store.Approval) store.Approval {
	deadline := time.NewTimer(time.Until(a.Deadline))
	defer deadline.Stop()
	tick := time.NewTicker(s.poll)
	defer tick.Stop()
	// The store is read with a context of its own: the held session's ctx
	// may be the very thing that ended, and its approval must still be
	// cancelled.
	bg := context.WithoutCancel(ctx)
	for {
		expired := false
		select {
		case <-h.decided:
		case <-tick.C:
		case <-deadline.C:
			expired = true
		case <-ctx.Done():
			return s.cancel(bg, a)
		}
		cur, err := s.st.Approval(bg, a.ID)
		if err != nil {
			s.log.Warn().Err(err).Str("approval", a.ID).Msg("read held approval")
			if expired || !time.Now().Before(a.Deadline) {
				a.State = store.Expired
				return a
			}
			continue
		}
		if cur.State == store.Pending && !time.Now().Before(cur.Deadline) {
			if _, err := s.st.ExpireApprovals(bg, cur.Host, time.Now()); err != nil {
				s.log.Warn().Err(err).Str("approval", a.ID).Msg("expire held approval")
			}
			if cur, err = s.st.Approval(bg, a.ID); err != nil || cur.State == store.Pending {
				// The store cannot record the expiry; the timeout still denies.
				cur.State = store.Expired
				return cur
			}
		}
		if cur.State == store.Pending {
			continue
		}
		if cur.State == store.Expired {
			s.finished(bg, cur)
		}
		return cur
	}
}

// cancel marks a held approval Cancelled because its session went away. A
// decision that came first stands and is returned.
func (s *Service) cancel(ctx context.Context, a store.Approval) store.Approval {
	err := s.st.CancelApproval(ctx, a.ID, time.Now().UTC())
	cur, rerr := s.st.Approval(ctx, a.ID)
	if rerr != nil {
		a.State = store.Cancelled
		return a
	}
	if err == nil {
		s.finished(ctx, cur)
	}
	return cur
}

// CancelOrphans cancels this host's pending approvals. Call it when the
// daemon starts: approvals held by a previous process have no session left
// to release.
func (s *Service) CancelOrphans(ctx context.Context) (int, error) {
	pending, err := s.st.ListApprovals(ctx, store.ApprovalFilter{Host: s.cfg.Host, State: store.Pending, Limit: 10000})
	if err != nil {
		return 0, fmt.Errorf("cancel orphaned approvals: %w", err)
	}
	n := 0
	for _, a := range pending {
		s.mu.Lock()
		_, mine := s.holds[a.ID]
		s.mu.Unlock()
		if mine {
			continue
		}
		if err := s.st.CancelApproval(ctx, a.ID, time.Now().UTC()); err != nil {
			continue // decided meanwhile
		}
		if cur, err := s.st.Approval(ctx, a.ID); err == nil {
			s.finished(ctx, cur)
		}
		n++
	}
	return n, nil
}

// finished records a final state this host caused or observed as the holder
// (expired, cancelled) in the audit trail and the webhook.
func (s *Service) finished(ctx context.Context, a store.Approval) {
	s.audit(ctx, decidedEvent(a))
	s.hook.post(decidedText(a, ""))
}

// Get returns approval id with its votes.
func (s *Service) Get(ctx context.Context, id string) (store.Approval, error) {
	return s.st.Approval(ctx, id)
}

// List returns approvals, newest first: every host's, so a fleet shares one
// queue. A zero filter lists the 100 newest.
func (s *Service) List(ctx context.Context, f store.ApprovalFilter) ([]store.Approval, error) {
	return s.st.ListApprovals(ctx, f)
}

// Decide records rv's vote on approval id and returns the approval as it
// stands after it. It refuses reviewers the policy does not name
// (ErrNotReviewer), the requester itself (ErrRequester), uid-authenticated
// votes when the requester's uid is unknown (ErrUnknownRequester), a second
// vote by the same reviewer (store.ErrDuplicateVote) and votes on decided
// or expired approvals (store.ErrDecided).
func (s *Service) Decide(ctx context.Context, id string, rv Reviewer, approve bool, comment string) (store.Approval, error) {
	if rv.Name == "" {
		return store.Approval{}, fmt.Errorf("decide %s: %w: reviewer has no name", id, ErrNotReviewer)
	}
	if len(comment) > maxComment {
		return store.Approval{}, fmt.Errorf("decide %s: %w", id, errComment)
	}
	a, err := s.st.Approval(ctx, id)
	if err != nil {
		return a, fmt.Errorf("decide %s: %w", id, err)
	}
	if a.State != store.Pending {
		return a, fmt.Errorf("decide %s: %w (%s)", id, store.ErrDecided, a.State)
	}
	if !mayReview(a.Reviewers, rv) {
		return a, fmt.Errorf("decide %s: %s: %w (reviewers: %s)", id, rv.Name, ErrNotReviewer, strings.Join(a.Reviewers, ", "))
	}
	if err := s.checkRequester(ctx, a, rv); err != nil {
		return a, fmt.Errorf("decide %s: %s: %w", id, rv.Name, err)
	}
	a, err = s.st.Vote(ctx, id, store.Vote{Reviewer: rv.Name, Approve: approve, Comment: comment})
	if err != nil {
		if a.State == store.Expired {
			s.wake(id)
		}
		return a, fmt.Errorf("decide %s: %w", id, err)
	}
	s.audit(ctx, decidedEvent(a))
	if a.State != store.Pending {
		s.wake(id)
		s.hook.post(decidedText(a, rv.Via))
	}
	return a, nil
}

// wake tells a local waiter that its approval reached a final state.
func (s *Service) wake(id string) {
	s.mu.Lock()
	h := s.holds[id]
	s.mu.Unlock()
	if h != nil {
		h.once.Do(func() { close(h.decided) })
	}
}

// checkRequester refuses the requester: by uid when the reviewer's uid is
// known (the held process's uid comes from this process's hold, or from the
// session row when another host holds it), and by user name.
func (s *Service) checkRequester(ctx context.Context, a store.Approval, rv Reviewer) error {
	uid, known := s.requesterUID(ctx, a)
	if !known {
		if rv.HasUID {
			return ErrUnknownRequester
		}
		return nil
	}
	if rv.HasUID && rv.UID == uid {
		return fmt.Errorf("%w (uid %d)", ErrRequester, uid)
	}
	if name := s.lookup(uid); name != "" && name == rv.Name {
		return fmt.Errorf("%w (user %s)", ErrRequester, name)
	}
	return nil
}

// requesterUID returns the held process's uid: from this process's hold,
// or from the session row when another host holds it.
func (s *Service) requesterUID(ctx context.Context, a store.Approval) (uint32, bool) {
	s.mu.Lock()
	h := s.holds[a.ID]
	s.mu.Unlock()
	if h != nil {
		return h.uid, true
	}
	if a.SessionID != "" {
		if ss, err := s.st.Session(ctx, a.SessionID); err == nil {
			return ss.UID, true
		}
	}
	return 0, false
}

// mayReview reports whether rv is named by reviewers: an entry "user:NAME"
// matches the reviewer's name, "group:NAME" one of its groups, and a bare
// NAME either.
func mayReview(reviewers []string, rv Reviewer) bool {
	for _, e := range reviewers {
		if name, ok := strings.CutPrefix(e, "user:"); ok {
			if name == rv.Name {
				return true
			}
			continue
		}
		name, onlyGroup := strings.CutPrefix(e, "group:")
		if !onlyGroup && name == rv.Name {
			return true
		}
		for _, g := range rv.Groups {
			if g == name {
				return true
			}
		}
	}
	return false
}

func (s *Service) audit(ctx context.Context, ev audit.Event) {
	if s.cfg.Audit == nil {
		return
	}
	if _, err := s.cfg.Audit.RecordNow(ctx, ev); err != nil {
		s.log.Error().Err(err).Str("kind", string(ev.Kind())).Msg("write approval audit record")
	}
}

func decidedEvent(a store.Approval) audit.ApprovalDecided {
	ev := audit.ApprovalDecided{Approval: a.ID, Session: a.SessionID, State: string(a.State), Votes: []audit.ApprovalVote{}}
	for _, v := range a.Votes {
		ev.Votes = append(ev.Votes, audit.ApprovalVote{Reviewer: v.Reviewer, Approve: v.Approve, Comment: v.Comment})
	}
	return ev
}

func redact(protocol, stmt string) audit.Statement {
	switch strings.ToLower(protocol) {
	case "postgresql", "postgres", "sql", "mysql":
		return audit.SQLStatement(stmt)
	}
	return audit.OpaqueStatement(stmt)
}

// reason explains a final state to the agent whose request was held.
func reason(a store.Approval) string {
	var who []string
	for _, v := range a.Votes {
		if v.Approve == (a.State == store.Approved) {
			w := v.Reviewer
			if v.Comment != "" {
				w += " (" + v.Comment + ")"
			}
			who = append(who, w)
		}
	}
	switch a.State {
	case store.Approved:
		return fmt.Sprintf("approval %s approved by %s", a.ID, strings.Join(who, ", "))
	case store.Denied:
		return fmt.Sprintf("approval %s denied by %s", a.ID, strings.Join(who, ", "))
	case store.Expired:
		return fmt.Sprintf("approval %s: no decision before the deadline; denied", a.ID)
	case store.Cancelled:
		return fmt.Sprintf("approval %s cancelled: the session ended", a.ID)
	}
	return fmt.Sprintf("approval %s is %s", a.ID, a.State)
}

// userName returns the user name of uid, or "" when it has none.
func userName(uid uint32) string {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return ""
	}
	return u.Username
}

// PeerReviewer builds the Reviewer of a control-socket caller from its
// kernel credentials: the uid's user name ("uid:N" when it has none) and the
// names of its primary and supplementary groups (from /proc/PID/status).
func PeerReviewer(pid, uid, gid uint32) Reviewer {
	rv := Reviewer{Name: userName(uid), UID: uid, HasUID: true, Via: "cli"}
	if rv.Name == "" {
		rv.Name = "uid:" + strconv.FormatUint(uint64(uid), 10)
	}
	gids := []string{strconv.FormatUint(uint64(gid), 10)}
	if groups, err := control.ProcStatus(int(pid), "Groups"); err == nil {
		gids = append(gids, groups...)
	}
	seen := map[string]bool{}
	for _, g := range gids {
		if seen[g] {
			continue
		}
		seen[g] = true
		if grp, err := user.LookupGroupId(g); err == nil {
			rv.Groups = append(rv.Groups, grp.Name)
		}
	}
	return rv
}
