package approvals

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/store"
)

const (
	aliceToken   = "alice-token-5f0c1d9e8b7a"
	malloryToken = "mallory-token-3e2d1c0b9a8f"
	agentToken   = "agent-user-token-77aa66bb55cc"
)

// webFixture is a service with reviewer tokens, its web page on a loopback
// port, and a recorded session that a held request belongs to.
type webFixture struct {
	st      *store.Store
	svc     *Service
	url     string
	session string
}

func newWebFixture(t *testing.T) *webFixture {
	t.Helper()
	ctx := context.Background()
	st := openSQLite(t)
	rec, err := recording.NewRecorder(st, t.TempDir(), "web-host")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	rs, err := rec.Start(ctx, store.Session{Identity: "ci-runner", PID: 1234, UID: requesterUID, Exe: "/usr/bin/psql",
		Target: "orders-db", Protocol: "postgresql", ClientAddr: "127.0.0.1:40000", UpstreamAddr: "10.0.0.5:5432"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	seq := rs.Message(true, 'Q', []byte(secretStatement+"\x00"), time.Time{})
	rs.Decide(seq, recording.Verdict{Action: "approve", Rule: "hold-writes", Enforced: true, Statement: secretStatement}, time.Time{})
	if _, err := rs.Finish(ctx, recording.End{Outcome: "closed"}); err != nil {
		t.Fatal(err)
	}
	svc, _ := newService(t, st, "web-host", func(c *Config) {
		c.Tokens = []Token{{Name: "alice", Secret: aliceToken}, {Name: "mallory", Secret: malloryToken},
			{Name: "agent-user", Secret: agentToken}}
	})
	srv := httptest.NewServer(svc.WebHandler())
	t.Cleanup(srv.Close)
	return &webFixture{st: st, svc: svc, url: srv.URL, session: rs.ID()}
}

func (f *webFixture) hold(t *testing.T, reviewers ...string) (string, <-chan result) {
	t.Helper()
	req := request(reviewers, 1, 5*time.Minute)
	req.Session = f.session
	id, wait, err := f.svc.Hold(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return id, waitAsync(ctx, wait)
}

// signIn opens the page at url and signs in with token, as a reviewer
// types it.
func (b *browser) signIn(url, token string) {
	b.t.Helper()
	b.navigate(url + "/")
	b.waitFor("the sign-in form", `!document.getElementById("login").hidden`)
	b.typeInto("#token", token)
	b.click("#login-submit")
}

func row(id string) string { return `#pending tr[data-id="` + id + `"]` }

// A reviewer signs in with a token in real Chromium, sees the held request
// appear without reloading, types a comment and clicks Approve; the held
// session is released as approved, and the page moves the request to the
// decided list. The reviewer then opens the session's transcript.
func TestBrowserApprove(t *testing.T) {
	f := newWebFixture(t)
	b := startBrowser(t)
	b.signIn(f.url, aliceToken)
	b.waitFor("the queue", `!document.getElementById("queue").hidden && document.getElementById("reviewer").innerText === "alice"`)

	// Held after the page loaded: it must appear by itself.
	id, done := f.hold(t, "alice")
	b.waitFor("the held request", `document.querySelector('`+row(id)+`')`)
	for _, want := range []string{"ci-runner", "orders-db", "hold-writes", secretStatement, "0/1", "uid 4242 (agent-user)"} {
		if got := b.text(row(id)); !strings.Contains(got, want) {
			t.Errorf("row lacks %q: %s", want, got)
		}
	}
	// On the 24-hour clock, as the CLI shows it, though the browser's
	// locale (en-US) writes 12-hour times.
	held, err := f.svc.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := b.text(row(id)+" time"), held.Requested.Local().Format("15:04:05"); got != want {
		t.Errorf("requested at %q, want %q", got, want)
	}
	// The held session's messages so far, on request.
	b.click(row(id) + " details.so-far summary")
	b.waitFor("the session so far", `document.querySelector('`+row(id)+` pre.so-far').innerText.includes("UPDATE accounts")`)

	// A comment being typed survives the page's refreshes.
	b.typeInto(row(id)+" input.comment", "ticket OPS-1 checked")
	before := b.text("#status")
	b.waitFor("a refresh", `document.getElementById("status").innerText !== `+jsString(before))
	var typed string
	b.eval(`document.querySelector('`+row(id)+` input.comment').value`, &typed)
	if typed != "ticket OPS-1 checked" {
		t.Fatalf("comment after a refresh: %q", typed)
	}
	select {
	case r := <-done:
		t.Fatalf("released before anyone clicked: %+v", r)
	default:
	}

	b.click(row(id) + " button.approve")
	r := receive(t, done)
	if !r.approved || !strings.Contains(r.reason, "alice (ticket OPS-1 checked)") {
		t.Fatalf("held session got %+v", r)
	}
	b.waitFor("the decided row", `document.querySelector('#decided tr[data-id="`+id+`"][data-state="approved"]') && !document.querySelector('`+row(id)+`')`)
	a, err := f.svc.Get(context.Background(), id)
	if err != nil || a.State != store.Approved || len(a.Votes) != 1 || a.Votes[0].Reviewer != "alice" {
		t.Fatalf("stored approval: %+v %v", a, err)
	}

	b.waitFor("the session list", `document.querySelector('#sessions tr[data-id="`+f.session+`"]')`)
	b.click(`#sessions tr[data-id="` + f.session + `"] button.show`)
	b.waitFor("the transcript", `document.getElementById("transcript").innerText.includes("UPDATE accounts")`)
	if tr := b.text("#transcript"); !strings.Contains(tr, "ci-runner") || !strings.Contains(tr, "verified") {
		t.Fatalf("transcript:\n%s", tr)
	}
}

// In real Chromium: Deny takes a second click, and Cancel takes the first
// back; only the confirmed deny releases the session, denied.
func TestBrowserDenyNeedsConfirmation(t *testing.T) {
	f := newWebFixture(t)
	id, done := f.hold(t, "alice")
	b := startBrowser(t)
	b.signIn(f.url, aliceToken)
	b.waitFor("the held request", `document.querySelector('`+row(id)+`')`)

	notReleased := func(after string) {
		t.Helper()
		// Longer than a few of the page's refreshes.
		time.Sleep(300 * time.Millisecond)
		select {
		case r := <-done:
			t.Fatalf("released after %s: %+v", after, r)
		default:
		}
		if a, _ := f.svc.Get(context.Background(), id); a.State != store.Pending || len(a.Votes) != 0 {
			t.Fatalf("after %s: %s %+v", after, a.State, a.Votes)
		}
	}
	b.click(row(id) + " button.deny")
	b.waitFor("the confirmation", `document.querySelector('`+row(id)+` button.deny.confirm')`)
	if got := b.text(row(id) + " button.deny"); got != "Really deny" {
		t.Fatalf("deny button after one click: %q", got)
	}
	notReleased("one click on Deny")
	b.click(row(id) + " button.cancel")
	b.waitFor("the confirmation withdrawn", `!document.querySelector('`+row(id)+` button.deny.confirm') && document.querySelector('`+row(id)+` button.cancel').hidden`)
	notReleased("Deny and Cancel")

	b.typeInto(row(id)+" input.comment", "not during the freeze")
	b.click(row(id) + " button.deny")
	b.waitFor("the confirmation", `document.querySelector('`+row(id)+` button.deny.confirm')`)
	b.click(row(id) + " button.deny")
	r := receive(t, done)
	if r.approved || !strings.Contains(r.reason, "not during the freeze") {
		t.Fatalf("held session got %+v", r)
	}
	b.waitFor("the decided row", `document.querySelector('#decided tr[data-id="`+id+`"][data-state="denied"]')`)
}

// In real Chromium: a held statement and an executable's name carrying a
// terminal escape, a line break and a right-to-left override are shown
// with those escaped, so that nothing of what is held is hidden or shown
// reordered to the reviewer.
func TestBrowserShowsWhatIsHeld(t *testing.T) {
	f := newWebFixture(t)
	req := request([]string{"alice"}, 1, 5*time.Minute)
	req.Session = f.session
	req.Statement = "ls /srv\x1b[8m; rm -rf /srv\n-- \u202eredro"
	req.Exe = "/tmp/agent\u202e"
	id, _, err := f.svc.Hold(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	b := startBrowser(t)
	b.signIn(f.url, aliceToken)
	b.waitFor("the held request", `document.querySelector('`+row(id)+`')`)
	if got, want := b.text(row(id)+" code"), `ls /srv\x1b[8m; rm -rf /srv\n-- \u202eredro`; got != want {
		t.Errorf("statement shown as %q, want %q", got, want)
	}
	if got := b.text(row(id)); !strings.Contains(got, `/tmp/agent\u202e`) {
		t.Errorf("executable not shown escaped: %q", got)
	}
}

// In real Chromium: a wrong token does not sign in, and a valid token whose
// name the policy does not list cannot approve; the request stays held.
func TestBrowserRefusals(t *testing.T) {
	f := newWebFixture(t)
	id, done := f.hold(t, "alice")
	b := startBrowser(t)

	b.signIn(f.url, "not-a-token-at-all-000000")
	b.waitFor("the refusal", `document.getElementById("login-error")`)
	if got := b.text("#login-error"); !strings.Contains(got, "not valid") {
		t.Fatalf("login error: %q", got)
	}
	b.navigate(f.url + "/")
	b.waitFor("the sign-in form again", `!document.getElementById("login").hidden && document.getElementById("queue").hidden`)

	b.typeInto("#token", malloryToken)
	b.click("#login-submit")
	b.waitFor("the held request", `document.querySelector('`+row(id)+`')`)
	b.click(row(id) + " button.approve")
	b.waitFor("the refusal", `document.querySelector('`+row(id)+` .msg.error')`)
	if got := b.text(row(id) + " .msg"); !strings.Contains(got, "not a reviewer") {
		t.Fatalf("refusal message: %q", got)
	}
	if a, _ := f.svc.Get(context.Background(), id); a.State != store.Pending || len(a.Votes) != 0 {
		t.Fatalf("after mallory's click: %s %+v", a.State, a.Votes)
	}
	select {
	case r := <-done:
		t.Fatalf("released: %+v", r)
	default:
	}
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// The API's guards, without a browser: tokens, the requester, DNS
// rebinding, cross-origin POSTs and CSRF.
func TestWebGuards(t *testing.T) {
	f := newWebFixture(t)
	id, _ := f.hold(t, "alice", "agent-user")
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, bearer string, body string, hdr map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		for k, v := range hdr {
			if k == "Host" {
				req.Host = v
				continue
			}
			req.Header.Set(k, v)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data)
	}
	approve := "/api/approvals/" + id + "/approve"

	if code, _ := do("GET", "/api/approvals", "", "", nil); code != http.StatusUnauthorized {
		t.Errorf("no token: %d", code)
	}
	if code, _ := do("GET", "/api/approvals", "wrong-token-0000000000", "", nil); code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", code)
	}
	if code, body := do("GET", "/api/approvals?state=pending", aliceToken, "", nil); code != http.StatusOK || !strings.Contains(body, id) {
		t.Errorf("alice lists: %d %s", code, body)
	}
	if code, body := do("POST", approve, malloryToken, "{}", nil); code != http.StatusForbidden || !strings.Contains(body, "not a reviewer") {
		t.Errorf("mallory approves: %d %s", code, body)
	}
	if code, body := do("POST", approve, agentToken, "{}", nil); code != http.StatusForbidden || !strings.Contains(body, "requester") {
		t.Errorf("the requester's own user approves: %d %s", code, body)
	}
	if code, _ := do("GET", "/api/approvals", aliceToken, "", map[string]string{"Host": "evil.example:80"}); code != http.StatusMisdirectedRequest {
		t.Errorf("rebound host name: %d", code)
	}
	if code, _ := do("POST", approve, aliceToken, "{}", map[string]string{"Origin": "http://evil.example"}); code != http.StatusForbidden {
		t.Errorf("cross-origin POST: %d", code)
	}

	// A cookie session must echo its CSRF token on POSTs.
	form := url.Values{"token": {aliceToken}}.Encode()
	req, _ := http.NewRequest("POST", f.url+"/login", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie && c.HttpOnly && c.SameSite == http.SameSiteStrictMode {
			cookie = c.Name + "=" + c.Value
		}
	}
	if resp.StatusCode != http.StatusSeeOther || cookie == "" {
		t.Fatalf("login: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	code, body := do("GET", "/api/me", "", "", map[string]string{"Cookie": cookie})
	var me struct{ Reviewer, CSRF string }
	if json.Unmarshal([]byte(body), &me); code != http.StatusOK || me.Reviewer != "alice" || me.CSRF == "" {
		t.Fatalf("me: %d %s", code, body)
	}
	if code, _ := do("POST", approve, "", "{}", map[string]string{"Cookie": cookie}); code != http.StatusForbidden {
		t.Errorf("cookie POST without CSRF token: %d", code)
	}
	if code, _ := do("POST", approve, "", "{}", map[string]string{"Cookie": cookie, csrfHeader: "guess"}); code != http.StatusForbidden {
		t.Errorf("cookie POST with a wrong CSRF token: %d", code)
	}
	if a, _ := f.svc.Get(context.Background(), id); a.State != store.Pending || len(a.Votes) != 0 {
		t.Fatalf("a refused request voted: %+v", a)
	}
	if code, body := do("POST", approve, "", `{"comment":"ok"}`, map[string]string{"Cookie": cookie, csrfHeader: me.CSRF}); code != http.StatusOK ||
		!strings.Contains(body, `"state":"approved"`) {
		t.Fatalf("cookie POST with the CSRF token: %d %s", code, body)
	}
	if code, _ := do("POST", "/logout", "", "", map[string]string{"Cookie": cookie}); code != http.StatusSeeOther {
		t.Errorf("logout: %d", code)
	}
	if code, _ := do("GET", "/api/me", "", "", map[string]string{"Cookie": cookie}); code != http.StatusUnauthorized {
		t.Errorf("after logout: %d", code)
	}
	if code, body := do("GET", "/api/sessions/"+f.session+"/transcript", aliceToken, "", nil); code != http.StatusOK || !strings.Contains(body, "UPDATE accounts") {
		t.Errorf("transcript: %d %s", code, body)
	}
	if code, _ := do("GET", "/api/sessions/nope/transcript", aliceToken, "", nil); code != http.StatusNotFound {
		t.Errorf("missing transcript: %d", code)
	}
}
