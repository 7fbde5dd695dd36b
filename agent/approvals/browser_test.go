package approvals

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// browser is a real headless Chromium driven over the Chrome DevTools
// Protocol: just enough of it (navigate, evaluate, mouse, keyboard) to use
// the reviewers' page the way a person does.
type browser struct {
	t    *testing.T
	ws   *websocket.Conn
	next int
}

// startBrowser launches Debian's chromium with a fresh profile and connects
// to its first page. Chromium and its profile are removed when the test
// ends.
func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		testenv.Unavailable(t, "chromium is not installed (apt-get install -y chromium)")
	}
	profile := t.TempDir()
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--window-size=1400,1000", "--lang=en-US",
		"--user-data-dir="+profile, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
		"--remote-allow-origins=http://127.0.0.1", "about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logFile, err := os.Create(filepath.Join(t.TempDir(), "chromium.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		// Chromium forks helpers into its process group; end them all.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		logFile.Close()
	})

	// Chromium writes the port it picked to DevToolsActivePort.
	var port string
	for deadline := time.Now().Add(30 * time.Second); port == ""; {
		if data, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort")); err == nil {
			if first, _, ok := strings.Cut(string(data), "\n"); ok {
				port = first
			}
		}
		if port == "" {
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(logFile.Name())
				t.Fatalf("chromium did not open its debugging port:\n%s", log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/json/list")
	if err != nil {
		t.Fatalf("list chromium targets: %v", err)
	}
	defer resp.Body.Close()
	var targets []struct {
		Type string `json:"type"`
		WS   string `json:"webSocketDebuggerUrl"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&targets); err != nil {
		t.Fatalf("decode chromium targets: %v", err)
	}
	for _, tg := range targets {
		if tg.Type == "page" {
			ws, err := websocket.Dial(tg.WS, "", "http://127.0.0.1")
			if err != nil {
				t.Fatalf("connect to chromium page: %v", err)
			}
			ws.MaxPayloadBytes = 64 << 20
			t.Cleanup(func() { ws.Close() })
			return &browser{t: t, ws: ws}
		}
	}
	t.Fatalf("chromium has no page target: %+v", targets)
	return nil
}

// call sends one CDP command and returns its result, skipping events.
func (b *browser) call(method string, params any) json.RawMessage {
	b.t.Helper()
	res, err := b.try(method, params)
	if err != nil {
		b.t.Fatalf("cdp %s: %v", method, err)
	}
	return res
}

// try sends one CDP command and returns its result or the error Chromium
// answered; a broken connection to Chromium fails the test.
func (b *browser) try(method string, params any) (json.RawMessage, error) {
	b.t.Helper()
	b.next++
	id := b.next
	if err := websocket.JSON.Send(b.ws, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		b.t.Fatalf("cdp %s: %v", method, err)
	}
	b.ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		var msg struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := websocket.JSON.Receive(b.ws, &msg); err != nil {
			b.t.Fatalf("cdp %s: %v", method, err)
		}
		if msg.ID != id {
			continue
		}
		if msg.Error != nil {
			return nil, errors.New(msg.Error.Message)
		}
		return msg.Result, nil
	}
}

// eval runs a JavaScript expression in the page and decodes its value into
// out (may be nil). Exceptions fail the test.
func (b *browser) eval(expr string, out any) {
	b.t.Helper()
	b.decode(expr, b.call("Runtime.evaluate", evaluation(expr)), out)
}

// evaluation is Runtime.evaluate's parameters for expr.
func evaluation(expr string) map[string]any {
	return map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}
}

// decode reads an evaluation's value into out (may be nil); an exception
// fails the test.
func (b *browser) decode(expr string, raw json.RawMessage, out any) {
	b.t.Helper()
	var res struct {
		Result struct {
			Value json.RawMessage `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		b.t.Fatalf("decode evaluate result: %v", err)
	}
	if res.Exception != nil {
		b.t.Fatalf("javascript %q: %s %s", expr, res.Exception.Text, res.Exception.Exception.Description)
	}
	if out != nil && len(res.Result.Value) > 0 {
		if err := json.Unmarshal(res.Result.Value, out); err != nil {
			b.t.Fatalf("decode %q value %s: %v", expr, res.Result.Value, err)
		}
	}
}

func (b *browser) navigate(url string) {
	b.t.Helper()
	b.call("Page.navigate", map[string]any{"url": url})
}

// waitFor polls a JavaScript condition until it is true.
func (b *browser) waitFor(what, expr string) {
	b.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	cond := "(() => { try { return !!(" + expr + "); } catch (e) { return false; } })()"
	var refused error // Chromium's last error, if it answered one
	for {
		var ok bool
		// A page that is navigating (a form posted, a reload) has no
		// document to ask yet: Chromium answers with an error, and the
		// condition is simply not true yet.
		raw, err := b.try("Runtime.evaluate", evaluation(cond))
		if err == nil {
			b.decode(cond, raw, &ok)
		} else {
			refused = err
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			var body string
			b.eval("document.body ? document.body.innerText : ''", &body)
			if refused != nil {
				what += fmt.Sprintf(" (Chromium last refused to evaluate: %v)", refused)
			}
			b.t.Fatalf("timed out waiting for %s; the page shows:\n%s", what, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// click scrolls the element matched by selector into view and clicks its
// centre with real mouse events.
func (b *browser) click(selector string) {
	b.t.Helper()
	var xy []float64
	b.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); e.scrollIntoView({block: "center"});
		const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()`, selector), &xy)
	if len(xy) != 2 {
		b.t.Fatalf("click %s: no position", selector)
	}
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		b.call("Input.dispatchMouseEvent", map[string]any{"type": typ, "x": xy[0], "y": xy[1], "button": "left", "clickCount": 1})
	}
}

// typeInto clicks the element and types text as keyboard input.
func (b *browser) typeInto(selector, text string) {
	b.t.Helper()
	b.click(selector)
	b.call("Input.insertText", map[string]any{"text": text})
}

// text returns the innerText of the element matched by selector.
func (b *browser) text(selector string) string {
	b.t.Helper()
	var s string
	b.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); return e ? e.innerText : ""; })()`, selector), &s)
	return s
}
