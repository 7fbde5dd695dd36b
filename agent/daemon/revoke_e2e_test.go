package daemon_test

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUntagRevokesOpenSession: an agent's keep-alive HTTP connection, open
// when its cgroup loses its tag, gets its next request refused with 403
// naming identity-revoked, and that request never reaches the upstream.
// The tag is on the agent's own cgroup (checked by its kernel id) or on an
// ancestor (checked by walking the cgroup's path).
func TestUntagRevokesOpenSession(t *testing.T) {
	f := startHTTP(t)
	for _, c := range []struct{ name, tagged, agent string }{
		{"own cgroup", "revoke-own", "revoke-own"},
		{"ancestor", "revoke-parent", "revoke-parent/job/step"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tagged, agent := f.d.Cgroup(c.tagged), f.d.Cgroup(c.agent)
			if _, stderr, err := f.d.CLI("tag", tagged, "--identity", "ci-bot"); err != nil {
				t.Fatalf("tag: %v %s", err, stderr)
			}
			// Two requests on one connection; the second waits for a line
			// on stdin, written once the tag is gone.
			script := fmt.Sprintf(`import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", %d, timeout=30)
for i in range(2):
    if i: sys.stdin.readline()
    c.request("GET", "/public/%%d" %% i, headers={"Host": "intranet.test"})
    r = c.getresponse()
    print(r.status, r.read().decode().strip().replace("\n", " "), flush=True)
`, f.plainPort)
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
			if !lines.Scan() || !strings.HasPrefix(lines.Text(), "200 upstream HTTP/1.1 GET /public/0") {
				t.Fatalf("first request while tagged: %q %s", lines.Text(), stderr.String())
			}
			before := f.hits("intranet.test")
			if _, stderr, err := f.d.CLI("untag", tagged); err != nil {
				t.Fatalf("untag: %v %s", err, stderr)
			}
			io.WriteString(stdin, "go\n")
			if !lines.Scan() || !strings.HasPrefix(lines.Text(), "403 ") || !strings.Contains(lines.Text(), "identity-revoked") {
				t.Fatalf("request after untag: %q %s", lines.Text(), stderr.String())
			}
			stdin.Close()
			if err := cmd.Wait(); err != nil {
				t.Fatalf("agent: %v %s", err, stderr.String())
			}
			time.Sleep(100 * time.Millisecond) // nginx logs after answering
			if got := f.hits("intranet.test") - before; got != 0 {
				t.Errorf("the upstream served %d requests after the untag", got)
			}
		})
	}
}
