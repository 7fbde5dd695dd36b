package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/interlock-dev/interlock/agent/audit/chain"
	"github.com/interlock-dev/interlock/agent/control"
)

// TestMain lets the test binary stand in for interlock as exec's shim: the
// child exec starts is os.Executable(), the test binary here.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == shimCommand {
		os.Exit(execShim(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// cliRun runs interlock with args and returns the exit code, stdout and
// stderr.
func cliRun(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// fakeDaemon answers the control API calls the CLI makes with fixed
// answers, on a real control socket, and returns the socket.
func fakeDaemon(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "interlock.sock")
	l, err := control.Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	started := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	answers := map[string]any{
		"GET /v1/status": control.Status{PID: 42, Started: started, CgroupRoot: "/sys/fs/cgroup", Policy: "policy.yaml",
			Tagged: []control.TagEntry{{Cgroup: "/ci/runner", Identity: "ci-bot"}}},
		"GET /v1/sessions": []control.Session{{ID: "s-1", Identity: "ci-bot", Target: "db", PID: 7, Started: started,
			Ended: started.Add(time.Second), Outcome: "closed"}},
		"GET /v1/audit/verify": []control.AuditVerdict{{Host: "h1", Records: 3, OK: true, Summary: "h1: ok, 3 records",
			HeadSeq: 3, HeadHash: strings.Repeat("a", 64)}},
		"GET /v1/ca":            control.CAInfo{Path: "/run/interlock/ca.crt"},
		"POST /v1/exec":         control.ExecAnswer{Cgroup: "/interlock-exec/ci-bot-1"},
		"POST /v1/exec/release": control.TagEntry{Cgroup: "/interlock-exec/ci-bot-1"},
	}
	mux := http.NewServeMux()
	for route, answer := range answers {
		mux.HandleFunc(route, func(w http.ResponseWriter, r *http.Request) {
			a := answer
			if r.URL.Query().Get("identity") == "nobody" {
				a = []control.Session{} // the sessions of an identity with none
			}
			control.WriteJSON(w, http.StatusOK, a)
		})
	}
	srv := control.NewServer(mux)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// ours reports whether cmd is one of interlock's commands rather than one
// cobra adds (help, completion).
func ours(cmd *cobra.Command) bool {
	for c := cmd; c != nil; c = c.Parent() {
		if c.Name() == "completion" || c.Name() == "help" {
			return false
		}
	}
	return true
}

func TestHelpForEveryCommand(t *testing.T) {
	root := newRoot(&cli{})
	var walk func(cmd *cobra.Command)
	n := 0
	walk = func(cmd *cobra.Command) {
		n++
		path := strings.Fields(cmd.CommandPath())[1:]
		if ours(cmd) && (cmd.Short == "" || cmd.Long == "" || !cmd.HasSubCommands() && cmd.Example == "") {
			t.Errorf("%q: want a short and a long description and examples", cmd.CommandPath())
		}
		code, out, errOut := cliRun(append(path, "--help")...)
		if code != 0 || !strings.Contains(out, "Usage:") || errOut != "" {
			t.Errorf("%s --help: exit %d\n%s%s", cmd.CommandPath(), code, out, errOut)
		}
		if cmd.Long != "" && !strings.Contains(out, strings.SplitN(cmd.Long, "\n", 2)[0]) {
			t.Errorf("%s --help does not show the long description:\n%s", cmd.CommandPath(), out)
		}
		for _, sub := range cmd.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if n < 20 {
		t.Errorf("walked %d commands", n)
	}
	if code, out, _ := cliRun("help", "policy", "replay"); code != 0 || !strings.Contains(out, "--port-map") {
		t.Errorf("help policy replay: exit %d\n%s", code, out)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, errOut := cliRun("completion", shell)
		if code != 0 || !strings.Contains(out, "interlock") || len(out) < 1000 {
			t.Errorf("completion %s: exit %d, %d bytes, stderr %q", shell, code, len(out), errOut)
		}
	}
	for _, args := range [][]string{{"completion"}, {"completion", "tcsh"}} {
		if code, out, errOut := cliRun(args...); code != 2 || out != "" || !strings.Contains(errOut, "interlock completion: ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
	// The scripts ask the binary; commands, flags and flag values complete.
	for args, want := range map[string]string{
		"__complete pol":                      "policy",
		"__complete policy re":                "replay",
		"__complete approvals --state ":       "cancelled",
		"__complete sessions --decision ":     "mask",
		"__complete exec --iden":              "--identity",
		"__complete audit verify --":          "--export",
		"__complete --socket /x tag --identi": "--identity",
	} {
		code, out, errOut := cliRun(strings.Split(args, " ")...)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d, want %q in\n%s%s", args, code, want, out, errOut)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := cliRun("--version")
	if code != 0 || !strings.HasPrefix(out, "interlock dev (commit ") {
		t.Errorf("--version: exit %d, %q", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"stats"}, "did you mean status?"},
		{[]string{"policy", "frobnicate"}, `interlock policy: unknown command "frobnicate"`},
		{[]string{"audit"}, "interlock audit: missing command"},
		{[]string{"status", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"sessions", "--since", "yesterday"}, "not a duration"},
		{[]string{"sessions", "extra"}, "unknown command"},
		{[]string{"exec", "--identity", "ci-bot"}, "usage: interlock exec"},
		{[]string{"exec", "--", "true"}, "usage: interlock exec"},
		// An ID left empty (an unset shell variable) is refused here, not
		// sent to interlockd, whose answer was its 404 page.
		{[]string{"replay", ""}, "interlock replay: the ID is empty"},
		{[]string{"replay", "a", "b"}, "accepts 1 arg(s), received 2"},
		{[]string{"export", " ", "--pcap", "s.pcap"}, "interlock export: the ID is empty"},
		{[]string{"export", "s-1"}, "give one of --pcap FILE and --asciicast FILE"},
		{[]string{"approve", ""}, "interlock approve: the ID is empty"},
		{[]string{"deny", "\t"}, "interlock deny: the ID is empty"},
	} {
		code, out, errOut := cliRun(c.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q (want %q)", c.args, code, out, errOut, c.want)
		}
	}
	// Failures that are not usage errors exit 1 with the daemon's reason.
	code, _, errOut := cliRun("--socket", filepath.Join(t.TempDir(), "none.sock"), "status")
	if code != 1 || !strings.HasPrefix(errOut, "interlock: interlockd is not running") {
		t.Errorf("status with no daemon: exit %d, %q", code, errOut)
	}
}

// Every listing prints JSON that parses into the control API's types.
func TestJSONListings(t *testing.T) {
	sock := fakeDaemon(t)
	var st control.Status
	code, out, errOut := cliRun("--socket", sock, "status", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.PID != 42 || len(st.Tagged) != 1 || st.Tagged[0].Identity != "ci-bot" {
		t.Errorf("status --json: exit %d, %q %q", code, out, errOut)
	}
	var ss []control.Session
	code, out, errOut = cliRun("--socket", sock, "sessions", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &ss) != nil || len(ss) != 1 || ss[0].ID != "s-1" || ss[0].Outcome != "closed" {
		t.Errorf("sessions --json: exit %d, %q %q", code, out, errOut)
	}
	code, out, _ = cliRun("--socket", sock, "sessions", "--identity", "nobody")
	if code != 0 || !strings.Contains(out, "no recorded sessions match (plain TCP relays are audited, not recorded") {
		t.Errorf("sessions with none: exit %d, %q", code, out)
	}
	var vs []control.AuditVerdict
	code, out, errOut = cliRun("--socket", sock, "audit", "verify", "--json")
	if code != 0 || json.Unmarshal([]byte(out), &vs) != nil || len(vs) != 1 || !vs[0].OK || vs[0].HeadSeq != 3 {
		t.Errorf("audit verify --json: exit %d, %q %q", code, out, errOut)
	}
	var cases []testedCase
	code, out, errOut = cliRun("policy", "test", "--json", examplePolicy(t))
	if code != 0 || json.Unmarshal([]byte(out), &cases) != nil || len(cases) != 18 || !cases[0].Pass || cases[0].Action == "" {
		t.Errorf("policy test --json: exit %d, %q %q", code, out, errOut)
	}
	// The same listings as text.
	if code, out, _ := cliRun("--socket", sock, "status"); code != 0 || !strings.Contains(out, "/ci/runner  ci-bot") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	if code, out, _ := cliRun("--socket", sock, "audit", "verify"); code != 0 || out != "h1: ok, 3 records\n" {
		t.Errorf("audit verify: exit %d\n%s", code, out)
	}
}

// audit verify --store runs interlockd, found on the PATH here, and reports
// its verdicts and its errors as its own; --export is verified by interlock
// itself.
func TestAuditVerifyOffline(t *testing.T) {
	dir := t.TempDir()
	script := `#!/bin/sh
case "$1" in
--audit-verify-store=good) echo '[{"host":"h1","records":3,"ok":true,"summary":"h1: ok, 3 records"}]' ;;
--audit-verify-store=broken) echo '[{"host":"h1","records":1,"ok":false,"summary":"h1: BROKEN at seq 2"}]' ;;
*) echo "interlockd: open store: $1" >&2; exit 1 ;;
esac
`
	if err := os.WriteFile(filepath.Join(dir, "interlockd"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	none := filepath.Join(t.TempDir(), "none.sock")
	if code, out, errOut := cliRun("--socket", none, "audit", "verify", "--store", "good"); code != 0 || out != "h1: ok, 3 records\n" {
		t.Errorf("good store: exit %d, %q %q", code, out, errOut)
	}
	code, out, errOut := cliRun("--socket", none, "audit", "verify", "--store", "broken")
	if code != 1 || out != "h1: BROKEN at seq 2\n" || errOut != "interlock: audit chain is broken\n" {
		t.Errorf("broken store: exit %d, %q %q", code, out, errOut)
	}
	code, _, errOut = cliRun("--socket", none, "audit", "verify", "--store", "/nowhere/interlock.db")
	if code != 1 || errOut != "interlock: open store: --audit-verify-store=/nowhere/interlock.db\n" {
		t.Errorf("unreadable store: exit %d, %q", code, errOut)
	}
	if code, _, errOut := cliRun("audit", "verify", "--store", "a", "--export", "b"); code != 1 || !strings.Contains(errOut, "usage:") {
		t.Errorf("both sources: exit %d, %q", code, errOut)
	}

	// An export of two records, then the same with the first edited.
	var export strings.Builder
	prev := chain.GenesisHash
	for seq := uint64(1); seq <= 2; seq++ {
		r := chain.Record{Host: "h1", Seq: seq, Time: time.Unix(int64(seq), 0).UTC(), Kind: "decision",
			Payload: `{"rule":"r"}`, PrevHash: prev}
		r.Hash = chain.Hash(r)
		line, _ := json.Marshal(chain.ExportedRecord{Host: r.Host, Seq: r.Seq, Time: r.Time, Kind: r.Kind,
			Payload: json.RawMessage(r.Payload), PrevHash: r.PrevHash, Hash: r.Hash})
		export.Write(append(line, '\n'))
		prev = r.Hash
	}
	good := filepath.Join(dir, "good.jsonl")
	os.WriteFile(good, []byte(export.String()), 0o600)
	code, out, errOut = cliRun("--socket", none, "audit", "verify", "--export", good)
	if code != 0 || !strings.HasPrefix(out, "h1: ok, 2 records, head seq 2 hash "+prev) {
		t.Errorf("good export: exit %d, %q %q", code, out, errOut)
	}
	tampered := filepath.Join(dir, "tampered.jsonl")
	os.WriteFile(tampered, []byte(strings.Replace(export.String(), `"rule":"r"`, `"rule":"x"`, 1)), 0o600)
	code, out, _ = cliRun("--socket", none, "audit", "verify", "--export", tampered)
	if code != 1 || !strings.HasPrefix(out, "h1: BROKEN at seq 1: hash mismatch") {
		t.Errorf("tampered export: exit %d, %q", code, out)
	}
}

// exec hands everything after -- (or after the command's name) to the
// command untouched, flags included, and passes its exit code through.
func TestExecPassesArguments(t *testing.T) {
	sock := fakeDaemon(t)
	got := filepath.Join(t.TempDir(), "argv")
	record := `printf '%s|' "$0" "$@" "$PGSSLROOTCERT" > ` + got
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"exec", "--identity", "ci-bot", "--", "sh", "-c", record, "-x", "--help", "--identity=other", "--"},
			"-x|--help|--identity=other|--|/run/interlock/ca.crt|"},
		{[]string{"exec", "--identity", "ci-bot", "sh", "-c", record, "-x", "-v"}, "-x|-v|/run/interlock/ca.crt|"},
		{[]string{"exec", "--identity", "ci-bot", "--no-ca-env", "--", "sh", "-c", record, "$HOME"}, "$HOME||"},
	} {
		os.Remove(got)
		t.Setenv("PGSSLROOTCERT", "")
		code, _, errOut := cliRun(append([]string{"--socket", sock}, c.args...)...)
		data, _ := os.ReadFile(got)
		if code != 0 || string(data) != c.want {
			t.Errorf("%q: exit %d, argv %q, want %q; stderr %q", c.args, code, data, c.want, errOut)
		}
	}
	if code, _, errOut := cliRun("--socket", sock, "exec", "--identity", "ci-bot", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exit 7: got %d, stderr %q", code, errOut)
	}
	if code, _, _ := cliRun("--socket", sock, "exec", "--identity", "ci-bot", "--", "no-such-command-here"); code != 127 {
		t.Errorf("missing command: exit %d, want 127", code)
	}
}

// ssh setup adds the host CA's line once, keeps the file's other lines and
// replaces a line of an earlier Interlock CA.
func TestTrustHostCA(t *testing.T) {
	file := filepath.Join(t.TempDir(), "ssh", "ssh_known_hosts")
	line := "@cert-authority * ssh-ed25519 AAAAnew interlock"
	if added, err := trustHostCA(file, line); !added || err != nil {
		t.Fatalf("first: %v %v", added, err)
	}
	if added, err := trustHostCA(file, line); added || err != nil {
		t.Fatalf("again: %v %v", added, err)
	}
	os.WriteFile(file, []byte("web-1 ssh-ed25519 AAAAweb\n@cert-authority * ssh-ed25519 AAAAold interlock\n"), 0o644)
	if added, err := trustHostCA(file, line); !added || err != nil {
		t.Fatalf("replace: %v %v", added, err)
	}
	got, _ := os.ReadFile(file)
	if want := "web-1 ssh-ed25519 AAAAweb\n" + line + "\n"; string(got) != want {
		t.Errorf("file:\n%s\nwant:\n%s", got, want)
	}
}
