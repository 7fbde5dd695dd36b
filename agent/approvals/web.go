package approvals

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"html/template"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/store"
)

//go:embed web
var webFS embed.FS

const (
	sessionCookie = "interlock_reviewer"
	// webSessionTTL is how long a login lasts; the page signs in again
	// after it.
	webSessionTTL = 12 * time.Hour
	csrfHeader    = "X-Interlock-CSRF"
)

// webAuth checks reviewer tokens and keeps the page's login sessions in
// memory (a daemon restart signs reviewers out).
type webAuth struct {
	tokens   []Token
	sums     [][sha256.Size]byte
	mu       sync.Mutex
	sessions map[string]*webSession
}

type webSession struct {
	token   Token
	csrf    string
	expires time.Time
}

func newWebAuth(tokens []Token) *webAuth {
	a := &webAuth{tokens: tokens, sessions: map[string]*webSession{}}
	for _, t := range tokens {
		a.sums = append(a.sums, sha256.Sum256([]byte(t.Secret)))
	}
	return a
}

// match returns the token whose secret is secret, comparing every token in
// constant time so timing tells nothing about which one is close.
func (a *webAuth) match(secret string) (Token, bool) {
	sum := sha256.Sum256([]byte(secret))
	found := -1
	for i := range a.sums {
		if subtle.ConstantTimeCompare(sum[:], a.sums[i][:]) == 1 {
			found = i
		}
	}
	if found < 0 || secret == "" {
		return Token{}, false
	}
	return a.tokens[found], true
}

func (a *webAuth) login(t Token) (id string, ws *webSession) {
	ws = &webSession{token: t, csrf: randomHex(), expires: time.Now().Add(webSessionTTL)}
	id = randomHex()
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for k, old := range a.sessions {
		if now.After(old.expires) {
			delete(a.sessions, k)
		}
	}
	a.sessions[id] = ws
	return id, ws
}

func (a *webAuth) session(id string) *webSession {
	a.mu.Lock()
	defer a.mu.Unlock()
	ws := a.sessions[id]
	if ws == nil || time.Now().After(ws.expires) {
		delete(a.sessions, id)
		return nil
	}
	return ws
}

func (a *webAuth) logout(id string) {
	a.mu.Lock()
	delete(a.sessions, id)
	a.mu.Unlock()
}

func randomHex() string {
	var b [32]byte
	rand.Read(b[:]) // never fails: crypto/rand panics instead
	return hex.EncodeToString(b[:])
}

// caller is who made a web request: the token's reviewer, and the CSRF
// token a cookie-authenticated POST must echo (empty for bearer tokens,
// which a browser never attaches on its own).
type caller struct {
	token Token
	csrf  string
}

func (a *webAuth) authenticate(r *http.Request) (caller, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		secret, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return caller{}, false
		}
		t, ok := a.match(secret)
		return caller{token: t}, ok
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return caller{}, false
	}
	ws := a.session(c.Value)
	if ws == nil {
		return caller{}, false
	}
	return caller{token: ws.token, csrf: ws.csrf}, true
}

// WebHandler serves the reviewers' page, meant for a listener on a loopback
// address:
//
//	GET  /                                  the page (HTML, JS, CSS embedded)
//	POST /login   form field "token"        sets the session cookie
//	POST /logout
//	GET  /api/me                            {"reviewer", "groups", "csrf"}
//	GET  /api/approvals[?state=&limit=]     []control.ApprovalView, every host's
//	POST /api/approvals/{id}/approve|deny   control.DecideRequest -> control.ApprovalView
//	GET  /api/sessions[?limit=]             []SessionView
//	GET  /api/sessions/{id}/transcript      text/plain
//
// API calls authenticate with "Authorization: Bearer TOKEN" or the cookie
// set by /login (HttpOnly, SameSite=Strict). A cookie-authenticated POST
// must carry the session's CSRF token in the X-Interlock-CSRF header, and any
// POST whose Origin is not this page is refused. Requests whose Host is not
// a loopback address, "localhost" or one of Config.WebHosts are refused,
// which defeats DNS rebinding. Config.WebCaller, when set, vets every
// request first.
func (s *Service) WebHandler() http.Handler {
	static, err := fs.Sub(webFS, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		http.ServeFileFS(w, r, static, "index.html")
	})
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("POST /login", s.handleLogin)
	mux.HandleFunc("POST /logout", s.handleLogout)
	mux.HandleFunc("GET /api/me", s.authed(func(w http.ResponseWriter, r *http.Request, c caller) {
		groups := c.token.Groups
		if groups == nil {
			groups = []string{}
		}
		control.WriteJSON(w, http.StatusOK, map[string]any{"reviewer": c.token.Name, "groups": groups, "csrf": c.csrf})
	}))
	mux.HandleFunc("GET /api/approvals", s.authed(func(w http.ResponseWriter, r *http.Request, _ caller) {
		s.handleList(w, r)
	}))
	mux.HandleFunc("POST /api/approvals/{id}/approve", s.authed(func(w http.ResponseWriter, r *http.Request, c caller) {
		s.handleWebDecide(w, r, c, true)
	}))
	mux.HandleFunc("POST /api/approvals/{id}/deny", s.authed(func(w http.ResponseWriter, r *http.Request, c caller) {
		s.handleWebDecide(w, r, c, false)
	}))
	mux.HandleFunc("GET /api/sessions", s.authed(s.handleSessions))
	mux.HandleFunc("GET /api/sessions/{id}/transcript", s.authed(s.handleTranscript))
	return s.guard(mux)
}

// guard applies the checks every web request passes before routing.
func (s *Service) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: with no-referrer browsers send "Origin: null"
		// on form POSTs, and the Origin check below needs the real one.
		h.Set("Referrer-Policy", "same-origin")
		if !s.allowedHost(r.Host) {
			control.WriteError(w, http.StatusMisdirectedRequest, "refused: host %q is not this page's address", r.Host)
			return
		}
		if s.cfg.WebCaller != nil {
			if err := s.cfg.WebCaller(r); err != nil {
				control.WriteError(w, http.StatusForbidden, "refused: %v", err)
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if o := r.Header.Get("Origin"); o != "" {
				u, err := url.Parse(o)
				if err != nil || u.Host != r.Host {
					control.WriteError(w, http.StatusForbidden, "refused: cross-origin request from %q", o)
					return
				}
			}
			if r.Header.Get("Sec-Fetch-Site") == "cross-site" {
				control.WriteError(w, http.StatusForbidden, "refused: cross-site request")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Service) allowedHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return true
	}
	for _, h := range s.cfg.WebHosts {
		if strings.EqualFold(h, hostport) || strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

// authed runs h for authenticated callers and enforces the CSRF token on
// cookie-authenticated POSTs.
func (s *Service) authed(h func(http.ResponseWriter, *http.Request, caller)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.web.authenticate(r)
		if !ok {
			control.WriteError(w, http.StatusUnauthorized, "sign in with a reviewer token")
			return
		}
		if r.Method == http.MethodPost && c.csrf != "" &&
			subtle.ConstantTimeCompare([]byte(r.Header.Get(csrfHeader)), []byte(c.csrf)) != 1 {
			control.WriteError(w, http.StatusForbidden, "refused: missing or wrong CSRF token")
			return
		}
		h(w, r, c)
	}
}

var loginFailed = template.Must(template.New("login").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Interlock reviewers</title><link rel="stylesheet" href="/static/style.css"></head>
<body><main><h1>Interlock reviewers</h1><p id="login-error" class="error">{{.}}</p><p><a href="/">Try again</a></p></main></body></html>
`))

func (s *Service) handleLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	t, ok := s.web.match(r.PostFormValue("token"))
	if !ok {
		// A pause per failure makes guessing slow; tokens are long anyway.
		time.Sleep(250 * time.Millisecond)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		loginFailed.Execute(w, "That reviewer token is not valid.")
		return
	}
	id, _ := s.web.login(t)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: int(webSessionTTL / time.Second)})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Service) handleLogout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		s.web.logout(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Service) handleWebDecide(w http.ResponseWriter, r *http.Request, c caller, approve bool) {
	var in control.DecideRequest
	if !decodeBody(w, r, &in) {
		return
	}
	rv := Reviewer{Name: c.token.Name, Groups: c.token.Groups, Via: "web"}
	s.decideAndAnswer(r.Context(), w, r.PathValue("id"), rv, approve, in.Comment)
}

// SessionView is a recorded session as the web page lists it.
type SessionView struct {
	ID       string     `json:"id"`
	Host     string     `json:"host"`
	Identity string     `json:"identity"`
	PID      int32      `json:"pid"`
	Exe      string     `json:"exe"`
	Target   string     `json:"target"`
	Protocol string     `json:"protocol"`
	Started  time.Time  `json:"started"`
	Ended    *time.Time `json:"ended,omitempty"`
	Messages int64      `json:"messages"`
	Outcome  string     `json:"outcome"`
}

func (s *Service) handleSessions(w http.ResponseWriter, r *http.Request, _ caller) {
	f := store.SessionFilter{Limit: 50}
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			control.WriteError(w, http.StatusBadRequest, "limit: want 1 to 1000")
			return
		}
		f.Limit = n
	}
	ss, err := s.st.ListSessions(r.Context(), f)
	if err != nil {
		control.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := make([]SessionView, 0, len(ss))
	for _, x := range ss {
		v := SessionView{ID: x.ID, Host: x.Host, Identity: x.Identity, PID: x.PID, Exe: x.Exe, Target: x.Target,
			Protocol: x.Protocol, Started: x.Started, Messages: x.Messages, Outcome: x.Outcome}
		if !x.Ended.IsZero() {
			e := x.Ended
			v.Ended = &e
		}
		out = append(out, v)
	}
	control.WriteJSON(w, http.StatusOK, out)
}

func (s *Service) handleTranscript(w http.ResponseWriter, r *http.Request, _ caller) {
	id := r.PathValue("id")
	transcript := s.cfg.Transcript
	if transcript == nil {
		transcript = func(ctx context.Context, id string, w io.Writer) error {
			return recording.Replay(ctx, s.st, id, w)
		}
	}
	// Render fully before answering, so a failure is an error status and
	// not half a transcript.
	var b strings.Builder
	if err := transcript(r.Context(), id, &b); err != nil {
		writeDecideError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, b.String())
}
