package daemon_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUntagRevokesOpenSession: an agent's keep-alive HTTP connection, open
// when its cgroup loses its tag, gets its next request refused with 403
// naming identity-revoked, and that request never reaches the upstream.
// The tag is on the agent's own cgroup (checked by its kernel id) or on an
// ancestor (checked by walking the cgroup's path). A connection made
// before the untag whose first request comes after it is refused too, and
// so is one whose cgroup was tagged with another identity meanwhile: the
// kernel named its identity before the change, so the session asks the
// tag table again rather than trusting that.
func TestUntagRevokesOpenSession(t *testing.T) {
	f := startHTTP(t)
	for _, c := range []struct {
		name, tagged, agent string
		allowed             int    // requests answered before the untag
		retag               string // the identity the cgroup gets instead of losing its tag
	}{
		{"own cgroup", "revoke-own", "revoke-own", 1, ""},
		{"ancestor", "revoke-parent", "revoke-parent/job/step", 1, ""},
		{"before the first request", "revoke-first", "revoke-first", 0, ""},
		{"ancestor, before the first request", "revoke-first-parent", "revoke-first-parent/job", 0, ""},
		{"retagged before the first request", "revoke-retag", "revoke-retag", 0, "other-bot"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tagged, agent := f.d.Cgroup(c.tagged), f.d.Cgroup(c.agent)
			if _, stderr, err := f.d.CLI("tag", tagged, "--identity", "ci-bot"); err != nil {
				t.Fatalf("tag: %v %s", err, stderr)
			}
			// Requests on one connection; the one after the first
			// allowed waits for a line on stdin, written once the tag is
			// gone (with none allowed, the connection is made first).
			script := fmt.Sprintf(`import http.client, sys
allowed = %d
c = http.client.HTTPConnection("127.0.0.1", %d, timeout=30)
if not allowed:
    c.connect()
    print("connected", flush=True)
for i in range(allowed + 1):
    if i == allowed: sys.stdin.readline()
    c.request("GET", "/public/%s/%%d" %% i, headers={"Host": "intranet.test"})
    r = c.getresponse()
    print(r.status, r.read().decode().strip().replace("\n", " "), flush=True)
`, c.allowed, f.plainPort, c.tagged)
			cg, err := os.Open(agent)
			if err != nil {
				t.Fatal(err)
			}
			defer cg.Close()
			cmd := exec.CommandContext(t.Context(), "/usr/bin/python3", "-c", script)
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()),
				Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			stdin, _ := cmd.StdinPipe()
			stdout, _ := cmd.StdoutPipe()
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lines := bufio.NewScanner(stdout)
			want := "200 upstream HTTP/1.1 GET /public/" + c.tagged + "/0"
			if c.allowed == 0 {
				want = "connected"
			}
			if !lines.Scan() || !strings.HasPrefix(lines.Text(), want) {
				t.Fatalf("while tagged: %q, want %q %s", lines.Text(), want, stderr.String())
			}
			change := []string{"untag", tagged}
			if c.retag != "" {
				change = []string{"tag", tagged, "--identity", c.retag}
			}
			if _, stderr, err := f.d.CLI(change...); err != nil {
				t.Fatalf("%s: %v %s", change[0], err, stderr)
			}
			io.WriteString(stdin, "go\n")
			if !lines.Scan() || !strings.HasPrefix(lines.Text(), "403 ") || !strings.Contains(lines.Text(), "identity-revoked") {
				t.Fatalf("request after untag: %q %s", lines.Text(), stderr.String())
			}
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("agent: %v %s", err, stderr.String())
			}
			// The request after the untag, by its path: nginx logs a
			// request after answering it, so a count of the log's lines
			// taken after the first answer could still grow by the
			// first request's line.
			time.Sleep(100 * time.Millisecond)
			after := fmt.Sprintf("GET /public/%s/%d ", c.tagged, c.allowed)
			if log, _ := os.ReadFile(filepath.Join(f.dir, "intranet.test.log")); strings.Contains(string(log), after) {
				t.Errorf("the upstream served the request made after the untag (%s)", strings.TrimSpace(after))
			}
		})
	}
}
