package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// hostileEnv makes the test binary a hostile agent: it attacks interlockd
// from a tagged cgroup, prints one JSON report, holds its connections
// until its stdin closes, and exits.
const hostileEnv = "INTERLOCK_HOSTILE_CLIENT"

func init() {
	if mode := os.Getenv(hostileEnv); mode != "" {
		os.Exit(hostile(mode, os.Args[1:]))
	}
}

// hostileReport is what a hostile agent saw: per connection, the SQLSTATE
// that ended it ("" for a connection still open).
type hostileReport struct {
	Codes   []string `json:"codes"`
	Open    int      `json:"open"`
	Answers int      `json:"answers"`
	// Cancelled is the SQLSTATE of a statement cancelled at the cap.
	Cancelled string `json:"cancelled"`
	ElapsedMS int64  `json:"elapsed_ms"`
	Err       string `json:"err"`
}

func hostile(mode string, args []string) int {
	var r hostileReport
	var closers []io.Closer
	start := time.Now()
	addr := args[0]
	switch mode {
	case "sessions":
		// Real client sessions, opened one after another and kept idle;
		// then, at the cap, the first one's long statement is cancelled.
		n, _ := strconv.Atoi(args[1])
		var first *pgconn.PgConn
		for i := 0; i < n; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := pgconn.Connect(ctx, "postgres://agent@"+addr+"/postgres?sslmode=disable")
			cancel()
			var pe *pgconn.PgError
			switch {
			case err == nil:
				if first == nil {
					first = c
				}
				r.Open++
				r.Codes = append(r.Codes, "")
				closers = append(closers, closerFunc(func() error { return c.Close(context.Background()) }))
			case errors.As(err, &pe):
				r.Codes = append(r.Codes, pe.Code)
			default:
				r.Codes = append(r.Codes, "error")
				r.Err = err.Error()
			}
		}
		if first != nil {
			res := first.Exec(context.Background(), "SELECT count(*) FROM generate_series(1, 2000000000)")
			time.Sleep(300 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			first.CancelRequest(ctx)
			cancel()
			_, err := res.ReadAll()
			var pe *pgconn.PgError
			if errors.As(err, &pe) {
				r.Cancelled = pe.Code
			}
		}
	case "declare":
		// n sessions each declare a Query of size bytes and send part of
		// it at once, then stall.
		n, _ := strconv.Atoi(args[1])
		size, _ := strconv.Atoi(args[2])
		part, _ := strconv.Atoi(args[3])
		r.Codes = make([]string, n)
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 0; i < n; i++ {
			conn, fe, err := rawSession(addr)
			if err != nil {
				r.Err = err.Error()
				break
			}
			closers = append(closers, conn)
			msg := binary.BigEndian.AppendUint32([]byte{'Q'}, uint32(size+4))
			msg = append(msg, make([]byte, part)...)
			for j := 5; j < len(msg); j++ {
				msg[j] = ' '
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn.Write(msg)
				conn.SetReadDeadline(time.Now().Add(3 * time.Second))
				code := fatalCode(fe)
				mu.Lock()
				r.Codes[i] = code
				if code == "" {
					r.Open++
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
	case "slow":
		// One statement begun and never finished.
		conn, fe, err := rawSession(addr)
		if err != nil {
			r.Err = err.Error()
			break
		}
		closers = append(closers, conn)
		start = time.Now()
		conn.Write(append([]byte{'Q', 0, 0, 0, 104}, "SELECT"...))
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		r.Codes = append(r.Codes, fatalCode(fe))
	case "pipeline":
		// Sync after Sync for a few seconds, never reading an answer.
		conn, _, err := rawSession(addr)
		if err != nil {
			r.Err = err.Error()
			break
		}
		closers = append(closers, conn)
		batch := make([]byte, 0, 5<<12)
		for len(batch) < cap(batch) {
			batch = append(batch, 'S', 0, 0, 0, 4)
		}
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		for {
			n, err := conn.Write(batch)
			r.Answers += n / 5
			if err != nil {
				break
			}
		}
	case "idle":
		// n connections that never send a byte; how long until the last
		// is closed.
		n, _ := strconv.Atoi(args[1])
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 0; i < n; i++ {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				r.Err = err.Error()
				break
			}
			closers = append(closers, conn)
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn.SetReadDeadline(time.Now().Add(40 * time.Second))
				io.Copy(io.Discard, conn)
				mu.Lock()
				r.Codes = append(r.Codes, "closed")
				mu.Unlock()
			}()
		}
		wg.Wait()
	case "sslflood":
		// SSLRequests as fast as they are taken, counting the answers.
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			r.Err = err.Error()
			break
		}
		closers = append(closers, conn)
		go func() {
			req := []byte{0, 0, 0, 8, 4, 210, 22, 47}
			for i := 0; i < 100000; i++ {
				if _, err := conn.Write(req); err != nil {
					return
				}
			}
		}()
		conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		var b [1]byte
		for {
			if _, err := conn.Read(b[:]); err != nil {
				break
			}
			r.Answers++
		}
	}
	r.ElapsedMS = time.Since(start).Milliseconds()
	json.NewEncoder(os.Stdout).Encode(r)
	io.Copy(io.Discard, os.Stdin)
	for _, c := range closers {
		c.Close()
	}
	return 0
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// rawSession starts a session by hand up to its first ReadyForQuery.
func rawSession(addr string) (net.Conn, *pgproto3.Frontend, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "agent", "database": "postgres"}})
	if err := fe.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	for {
		m, err := fe.Receive()
		if err != nil {
			conn.Close()
			return nil, nil, fmt.Errorf("startup: %w", err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			conn.Close()
			return nil, nil, fmt.Errorf("startup: %s %s", e.Code, e.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			conn.SetDeadline(time.Time{})
			return conn, fe, nil
		}
	}
}

// fatalCode waits for the ErrorResponse that ends a session and returns its
// SQLSTATE: "" when the session stayed open until the read deadline, "eof"
// when it ended without one.
func fatalCode(fe *pgproto3.Frontend) string {
	for {
		m, err := fe.Receive()
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		if err != nil {
			return "eof"
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			return e.Code
		}
	}
}

// attack is a hostile agent running unprivileged under `interlock exec`.
type attack struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startAttack(t *testing.T, d *daemontest.Daemon, agent, mode string, args ...string) (*attack, hostileReport) {
	t.Helper()
	argv := append([]string{"exec", "--identity", "ci-bot", "--", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", agent}, args...)
	cmd := d.Command(t.Context(), argv...)
	cmd.Env = append(os.Environ(), hostileEnv+"="+mode)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &attack{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(a.stop)
	line, err := a.out.ReadBytes('\n')
	var r hostileReport
	if err != nil || json.Unmarshal(line, &r) != nil {
		t.Fatalf("hostile agent %s: %v %q\n%s", mode, err, line, d.Logs())
	}
	return a, r
}

// stop lets the agent close its connections and waits for it.
func (a *attack) stop() {
	if a.stdin != nil {
		a.stdin.Close()
		a.stdin = nil
		a.cmd.Wait()
	}
}

// rssKiB is a process's resident set size.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// limitsConfig is the limits block of the tests, with a message timeout.
const limitsConfig = `limits:
  sessions: 3
  session_buffer: 4MiB
  identity_buffer: 6MiB
  message_timeout: %s
`

// TestSessionCapPerIdentity: an agent opening idle sessions gets three, its
// limit; the fourth and fifth are refused with 53300 and an audit event, a
// cancel request still works, silent connections over the cap are closed
// quickly, and a slot freed is a slot usable again.
func TestSessionCapPerIdentity(t *testing.T) {
	f := startPG(t, fmt.Sprintf(limitsConfig, "30s"))
	agent := agentBinary(t)
	addr := "127.0.0.1:" + strconv.Itoa(f.pg.Port)
	a, r := startAttack(t, f.d, agent, "sessions", addr, "5")
	if r.Open != 3 || len(r.Codes) != 5 || r.Codes[3] != "53300" || r.Codes[4] != "53300" {
		t.Fatalf("5 sessions against a cap of 3: %+v\n%s", r, f.d.Logs())
	}
	// A cancel request needs no slot: it works at the cap.
	if r.Cancelled != "57014" {
		t.Fatalf("statement cancelled at the cap: %q, want 57014 (query_canceled)", r.Cancelled)
	}
	// The server holds the three, not five.
	if n := f.pg.Psql(t, "SELECT count(*) FROM pg_stat_activity WHERE usename LIKE 'interlock%'"); n != "3" {
		t.Fatalf("%s server connections for the identity, want 3", n)
	}
	waitEvent(t, f.d, "limit_exceeded", func(m map[string]any) bool { return m["limit"] == "sessions" && m["identity"] == "ci-bot" })
	// At the cap, connections that never send their startup are closed
	// after the short over-cap handshake, not the 30 s one.
	_, idle := startAttack(t, f.d, agent, "idle", addr, "20")
	if len(idle.Codes) != 20 || idle.ElapsedMS > 6000 {
		t.Fatalf("20 silent connections at the cap: %+v", idle)
	}
	t.Logf("20 silent connections at the cap closed after %d ms", idle.ElapsedMS)
	a.stop()
	// Slots are given back when sessions end.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := f.psql(t, "SELECT 'again'")
		if err == nil && out == "again" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session after the others ended: %v %s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, _, _ := f.d.CLI("audit", "export")
	if !strings.Contains(out, "limit.exceeded") {
		t.Fatalf("no limit.exceeded record in the audit chain:\n%s", out)
	}
}

// TestBufferCapsBoundMemory: sessions declaring statements far larger than
// a session may buffer are refused at once with 54000; below the session
// cap, the identity's shared budget admits what fits and refuses the rest
// with 53200; a session pipelining without reading meets back-pressure;
// interlockd's resident memory stays within the budget.
func TestBufferCapsBoundMemory(t *testing.T) {
	f := startPG(t, fmt.Sprintf(limitsConfig, "30s"))
	agent := agentBinary(t)
	addr := "127.0.0.1:" + strconv.Itoa(f.pg.Port)
	before := rssKiB(t, f.d.PID())

	// Three 63 MiB statements, as in the issue: refused before any allocation.
	a, r := startAttack(t, f.d, agent, "declare", addr, "3", strconv.Itoa(63<<20), strconv.Itoa(1<<20))
	for _, code := range r.Codes {
		if code != "54000" {
			t.Fatalf("declared 63 MiB statements: %+v\n%s", r, f.d.Logs())
		}
	}
	grown63 := rssKiB(t, f.d.PID()) - before
	a.stop()
	waitEvent(t, f.d, "limit_exceeded", func(m map[string]any) bool { return m["limit"] == "message_buffer" })

	// Three 3.5 MiB statements, all but their last byte sent and held: the
	// 6 MiB budget admits one.
	a, r = startAttack(t, f.d, agent, "declare", addr, "3", strconv.Itoa(7<<19), strconv.Itoa(7<<19-1))
	refused := 0
	for _, code := range r.Codes {
		if code == "53200" {
			refused++
		} else if code != "" {
			t.Fatalf("3.5 MiB statements: %+v\n%s", r, f.d.Logs())
		}
	}
	if r.Open != 1 || refused != 2 {
		t.Fatalf("3.5 MiB statements against a 6 MiB budget: %+v", r)
	}
	grownHeld := rssKiB(t, f.d.PID()) - before
	a.stop()
	waitEvent(t, f.d, "limit_exceeded", func(m map[string]any) bool { return m["limit"] == "buffer_budget" })
	// Syncs for 5 s without reading an answer: back-pressure, not a queue
	// growing by an entry per message.
	a, r = startAttack(t, f.d, agent, "pipeline", addr)
	grownPipe := rssKiB(t, f.d.PID()) - before
	a.stop()
	t.Logf("interlockd RSS %d KiB before; +%d KiB with three 63 MiB statements refused, +%d KiB with a 3.5 MiB one held and two refused, +%d KiB after %d Syncs never answered",
		before, grown63, grownHeld, grownPipe, r.Answers)
	if grown63 > 16<<10 || grownHeld > 24<<10 || grownPipe > 24<<10 {
		t.Fatalf("memory not bounded: +%d KiB, +%d KiB, +%d KiB", grown63, grownHeld, grownPipe)
	}
}

// TestSlowMessageAndHandshakeFlood: a statement begun and never finished
// ends its session after message_timeout; an endless SSLRequest stream gets
// one answer and the connection closes at once.
func TestSlowMessageAndHandshakeFlood(t *testing.T) {
	f := startPG(t, fmt.Sprintf(limitsConfig, "2s"))
	agent := agentBinary(t)
	addr := "127.0.0.1:" + strconv.Itoa(f.pg.Port)
	_, r := startAttack(t, f.d, agent, "slow", addr)
	if len(r.Codes) != 1 || r.Codes[0] != "08P01" || r.ElapsedMS < 2000 || r.ElapsedMS > 5000 {
		t.Fatalf("unfinished statement: %+v, want 08P01 after about 2 s\n%s", r, f.d.Logs())
	}
	waitEvent(t, f.d, "limit_exceeded", func(m map[string]any) bool { return m["limit"] == "message_timeout" })
	slowMS := r.ElapsedMS

	_, r = startAttack(t, f.d, agent, "sslflood", addr)
	if r.Answers != 1 || r.ElapsedMS > 2000 {
		t.Fatalf("SSLRequest flood: %+v, want one answer and a prompt close", r)
	}
	// interlockd offers TLS, so the answer is 'S' and the second
	// SSLRequest fails as the TLS handshake it should have been.
	waitEvent(t, f.d, "connection_close", func(m map[string]any) bool {
		return m["outcome"] == "handshake" && strings.Contains(fmt.Sprint(m["reason"]), "tls handshake with agent")
	})
	t.Logf("unfinished statement ended after %d ms; SSLRequest flood: %d answer, closed after %d ms", slowMS, r.Answers, r.ElapsedMS)
}

// TestDescriptorExhaustionPausesAccepting: an unprivileged agent holds
// more plain TCP connections than interlockd has descriptors left (its
// limit lowered for the test). interlockd pauses accepting, logged, and
// another identity's connection meanwhile waits in the listen queue or,
// accepted when a descriptor came free but none left for its upstream, is
// reset ("upstream unreachable", as nginx and HAProxy answer a failed
// upstream socket); it never hangs. Once the hoarder lets go, both
// identities are served again. Before, the accept's EMFILE ended the
// listener's loop: interlockd stayed up and answered its CLI, but accepted
// no redirected connection again.
func TestDescriptorExhaustionPausesAccepting(t *testing.T) {
	metricsPort := testenv.FreePort(t)
	f := startConfig(t, fmt.Sprintf("metrics_listen: 127.0.0.1:%d\n", metricsPort))
	tg := newTarget(t, "tcp4", "127.0.0.1:0")
	// The agents after the hoarder are put in tagged cgroups directly:
	// `interlock exec` asks interlockd for things that take descriptors.
	otherCgroup, botCgroup := f.tagged(t, "other", "other"), f.tagged(t, "bot", "ci-bot")
	open, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", f.d.PID()))
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Prlimit(f.d.PID(), unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	// Each relayed connection takes two: the agent's and the upstream's.
	lim.Cur = uint64(len(open) + 24)
	if err := unix.Prlimit(f.d.PID(), unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatal(err)
	}
	const held = 60
	hoarder := f.d.Command(t.Context(), "exec", "--identity", "ci-bot", "--",
		"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", f.agent, fmt.Sprintf("%d|%s|1s", held, tg.addr()))
	hoarder.Env = append(os.Environ(), clientEnv+"=hoard")
	// The report is the hoarder's output; `interlock exec`'s own lines go
	// to its error output: its release of the cgroup may find interlockd
	// still out of descriptors, and say the cgroup stays tagged.
	var out, errOut bytes.Buffer
	hoarder.Stdout, hoarder.Stderr = &out, &errOut
	if err := hoarder.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(f.d.Logs(), "accepting paused"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			hoarder.Wait()
			t.Fatalf("no pause logged: the hoarder reported %s%s\n%s", out.String(), errOut.String(), f.d.Logs())
		}
	}
	unprivileged := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", f.agent, tg.addr()}
	began := time.Now()
	during := f.runArgvIn(t, otherCgroup, "tcp", unprivileged...)
	// Reset if no descriptor was left for its upstream; closed if none
	// was left to read its cgroup, the first time one of it connects
	// (refusing unidentified connection): either way, not left waiting.
	if during.Line != "hello from target" && during.Errno != int(syscall.ECONNRESET) && during.Err != "EOF" {
		t.Fatalf("another identity's connection while the hoarder held its own: %+v, want a greeting, a reset or a close\n%s", during, f.d.Logs())
	}
	t.Logf("another identity's connection meanwhile: %q %s, after %v", during.Line, during.Err, time.Since(began).Round(time.Millisecond))
	if err := hoarder.Wait(); err != nil {
		t.Fatalf("hoarder: %v\n%s%s", err, out.String(), errOut.String())
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("hoarder's report %q: %v\n%s", out.String(), err, errOut.String())
	}
	if r.OK == 0 || r.OK >= held {
		t.Errorf("%d of the hoarder's %d connections greeted, want some and not all (the limit bit)", r.OK, held)
	}
	// The hoarder's next connection, and the other identity's, are served
	// once the queue its closed ones left is drained: each of those is
	// accepted and relayed in turn, so one just behind them may still find
	// no descriptor for its upstream, and be reset, or none to read its
	// cgroup, and be closed, as during the pause.
	if r.Line != "hello from target" && r.Errno != int(syscall.ECONNRESET) && r.Err != "EOF" {
		t.Fatalf("the hoarder's connection after letting go: %+v, want a greeting, a reset or a close\n%s", r, f.d.Logs())
	}
	for _, cgroup := range []string{otherCgroup, botCgroup} {
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			after := f.runArgvIn(t, cgroup, "tcp", unprivileged...)
			if after.Err == "" && after.Line == "hello from target" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no connection served after the hoarder let go: %+v\n%s", after, f.d.Logs())
			}
		}
	}
	if !strings.Contains(f.d.Logs(), "accepting again") {
		t.Errorf("no end of the pause logged:\n%s", f.d.Logs())
	}
	if m := regexp.MustCompile(`(?m)^interlock_accept_pauses_total (\d+)$`).FindStringSubmatch(scrapeMetrics(t, metricsPort)); m == nil || m[1] == "0" {
		t.Errorf("accept pauses counted: %v, want some", m)
	}
}

// TestPlainConnectionCapPerIdentity: an identity's plain TCP connections
// are capped (limits.connections): one over the cap is reset, logged and
// audited as the limit, while another identity's connections go on; the
// identity's slots come back as its connections close. Before, plain
// relays had no cap: one agent could hold connections until interlockd
// ran out of descriptors for everyone.
func TestPlainConnectionCapPerIdentity(t *testing.T) {
	f := startConfig(t, "limits: {connections: 3}\n")
	tg := newTarget(t, "tcp4", "127.0.0.1:0")
	unprivileged := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"}
	hoarder := f.d.Command(t.Context(), append(append([]string{"exec", "--identity", "ci-bot", "--"}, unprivileged...),
		f.agent, fmt.Sprintf("5|%s|2s", tg.addr()))...)
	hoarder.Env = append(os.Environ(), clientEnv+"=hoard")
	var out bytes.Buffer
	hoarder.Stdout, hoarder.Stderr = &out, &out
	if err := hoarder.Start(); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, f.d, "limit_exceeded", func(m map[string]any) bool { return m["limit"] == "connections" && m["identity"] == "ci-bot" })
	if r := f.run(t, "other", "tcp", tg.addr(), unprivileged...); r.Err != "" || r.Line != "hello from target" {
		t.Errorf("another identity's connection at ci-bot's cap: %+v", r)
	}
	if err := hoarder.Wait(); err != nil {
		t.Fatalf("hoarder: %v\n%s", err, out.String())
	}
	var r report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("hoarder's report %q: %v", out.String(), err)
	}
	if r.OK != 3 {
		t.Errorf("%d of 5 connections greeted with a cap of 3", r.OK)
	}
	closes := 0
	for _, ev := range auditEvents(f.d, "connection_close") {
		if ev["outcome"] == "connection limit" {
			closes++
		}
	}
	// The hoarder's last connection may find its slots not yet given back:
	// each comes back once its relay has ended both sides.
	if closes < 2 || closes > 3 {
		t.Errorf("%d connections closed as over the limit, want the 2 over it:\n%s", closes, f.d.Logs())
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r := f.run(t, "ci-bot", "tcp", tg.addr(), unprivileged...)
		if r.Err == "" && r.Line == "hello from target" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection once the others closed: %+v", r)
		}
	}
	out2, _, _ := f.d.CLI("audit", "export")
	if !strings.Contains(out2, `"limit":"connections"`) {
		t.Errorf("no limit.exceeded record for connections in the audit chain")
	}
}
