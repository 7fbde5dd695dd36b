package daemon_test

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/testenv"
)

// TestIdleSessionMemory opens PostgreSQL sessions through the whole path
// that each run a statement and wait, and measures what interlockd holds
// for each: its goroutines and their stacks, its live heap (after a
// collection) and its descriptors. An idle session holds no goroutine and
// no buffer, not its relay's, not its recording's, and no descriptor but
// its two sockets.
func TestIdleSessionMemory(t *testing.T) {
	testenv.Privileged(t)
	const sessions = 200
	pg := testenv.StartPostgres(t, "max_connections = 300")
	pg.Psql(t, `CREATE ROLE agent_rw NOLOGIN`)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(fmt.Sprintf(benchPolicy, pg.Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	metrics := testenv.FreePort(t)
	cfg := filepath.Join(dir, "interlockd.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("log_level: warn\nmetrics_listen: 127.0.0.1:%d\nlimits: {sessions: %d}\ncredentials:\n  pool: {appdb: 8}\n  embedded:\n    embedded: {admin_dsn: %q}\n",
		metrics, sessions+8, pg.AdminDSN())), 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemontest.Start(t, daemontest.Options{Policy: pol, Config: cfg})
	agent := d.Cgroup("idle")
	if _, stderr, err := d.CLI("tag", agent, "--identity", "bench"); err != nil {
		t.Fatalf("tag: %v %s", err, stderr)
	}
	// The runtime's MemStats, read after collections: each halves the
	// stacks of parked goroutines that use under a quarter of theirs (a
	// session's login grows its goroutine's to 32 KiB). The least of three
	// reads a second apart: the daemon's own work (the store's batches,
	// the credential pool's refills) comes and goes.
	memstat := func() (heap, stack int64) {
		heap, stack = math.MaxInt64, math.MaxInt64
		for i := range 3 {
			time.Sleep(time.Duration(i) * time.Second)
			var b []byte
			for range 3 {
				resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap?debug=1&gc=1", metrics))
				if err != nil {
					t.Fatal(err)
				}
				b, _ = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			field := func(re string) int64 {
				m := regexp.MustCompile(re).FindSubmatch(b)
				if m == nil {
					t.Fatalf("no %s in the heap profile", re)
				}
				v, _ := strconv.ParseInt(string(m[1]), 10, 64)
				return v
			}
			heap, stack = min(heap, field(`# HeapAlloc = (\d+)`)), min(stack, field(`# Stack = (\d+)`))
		}
		return heap, stack
	}
	// Stacks are counted from before any session: the runtime keeps the
	// stacks of goroutines that ended for the next. The heap is counted
	// after a first round, since what any session leaves behind (pools,
	// caches, the store's pages) is not an idle session's.
	// Goroutines, from the goroutine profile's total.
	goroutines := func() int64 {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", metrics))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`goroutine profile: total (\d+)`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("no total in the goroutine profile:\n%s", b)
		}
		v, _ := strconv.ParseInt(string(m[1]), 10, 64)
		return v
	}
	_, stack0 := memstat()
	g0 := goroutines()
	stop := testenv.OpenIdleSessions(t, pg, agent, pg.Port, "agent", "", sessions)
	stop()
	heap0, _ := memstat()
	fds0 := daemonFDs(d)
	stop = testenv.OpenIdleSessions(t, pg, agent, pg.Port, "agent", "", sessions)
	defer stop()
	heap1, stack1 := memstat()
	// memstat took 3 s: every session has been idle for longer than the
	// relay's idle interval (postgres.idleAfter).
	g1 := goroutines()
	heapPer, stackPer := (heap1-heap0)/sessions, (stack1-stack0)/sessions
	// Two descriptors, its sockets: the recording's file is closed once
	// the session was idle for a flush interval (recording.Session's
	// shutFile), which memstat's 3 s exceed; it held a third.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		fds := daemonFDs(d) - fds0
		if fds <= 2*sessions+sessions/20 {
			t.Logf("per idle session: %.2f descriptors", float64(fds)/sessions)
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d descriptors for %d idle sessions, want two each, their sockets", fds, sessions)
			break
		}
	}
	t.Logf("per idle session: %d bytes of live heap, %d of stack, %.2f goroutines", heapPer, stackPer, float64(g1-g0)/sessions)
	// No goroutine: both sides' waits went to the watcher (postgres.Relay's
	// suspend and suspendServer, the session detached). A few of the
	// daemon's own come and go.
	if g1-g0 > sessions/20 {
		t.Errorf("%d goroutines for %d idle sessions, want none", g1-g0, sessions)
	}
	// What the runtime keeps of the ended goroutines' stacks for the next
	// ones, which it counts as stack (5.7 to 7 KiB measured). With the server
	// side's goroutine parked it was 14.4 to 14.9 KiB; 26.7 KiB before
	// the session's frames left that stack while it waits
	// (session.Pipeline.Handle); 17 KiB while the client side kept a
	// goroutine too.
	if stackPer > 11<<10 {
		t.Errorf("%d bytes of goroutine stack per idle session, want at most 11 KiB", stackPer)
	}
	// 6 to 10 KiB: the relay, the recording, the session's records and
	// credential, its sockets. Buffers held while idle were 30 KiB more
	// (35 to 39 in all). Some runs measure 20 to 24 KiB, 12 to 16 more
	// (2026-12-02: four in 30, all within minutes of other heavy jobs,
	// not reproduced since under CPU or disk load): the bound leaves them
	// room and still fails the old code.
	if heapPer > 28<<10 {
		t.Errorf("%d bytes of live heap per idle session, want at most 28 KiB", heapPer)
	}
}
