package recording_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/recording/pcap"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/agent/store/storetest"
	"github.com/interlock-dev/interlock/agent/testenv"
	"github.com/interlock-dev/interlock/decoders/ssh"
)

// relay is a minimal PostgreSQL-aware proxy for the test: it frames the
// protocol both ways, records every message, denies statements containing
// DROP the way interlockd does (ErrorResponse 42501, session goes on) and
// allows the rest. It lets real clients produce a real recording.
type relay struct {
	t     *testing.T
	ln    net.Listener
	sock  string // upstream unix socket (trust auth)
	addr  string // upstream TCP address, recorded as the session's upstream
	rec   *recording.Recorder
	ended chan store.Session
	wg    sync.WaitGroup
}

func startRelay(t *testing.T, pg *testenv.Postgres, rec *recording.Recorder) *relay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, ln: ln, sock: filepath.Join(pg.SocketDir, ".s.PGSQL."+strconv.Itoa(pg.Port)), addr: pg.Addr(),
		rec: rec, ended: make(chan store.Session, 16)}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.wg.Wait() })
	return r
}

func readMsg(rd io.Reader, typed bool) (byte, []byte, error) {
	var hdr [5]byte
	h := hdr[1:]
	if typed {
		h = hdr[:]
	}
	if _, err := io.ReadFull(rd, h); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > 64<<20 {
		return 0, nil, fmt.Errorf("bad length %d", n)
	}
	body := make([]byte, n-4)
	_, err := io.ReadFull(rd, body)
	return hdr[0], body, err
}

func writeMsg(w io.Writer, typ byte, body []byte) error {
	var b []byte
	if typ != 0 {
		b = append(b, typ)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)+4))
	_, err := w.Write(append(b, body...))
	return err
}

func (r *relay) handle(c net.Conn) {
	defer c.Close()
	ctx := context.Background()
	up, err := net.Dial("unix", r.sock)
	if err != nil {
		r.t.Error(err)
		return
	}
	defer up.Close()
	sess, err := r.rec.Start(ctx, store.Session{Identity: "ci", PID: int32(os.Getpid()), UID: 0, Exe: "/usr/bin/test",
		Cgroup: "/interlock/ci", Target: "orders", Protocol: "postgresql",
		ClientAddr: c.RemoteAddr().String(), UpstreamAddr: r.addr}, nil)
	if err != nil {
		r.t.Error(err)
		return
	}
	_, startup, err := readMsg(c, false)
	if err != nil {
		r.t.Error(err)
		return
	}
	sess.Message(true, 0, startup, time.Time{})
	writeMsg(up, 0, startup)

	var mu sync.Mutex // serializes writes to the client from both loops
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, body, err := readMsg(up, true)
			if err != nil {
				return
			}
			sess.Message(false, typ, body, time.Time{})
			mu.Lock()
			writeMsg(c, typ, body)
			mu.Unlock()
		}
	}()
	discard := false // after a denied extended-protocol message, until Sync
	for {
		typ, body, err := readMsg(c, true)
		if err != nil {
			break
		}
		seq := sess.Message(true, typ, body, time.Time{})
		var stmt string
		switch typ {
		case 'Q':
			var q pgproto3.Query
			q.Decode(body)
			stmt = q.String
		case 'P':
			var p pgproto3.Parse
			p.Decode(body)
			stmt = p.Query
		case 'S':
			discard = false
		}
		if discard {
			continue
		}
		if stmt != "" {
			if strings.Contains(stmt, "DROP") {
				sess.Decide(seq, recording.Verdict{Action: "deny", Rule: "no-drop", Enforced: true, Statement: stmt}, time.Time{})
				er := (&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42501", Message: "denied by interlock rule no-drop"}).Encode
				eb, _ := er(nil)
				rb, _ := (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(nil)
				mu.Lock()
				sess.Message(false, eb[0], eb[5:], time.Time{})
				c.Write(eb)
				if typ == 'Q' {
					sess.Message(false, rb[0], rb[5:], time.Time{})
					c.Write(rb)
				} else {
					discard = true
				}
				mu.Unlock()
				continue
			}
			sess.Decide(seq, recording.Verdict{Action: "allow", Rule: "read-write", Enforced: true, Statement: stmt}, time.Time{})
		}
		writeMsg(up, typ, body)
		if typ == 'X' {
			break
		}
	}
	up.Close()
	<-done
	ss, err := sess.Finish(ctx, recording.End{Outcome: "closed"})
	if err != nil {
		r.t.Error(err)
	}
	r.ended <- ss
}

func (r *relay) port() int { return r.ln.Addr().(*net.TCPAddr).Port }

func (r *relay) waitEnd(t *testing.T) store.Session {
	t.Helper()
	select {
	case ss := <-r.ended:
		return ss
	case <-time.After(30 * time.Second):
		t.Fatal("session never ended")
		return store.Session{}
	}
}

var (
	bigQuery  = "SELECT length('" + strings.Repeat("q", 150000) + "') AS big_query"
	bigResult = 200000
)

// A real pgx session through the recording relay: the transcript, the store
// rows, the audit events and the pcap (checked with the real tshark) must all
// show what happened.
func TestRecordRealSession(t *testing.T) {
	pg := testenv.StartPostgres(t)
	if _, err := exec.LookPath("tshark"); err != nil {
		testenv.Unavailable(t, "tshark not installed (apt-get install tshark)")
	}
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		ctx := context.Background()
		st := open(t)
		al := audit.New(st, "host-a")
		t.Cleanup(func() { al.Close() })
		dir := t.TempDir()
		rec, err := recording.NewRecorder(st, dir, "host-a", recording.WithAudit(al), recording.WithFlushInterval(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rec.Close() })
		r := startRelay(t, pg, rec)

		dsn := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", r.port())
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		simple := pgx.QueryExecModeSimpleProtocol
		for _, q := range []string{
			"CREATE TEMP TABLE patients (id int, name text, ssn text)",
			"INSERT INTO patients VALUES (1, 'alice', '123-45-6789'), (2, 'bob', '987-65-4321'), (3, 'carol', NULL)",
			"DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$",
		} {
			if _, err := conn.Exec(ctx, q, simple); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		rows, _ := conn.Query(ctx, "SELECT id, name, ssn FROM patients ORDER BY id", simple)
		if _, err := pgx.CollectRows(rows, pgx.RowToMap); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "DROP TABLE patients", simple); err == nil || !strings.Contains(err.Error(), "42501") {
			t.Fatalf("DROP through the relay: %v, want 42501", err)
		}
		var name string
		if err := conn.QueryRow(ctx, "SELECT name FROM patients WHERE id = $1", 2).Scan(&name); err != nil || name != "bob" {
			t.Fatalf("extended query: %q %v", name, err)
		}
		var n int
		if err := conn.QueryRow(ctx, bigQuery, simple).Scan(&n); err != nil || n != 150000 {
			t.Fatalf("big query: %d %v", n, err)
		}
		var big string
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT repeat('y', %d)", bigResult), simple).Scan(&big); err != nil || len(big) != bigResult {
			t.Fatalf("big result: %d %v", len(big), err)
		}
		// Notifications and COPY in both directions.
		for _, q := range []string{"LISTEN interlock_test", "NOTIFY interlock_test, 'ping'"} {
			if _, err := conn.Exec(ctx, q, simple); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		var copied bytes.Buffer
		if _, err := conn.PgConn().CopyTo(ctx, &copied, "COPY patients TO STDOUT"); err != nil || !strings.Contains(copied.String(), "alice") {
			t.Fatalf("copy out: %q %v", copied.String(), err)
		}
		if tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("4\tdave\t\\N\n5\terin\t555\n"), "COPY patients FROM STDIN"); err != nil || tag.RowsAffected() != 2 {
			t.Fatalf("copy in: %v %v", tag, err)
		}
		// While the session is open, the periodic flush puts its verdicts
		// in the store.
		deadline := time.Now().Add(5 * time.Second)
		for {
			l, err := st.ListSessions(ctx, store.SessionFilter{Action: "deny", OpenOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(l) == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("deny verdict of the open session never reached the store")
			}
			time.Sleep(20 * time.Millisecond)
		}
		conn.Close(ctx)
		ss := r.waitEnd(t)

		if ss.RecordingSHA256 == "" || ss.Outcome != "closed" || ss.Messages < 20 || ss.BytesIn < 150000 || ss.BytesOut < int64(bigResult) {
			t.Fatalf("sealed session: %+v", ss)
		}
		if err := recording.Verify(ctx, st, ss.ID); err != nil {
			t.Fatal(err)
		}
		got, err := st.ListSessions(ctx, store.SessionFilter{Identity: "ci", Target: "orders", Action: "deny"})
		if err != nil || len(got) != 1 || got[0].ID != ss.ID {
			t.Fatalf("filter by deny: %+v %v", got, err)
		}
		ds, err := st.Decisions(ctx, ss.ID)
		if err != nil {
			t.Fatal(err)
		}
		var denied []string
		for _, d := range ds {
			if d.Action == "deny" {
				denied = append(denied, d.Rule+": "+d.Statement)
			}
		}
		if fmt.Sprint(denied) != "[no-drop: DROP TABLE patients]" || len(ds) != 12 {
			t.Fatalf("decisions: %d, denied %v", len(ds), denied)
		}

		// Transcript.
		var tr bytes.Buffer
		if err := recording.Replay(ctx, st, ss.ID, &tr); err != nil {
			t.Fatal(err)
		}
		transcript := tr.String()
		for _, want := range []string{
			"session " + ss.ID + "  ci -> orders (postgresql) on host-a",
			"(verified)",
			"-> startup protocol 3.0",
			"user=postgres",
			"<- authentication ok",
			"-> query: INSERT INTO patients VALUES (1, 'alice', '123-45-6789')",
			"decision: allow by rule read-write",
			"<- INSERT 0 3",
			"<- NOTICE 00000: hello from plpgsql",
			"-> query: SELECT id, name, ssn FROM patients ORDER BY id",
			"<- columns: id, name, ssn",
			"<- row: 1 | alice | 123-45-6789",
			"<- row: 3 | carol | NULL",
			"<- SELECT 3, 3 rows",
			"-> query: DROP TABLE patients",
			"decision: deny by rule no-drop",
			"<- ERROR 42501: denied by interlock rule no-drop",
			"-> parse stmtcache_", // pgx's statement cache names it
			": SELECT name FROM patients WHERE id = $1",
			`($1=\x00000002)`, // pgx binds the int4 parameter in binary
			"<- row: bob",
			"<- SELECT 1, 1 rows",
			"<- row: yyyyyyyy",
			"<- notification on interlock_test from pid",
			": ping",
			"-> query: COPY patients TO STDOUT",
			"<- copy out started",
			"<- copy done (",
			"<- COPY 3",
			"<- copy in started",
			"-> copy done (21 bytes sent)",
			"<- COPY 2",
			"-> terminate",
		} {
			if !strings.Contains(transcript, want) {
				t.Errorf("transcript lacks %q", want)
			}
		}
		if t.Failed() {
			t.Fatalf("transcript:\n%s", transcript)
		}
		t.Logf("transcript (head):\n%s", head(transcript, 40))

		// Pcap, read back by the real tshark.
		capture := filepath.Join(t.TempDir(), "session.pcap")
		f, err := os.Create(capture)
		if err != nil {
			t.Fatal(err)
		}
		if err := exportPcap(ctx, st, ss.ID, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		// No -d option: the server port is written as 5432, and the
		// file says which it really was.
		out := tshark(t, "-r", capture, "-Y", "pgsql.query", "-T", "fields", "-e", "pgsql.query")
		var queries []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			queries = append(queries, l)
		}
		want := []string{
			"CREATE TEMP TABLE patients (id int, name text, ssn text)",
			"INSERT INTO patients VALUES (1, 'alice', '123-45-6789'), (2, 'bob', '987-65-4321'), (3, 'carol', NULL)",
			"DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$",
			"SELECT id, name, ssn FROM patients ORDER BY id",
			"DROP TABLE patients",
			"SELECT name FROM patients WHERE id = $1",
			bigQuery,
			fmt.Sprintf("SELECT repeat('y', %d)", bigResult),
			"LISTEN interlock_test",
			"NOTIFY interlock_test, 'ping'",
			"COPY patients TO STDOUT",
			"COPY patients FROM STDIN",
		}
		if len(queries) != len(want) {
			t.Fatalf("tshark found %d queries, want %d:\n%s", len(queries), len(want), head(out, 20))
		}
		for i := range want {
			if queries[i] != want[i] {
				t.Errorf("tshark query %d = %.100q, want %.100q", i, queries[i], want[i])
			}
		}
		info, err := exec.Command("capinfos", "-k", capture).CombinedOutput()
		if err != nil || !strings.Contains(string(info), fmt.Sprintf("the server port %d is written as 5432", pg.Port)) ||
			!strings.Contains(string(info), "interlock session "+ss.ID) {
			t.Fatalf("capinfos -k: %v\n%s", err, info)
		}
		// The synthesized TCP stream is clean: no retransmissions, lost
		// segments or malformed packets as far as tshark can tell.
		if bad := tshark(t, "-r", capture, "-Y", "_ws.malformed || tcp.analysis.flags || _ws.expert.severity >= error"); strings.TrimSpace(bad) != "" {
			t.Fatalf("tshark flags problems:\n%s", head(bad, 20))
		}
		// The big result crossed in several segments of at most 64 KiB.
		lens := tshark(t, "-r", capture, "-T", "fields", "-e", "tcp.len")
		maxLen, segs := 0, 0
		for _, l := range strings.Fields(lens) {
			n, _ := strconv.Atoi(l)
			maxLen = max(maxLen, n)
			if n == pcap.MaxSegment {
				segs++
			}
		}
		if maxLen != pcap.MaxSegment || segs < 4 {
			t.Fatalf("largest segment %d (full segments %d), want splits at %d", maxLen, segs, pcap.MaxSegment)
		}
		// DataRow of the masked-as-seen values decodes too.
		if rows := tshark(t, "-r", capture, "-Y", "pgsql.type == \"Data row\"", "-T", "fields", "-e", "pgsql.val.data"); !strings.Contains(rows, "616c696365") {
			t.Fatalf("tshark data rows lack alice:\n%s", head(rows, 10))
		}

		// Audit: the seal is in the chain, which verifies, and neither
		// statements nor the SSN literal are (the session's other events
		// are the pipeline's: agent/session tests them).
		if err := al.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		res, err := audit.Verify(ctx, st, "host-a")
		if err != nil || res.Broken != nil {
			t.Fatalf("audit chain: %+v %v", res, err)
		}
		var exp bytes.Buffer
		if err := audit.Export(ctx, st, "host-a", &exp); err != nil {
			t.Fatal(err)
		}
		trail := exp.String()
		for _, want := range []string{`"kind":"recording.sealed"`, `"sha256":"` + ss.RecordingSHA256} {
			if !strings.Contains(trail, want) {
				t.Errorf("audit trail lacks %s", want)
			}
		}
		if strings.Contains(trail, "INSERT INTO patients") {
			t.Errorf("a statement reached the audit trail from the recorder")
		}
		if strings.Contains(trail, "123-45-6789") {
			t.Errorf("a value reached the audit trail")
		}

		// Tampering with the sealed recording is detected.
		b, err := os.ReadFile(ss.Recording)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, []byte("987-65-4321"))
		if i < 0 {
			t.Fatal("recording lacks bob's row")
		}
		b[i] = '0'
		if err := os.WriteFile(ss.Recording, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := recording.Verify(ctx, st, ss.ID); err == nil {
			t.Fatal("edited recording verifies")
		}
		// Re-sealing the edited file in the session row is caught by the
		// audit trail's RecordingSealed record.
		sum := sha256.Sum256(b)
		if _, err := st.DB().ExecContext(ctx, st.Rebind("UPDATE sessions SET recording_sha256 = ? WHERE id = ?"),
			hex.EncodeToString(sum[:]), ss.ID); err != nil {
			t.Fatal(err)
		}
		if err := recording.Verify(ctx, st, ss.ID); err == nil || !strings.Contains(err.Error(), "audit record") {
			t.Fatalf("re-sealed edited recording: %v, want a mismatch with the audit record", err)
		}
		tr.Reset()
		recording.Replay(ctx, st, ss.ID, &tr)
		if !strings.Contains(tr.String(), "TAMPERED") {
			t.Fatalf("replay of an edited recording does not say so:\n%s", head(tr.String(), 8))
		}
	})
}

func tshark(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("tshark", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %v: %v\n%s", args, err, stderr.String())
	}
	return string(out)
}

func head(s string, lines int) string {
	l := strings.SplitN(s, "\n", lines+1)
	if len(l) > lines {
		l = l[:lines]
	}
	return strings.Join(l, "\n")
}

func newSQLiteRecorder(t testing.TB, opts ...recording.Option) (*store.Store, *recording.Recorder) {
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rec, err := recording.NewRecorder(st, filepath.Join(t.TempDir(), "recordings"), "h", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	return st, rec
}

// refuseInserts makes st refuse every insert into table, as a full disk
// would, or stop refusing.
func refuseInserts(t *testing.T, st *store.Store, table string, on bool) {
	t.Helper()
	q := "DROP TRIGGER refuse_" + table
	if on {
		q = "CREATE TRIGGER refuse_" + table + " BEFORE INSERT ON " + table + " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
	}
	if _, err := st.DB().Exec(q); err != nil {
		t.Fatal(err)
	}
}

// A refused row that Start did not wait for is reported to its session;
// Starts then wait for their rows, refusing sessions, until one is stored.
func TestStartAfterRefusedRow(t *testing.T) {
	ctx := context.Background()
	st, rec := newSQLiteRecorder(t)
	refuse := func(on bool) { refuseInserts(t, st, "sessions", on) }
	meta := store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}
	refuse(true)
	lost := make(chan error, 1)
	if _, err := rec.Start(ctx, meta, func(err error) { lost <- err }); err != nil {
		t.Fatalf("Start queues the row: %v", err)
	}
	if err := <-lost; !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("lost: %v", err)
	}
	never := func(err error) { t.Errorf("lost called for a row Start waited for: %v", err) }
	if _, err := rec.Start(ctx, meta, never); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Start after a refusal: %v, want the refusal", err)
	}
	refuse(false)
	s, err := rec.Start(ctx, meta, never)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Session(ctx, s.ID()); err != nil {
		t.Errorf("the row Start waited for: %v", err)
	}
	// Stored again: the next Start queues its row.
	s, err = rec.Start(ctx, meta, never)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Finish(ctx, recording.End{Outcome: "closed"}); err != nil {
		t.Fatal(err)
	}
}

// TestUnwritableRecordingTellsLost: a recording whose file cannot be
// created (here a directory is in its way) tells Start's lost, once, so
// that the session is ended rather than going on unrecorded; Finish
// reports the error too.
func TestUnwritableRecordingTellsLost(t *testing.T) {
	ctx := context.Background()
	_, rec := newSQLiteRecorder(t)
	lost := make(chan error, 4)
	meta := store.Session{ID: "s-unwritable", Identity: "ci", Target: "t", Protocol: "postgresql"}
	s, err := rec.Start(ctx, meta, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	row, err := s.Finish(ctx, recording.End{Outcome: "closed"})
	if err != nil {
		t.Fatal(err)
	}
	path := row.Recording
	meta.ID = "s-unwritable-2"
	s, err = rec.Start(ctx, meta, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(filepath.Dir(path), "s-unwritable-2.ilrec"), 0o700); err != nil {
		t.Fatal(err)
	}
	// More than a first buffer holds: handed to the writer, which creates
	// the file.
	for i := 0; i < 4; i++ {
		s.Message(true, 'Q', bytes.Repeat([]byte("x"), 4096), time.Time{})
	}
	select {
	case err := <-lost:
		if !strings.Contains(err.Error(), "create recording") {
			t.Errorf("lost: %v, want the file's creation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lost not told that the recording cannot be written")
	}
	for i := 0; i < 40; i++ {
		s.Message(true, 'Q', bytes.Repeat([]byte("x"), 4096), time.Time{})
	}
	if _, err := s.Finish(ctx, recording.End{Outcome: "recording unavailable"}); err == nil || !strings.Contains(err.Error(), "create recording") {
		t.Errorf("Finish: %v, want the write error", err)
	}
	if len(lost) != 0 {
		t.Errorf("lost told %d more times, want once", len(lost))
	}
}

// A daemon that dies leaves open sessions; the next start seals them, and a
// recording cut inside a frame still reads up to the cut.
func TestSealAbandoned(t *testing.T) {
	ctx := context.Background()
	st, rec := newSQLiteRecorder(t)
	s, err := rec.Start(ctx, store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	s.Message(true, 'Q', q[5:], time.Time{})
	s.Message(true, 'Q', q[5:], time.Time{})
	if err := rec.Close(); err != nil { // flushes; the session stays open
		t.Fatal(err)
	}
	ss, _ := st.Session(ctx, s.ID())
	b, _ := os.ReadFile(ss.Recording)
	os.WriteFile(ss.Recording, b[:len(b)-3], 0o600) // cut inside the last frame

	rec2, err := recording.NewRecorder(st, filepath.Dir(ss.Recording), "h")
	if err != nil {
		t.Fatal(err)
	}
	defer rec2.Close()
	n, err := rec2.SealAbandoned(ctx)
	if err != nil || n != 1 {
		t.Fatalf("sealed %d: %v", n, err)
	}
	ss, _ = st.Session(ctx, s.ID())
	if ss.Outcome != "abandoned" || ss.Messages != 1 || ss.Ended.IsZero() {
		t.Fatalf("abandoned session: %+v", ss)
	}
	if err := recording.Verify(ctx, st, s.ID()); err != nil {
		t.Fatal(err)
	}
	var tr bytes.Buffer
	if err := recording.Replay(ctx, st, s.ID(), &tr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tr.String(), "query: SELECT 1") || !strings.Contains(tr.String(), "cut short") {
		t.Fatalf("transcript of a cut recording:\n%s", tr.String())
	}
	if _, err := rec2.SealAbandoned(ctx); err != nil {
		t.Fatal(err)
	}
	if ss2, _ := st.Session(ctx, s.ID()); ss2.RecordingSHA256 != ss.RecordingSHA256 {
		t.Fatal("sealed twice")
	}
}

// A session that ends before its first flush gets no file: its recording
// is sealed into the store, where replay and Verify read it, and editing it
// there is caught like editing a file.
func TestShortSessionSealedInStore(t *testing.T) {
	ctx := context.Background()
	st, rec := newSQLiteRecorder(t)
	s, _ := startAllowed(t, rec, "SELECT 'short'")
	ss, err := s.Finish(ctx, recording.End{Outcome: "closed"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ss.Recording); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a short session has a file: %v", err)
	}
	if ss.RecordingSHA256 == "" || ss.RecordingSize == 0 || ss.Messages != 1 {
		t.Fatalf("short session not sealed: %+v", ss)
	}
	if err := recording.Verify(ctx, st, ss.ID); err != nil {
		t.Fatal(err)
	}
	var tr bytes.Buffer
	if err := recording.Replay(ctx, st, ss.ID, &tr); err != nil || !strings.Contains(tr.String(), "query: SELECT 'short'") ||
		!strings.Contains(tr.String(), "(verified)") {
		t.Fatalf("replay: %v\n%s", err, tr.String())
	}
	if ds, err := st.Decisions(ctx, ss.ID); err != nil || len(ds) != 1 {
		t.Fatalf("decisions: %+v %v", ds, err)
	}
	if _, err := st.DB().ExecContext(ctx, st.Rebind("UPDATE recording_parts SET data = replace(data, 'short', 'SHORT') WHERE session_id = ?"),
		ss.ID); err != nil {
		t.Fatal(err)
	}
	if err := recording.Verify(ctx, st, ss.ID); err == nil {
		t.Fatal("an edited stored recording verifies")
	}
}

// startAllowed starts a session whose one query, sql, was allowed; it
// returns the session and the query's seq.
func startAllowed(t *testing.T, rec *recording.Recorder, sql string) (*recording.Session, int64) {
	t.Helper()
	s, err := rec.Start(context.Background(), store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	seq := s.Message(true, 'Q', q[5:], time.Time{})
	s.Decide(seq, recording.Verdict{Action: "allow", Rule: "r", Enforced: true}, time.Time{})
	return s, seq
}

// A session's last verdicts are stored with the row that seals it; a store
// that refuses them still gets the session sealed, and Finish says what was
// lost.
func TestFinishSealsWhenVerdictsRefused(t *testing.T) {
	ctx := context.Background()
	st, rec := newSQLiteRecorder(t)
	s, seq := startAllowed(t, rec, "SELECT 1")
	// The verdict's key, taken: its insert fails.
	if err := st.AddDecisions(ctx, []store.Decision{{SessionID: s.ID(), Index: 0, Seq: seq, Time: time.Now(),
		Action: "deny", Rule: "squatter"}}); err != nil {
		t.Fatal(err)
	}
	ss, err := s.Finish(ctx, recording.End{Outcome: "closed"})
	if err == nil || !strings.Contains(err.Error(), "store the verdicts of "+ss.ID) {
		t.Fatalf("Finish: %v, want the verdicts' failure", err)
	}
	got, err := st.Session(ctx, ss.ID)
	if err != nil || got.Ended.IsZero() || got.RecordingSHA256 != ss.RecordingSHA256 || got.Outcome != "closed" {
		t.Fatalf("session not sealed: %+v %v", got, err)
	}
	if err := recording.Verify(ctx, st, ss.ID); err != nil {
		t.Fatal(err)
	}
}

// A session still whole in its buffer when the daemon dies has nothing on
// disk; the next start seals it as abandoned without a recording.
func TestSealAbandonedNeverFlushed(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dir := filepath.Join(t.TempDir(), "recordings")
	// A flush interval no test waits for: the session is never flushed
	// before the "crash" (the recorder is dropped, not closed).
	rec, err := recording.NewRecorder(st, dir, "h", recording.WithFlushInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s, err := rec.Start(ctx, store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec2, err := recording.NewRecorder(st, dir, "h")
	if err != nil {
		t.Fatal(err)
	}
	defer rec2.Close()
	if n, err := rec2.SealAbandoned(ctx); err != nil || n != 1 {
		t.Fatalf("sealed %d: %v", n, err)
	}
	ss, _ := st.Session(ctx, s.ID())
	if ss.Outcome != "abandoned" || ss.Ended.IsZero() || ss.RecordingSHA256 != "" {
		t.Fatalf("abandoned session: %+v", ss)
	}
	if err := recording.Verify(ctx, st, s.ID()); err == nil || !strings.Contains(err.Error(), "not sealed") {
		t.Fatalf("verify of a lost recording: %v", err)
	}
}

func FuzzReader(f *testing.F) {
	dir := f.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "db"))
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	rec, err := recording.NewRecorder(st, dir, "h")
	if err != nil {
		f.Fatal(err)
	}
	s, _ := rec.Start(context.Background(), store.Session{Protocol: "postgresql"}, nil)
	s.Message(true, 'Q', []byte("SELECT 1\x00"), time.Time{})
	s.Decide(0, recording.Verdict{Action: "deny", Rule: "r"}, time.Time{})
	s.Message(false, 'E', []byte("SERROR\x00C42501\x00Mno\x00\x00"), time.Time{})
	ss, _ := s.Finish(context.Background(), recording.End{})
	rec.Close()
	stored, err := st.OpenRecording(context.Background(), ss.ID) // short: in the store
	if err != nil {
		f.Fatal(err)
	}
	seed, _ := io.ReadAll(stored)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		rd, err := recording.NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		recording.Transcript(io.Discard, store.Session{Protocol: "postgresql"}, "", rd)
		rd, _ = recording.NewReader(bytes.NewReader(b))
		recording.WriteConversation(store.Session{Protocol: "postgresql"}, rd, pcap.NewWriter(io.Discard))
	})
}

// FuzzTranscriptMessage renders arbitrary PostgreSQL messages in both
// directions: the transcript never panics on what a broken client sent.
func FuzzTranscriptMessage(f *testing.F) {
	for _, m := range []pgproto3.Message{
		&pgproto3.Query{String: "SELECT 1"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("x"), nil}, ParameterFormatCodes: []int16{1}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("a"), nil}}, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42501"},
		&pgproto3.StartupMessage{ProtocolVersion: 196608, Parameters: map[string]string{"user": "u"}},
	} {
		b, _ := m.Encode(nil)
		if _, ok := m.(*pgproto3.StartupMessage); ok {
			f.Add(true, byte(0), b[4:])
			continue
		}
		f.Add(true, b[0], b[5:])
		f.Add(false, b[0], b[5:])
	}
	f.Fuzz(func(t *testing.T, fromClient bool, typ byte, body []byte) {
		var file bytes.Buffer
		file.WriteString("ILREC1\n")
		hdr := []byte(`{"v":1,"protocol":"postgresql"}`)
		file.Write(binary.AppendUvarint(nil, uint64(len(hdr))))
		file.Write(hdr)
		kind := byte(2)
		if fromClient {
			kind = 1
		}
		file.Write([]byte{kind, typ, 0})
		file.Write(binary.AppendUvarint(nil, uint64(len(body))))
		file.Write(body)
		rd, err := recording.NewReader(&file)
		if err != nil {
			t.Fatal(err)
		}
		if err := recording.Transcript(io.Discard, store.Session{Protocol: "postgresql"}, "", rd); err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatal(err)
		}
	})
}

func BenchmarkMessage(b *testing.B) {
	for _, size := range []int{64, 1024, 16384} {
		b.Run(strconv.Itoa(size), func(b *testing.B) {
			_, rec := newSQLiteRecorder(b)
			s, err := rec.Start(context.Background(), store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
			if err != nil {
				b.Fatal(err)
			}
			body := bytes.Repeat([]byte("x"), size)
			now := time.Now()
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				s.Message(false, 'D', body, now)
			}
			b.StopTimer()
			if _, err := s.Finish(context.Background(), recording.End{}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func BenchmarkDecide(b *testing.B) {
	_, rec := newSQLiteRecorder(b)
	s, err := rec.Start(context.Background(), store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	v := recording.Verdict{Action: "allow", Rule: "read", Enforced: true, Statement: "SELECT abalance FROM pgbench_accounts WHERE aid = $1"}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		seq := s.Message(true, 'Q', []byte("SELECT 1\x00"), now)
		s.Decide(seq, v, now)
	}
	b.StopTimer()
	if _, err := s.Finish(context.Background(), recording.End{}); err != nil {
		b.Fatal(err)
	}
}

// Fleet mode: a session recorded on host A is replayed, exported and
// verified from host B, which has only the shared store.
func TestReplayFromAnotherHost(t *testing.T) {
	storetest.Run(t, func(t *testing.T, open storetest.Open) {
		ctx := context.Background()
		stA, stB := open(t), open(t)
		recA, err := recording.NewRecorder(stA, t.TempDir(), "host-a", recording.WithUpload(true))
		if err != nil {
			t.Fatal(err)
		}
		defer recA.Close()
		s, err := recA.Start(ctx, store.Session{Identity: "ci", Target: "orders", Protocol: "postgresql",
			ClientAddr: "[::1]:40000", UpstreamAddr: "[::1]:5432"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		q, _ := (&pgproto3.Query{String: "SELECT 'from host a'"}).Encode(nil)
		seq := s.Message(true, q[0], q[5:], time.Time{})
		s.Decide(seq, recording.Verdict{Action: "allow", Rule: "r", Enforced: true, Statement: "SELECT 'from host a'"}, time.Time{})
		// A second statement of the same message gets its own decision.
		s.Decide(seq, recording.Verdict{Action: "deny", Rule: "r2", Enforced: true, Statement: "DROP TABLE x"}, time.Time{})
		// Enough data for several stored parts.
		row, _ := (&pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("z"), 100000)}}).Encode(nil)
		for range 30 {
			s.Message(false, row[0], row[5:], time.Time{})
		}
		cc, _ := (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 30")}).Encode(nil)
		s.Message(false, cc[0], cc[5:], time.Time{})
		ss, err := s.Finish(ctx, recording.End{Outcome: "closed"})
		if err != nil {
			t.Fatal(err)
		}
		if ds, err := stB.Decisions(ctx, ss.ID); err != nil || len(ds) != 2 || ds[0].Seq != ds[1].Seq || ds[1].Action != "deny" {
			t.Fatalf("two decisions on one request: %+v %v", ds, err)
		}
		if err := os.Remove(ss.Recording); err != nil { // host B has no such file
			t.Fatal(err)
		}
		var tr bytes.Buffer
		if err := recording.Replay(ctx, stB, ss.ID, &tr); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(tr.String(), "-> query: SELECT 'from host a'") || !strings.Contains(tr.String(), "(verified)") ||
			!strings.Contains(tr.String(), "... 25 more rows") || !strings.Contains(tr.String(), "<- SELECT 30, 30 rows") {
			t.Fatalf("replay on host B:\n%s", head(tr.String(), 20))
		}
		var capture bytes.Buffer
		if err := exportPcap(ctx, stB, ss.ID, &capture); err != nil || capture.Len() < 3000000 {
			t.Fatalf("pcap from host B: %d bytes, %v", capture.Len(), err)
		}
		if _, err := exec.LookPath("tshark"); err == nil { // IPv6 addresses, port 5432: no -d needed
			pf := filepath.Join(t.TempDir(), "v6.pcap")
			os.WriteFile(pf, capture.Bytes(), 0o600)
			out := tshark(t, "-r", pf, "-Y", "pgsql.query", "-T", "fields", "-e", "ipv6.src", "-e", "pgsql.query")
			if strings.TrimSpace(out) != "::1\tSELECT 'from host a'" {
				t.Fatalf("tshark on the IPv6 export: %q", out)
			}
		}
		if _, err := stB.DB().ExecContext(ctx, stB.Rebind("UPDATE recording_parts SET data = ? WHERE session_id = ? AND part = 1"),
			bytes.Repeat([]byte("z"), 1<<20), ss.ID); err != nil {
			t.Fatal(err)
		}
		if err := recording.Verify(ctx, stB, ss.ID); err == nil || !strings.Contains(err.Error(), "the store's copy") {
			t.Fatalf("verify of an edited stored copy: %v", err)
		}
	})
}

// BenchmarkDecideAudited is the proxy's per-statement recording cost with
// everything on: the request message, its verdict, the decisions row and
// the audit Decision event (both written in the background).
func BenchmarkDecideAudited(b *testing.B) {
	st, err := store.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "interlock.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	al := audit.New(st, "h")
	rec, err := recording.NewRecorder(st, b.TempDir(), "h", recording.WithAudit(al))
	if err != nil {
		b.Fatal(err)
	}
	s, err := rec.Start(context.Background(), store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	v := recording.Verdict{Action: "allow", Rule: "read", Enforced: true, Statement: "SELECT abalance FROM pgbench_accounts WHERE aid = 42"}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		seq := s.Message(true, 'Q', []byte("SELECT abalance FROM pgbench_accounts WHERE aid = 42\x00"), now)
		s.Decide(seq, v, now)
	}
	if _, err := s.Finish(context.Background(), recording.End{}); err != nil {
		b.Fatal(err)
	}
	if err := al.Close(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	rec.Close()
}

// TestQuietSessionsTakeSmallBuffers: a session that says little holds a
// buffer the size of what it said, not a full one, until it is flushed.
func TestQuietSessionsTakeSmallBuffers(t *testing.T) {
	const sessions = 200
	_, rec := newSQLiteRecorder(t)
	before := testenv.LiveHeap()
	var open []*recording.Session
	for range sessions {
		s, err := rec.Start(context.Background(), store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.Message(true, 'Q', []byte("SELECT 1"), time.Time{})
		open = append(open, s)
	}
	if per := (testenv.LiveHeap() - before) / sessions; per > 8<<10 {
		t.Fatalf("%d bytes per quiet open session: it holds a full buffer", per)
	}
	// Together: each waits for a commit it may share (store.EndSessionShared).
	var wg sync.WaitGroup
	for _, s := range open {
		wg.Go(func() {
			if _, err := s.Finish(context.Background(), recording.End{}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

// TestIdleRecordingHoldsNoDescriptor: a session idle for a whole flush
// interval has its recording's file closed, so that idle sessions hold no
// descriptor besides their sockets; its next frames open it again and
// append, and the sealed recording holds every frame. A file gone while
// shut is not created anew: the session is told its recording is lost.
func TestIdleRecordingHoldsNoDescriptor(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dir := filepath.Join(t.TempDir(), "recordings")
	// Flushed by the test alone.
	rec, err := recording.NewRecorder(st, dir, "h", recording.WithFlushInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	held := func(path string) bool {
		fds, _ := os.ReadDir("/proc/self/fd")
		for _, fd := range fds {
			if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && l == path {
				return true
			}
		}
		return false
	}
	// The writer goroutine opens and closes the file after Flush returns.
	await := func(path string, open bool, what string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); held(path) != open; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the recording is open: %v, want %v", what, !open, open)
			}
		}
	}
	flush := func() {
		t.Helper()
		if err := rec.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	lost := make(chan error, 1)
	start := func() (*recording.Session, string) {
		s, err := rec.Start(ctx, store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, func(err error) { lost <- err })
		if err != nil {
			t.Fatal(err)
		}
		return s, filepath.Join(dir, s.ID()+".ilrec")
	}
	query := func(s *recording.Session, sql string) {
		q, _ := (&pgproto3.Query{String: sql}).Encode(nil)
		s.Message(true, 'Q', q[5:], time.Time{})
	}

	s, path := start()
	query(s, "SELECT 'before the pause'")
	flush()
	await(path, true, "frames flushed")
	flush() // nothing since the last: idle for an interval
	await(path, false, "idle for an interval")
	query(s, "SELECT 'after the pause'")
	flush()
	await(path, true, "frames after the pause")
	flush()
	await(path, false, "idle again")
	ended, err := s.Finish(ctx, recording.End{})
	if err != nil {
		t.Fatal(err)
	}
	if err := recording.Verify(ctx, st, ended.ID); err != nil {
		t.Fatalf("a recording shut while idle: %v", err)
	}
	var tr bytes.Buffer
	if err := recording.Replay(ctx, st, ended.ID, &tr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tr.String(), "before the pause") || !strings.Contains(tr.String(), "after the pause") {
		t.Fatalf("replay lacks frames:\n%s", tr.String())
	}

	s, path = start()
	query(s, "SELECT 'recorded'")
	flush()
	await(path, true, "frames flushed")
	flush()
	await(path, false, "idle for an interval")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	query(s, "SELECT 'nowhere to go'")
	flush()
	select {
	case err := <-lost:
		if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "open recording") {
			t.Fatalf("lost: %v, want the reopen's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a recording removed while idle: the session was not told it is lost")
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("a removed recording was created anew")
	}
	if _, err := s.Finish(ctx, recording.End{}); err == nil {
		t.Fatal("Finish of a lost recording: no error")
	}
}

// TestFirstBuffersReused: a short session's recording is stored from its
// first buffer, which the next sessions take again, but never while a
// store write that Finish stopped waiting for may still read it: that
// write would store the next session's bytes as this one's recording.
func TestFirstBuffersReused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "interlock.db")
	st, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rec, err := recording.NewRecorder(st, filepath.Join(t.TempDir(), "recordings"), "h")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	// Sessions one after another pass one first buffer along. Each
	// starts without waiting for its row (a lost recording is told).
	session := func(sql string) *recording.Session {
		s, err := rec.Start(ctx, store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, func(err error) { t.Error(err) })
		if err != nil {
			t.Fatal(err)
		}
		q, _ := (&pgproto3.Query{String: sql}).Encode(nil)
		s.Message(true, 'Q', q[5:], time.Time{})
		return s
	}
	for range 3 {
		if _, err := session("SELECT 'one after another'").Finish(ctx, recording.End{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := rec.FreeFirstBuffers(); n != 1 {
		t.Fatalf("%d first buffers kept after sessions one after another, want the one they share", n)
	}

	// Another connection holds the database's write lock: the store's
	// writes wait for it.
	lock, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	tx, err := lock.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := session("SELECT 'the first session's secret'")
	actx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	ended, err := a.Finish(actx, recording.End{})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Finish with the store locked: %v, want its deadline", err)
	}
	// The next session records into a buffer meanwhile: not the first's.
	b := session("SELECT 'XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX'")
	tx.Rollback()
	if _, err := b.Finish(ctx, recording.End{}); err != nil {
		t.Fatal(err)
	}
	if err := recording.Verify(ctx, st, ended.ID); err != nil {
		t.Fatalf("the abandoned session's recording: %v", err)
	}
	var tr bytes.Buffer
	if err := recording.Replay(ctx, st, ended.ID, &tr); err != nil || !strings.Contains(tr.String(), "the first session's secret") {
		t.Fatalf("replay of the abandoned session: %v\n%s", err, tr.String())
	}
}

// Verdicts stored over several flushes, while each flush's array is reused
// for the next verdicts and the rate rises and falls, arrive in the store
// whole and in order.
func TestVerdictsAcrossFlushes(t *testing.T) {
	ctx := context.Background()
	st, rec := newSQLiteRecorder(t)
	s, err := rec.Start(ctx, store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, n := range []int{3, 40, 40, 1, 0, 0, 90, 2} {
		for range n {
			stmt := fmt.Sprintf("SELECT %d", want)
			seq := s.Message(true, 'Q', []byte(stmt+"\x00"), time.Now())
			s.Decide(seq, recording.Verdict{Action: "allow", Rule: "read", Enforced: true, Statement: stmt}, time.Now())
			want++
		}
		if err := rec.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s.Decide(0, recording.Verdict{Action: "deny", Rule: "last", Statement: "DROP TABLE t"}, time.Now())
	meta, err := s.Finish(ctx, recording.End{})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := st.Decisions(ctx, meta.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != want+1 {
		t.Fatalf("%d verdicts stored, want %d", len(ds), want+1)
	}
	for i, d := range ds[:want] {
		if d.Index != int64(i) || d.Statement != fmt.Sprintf("SELECT %d", i) || d.Action != "allow" {
			t.Fatalf("verdict %d stored as %+v", i, d)
		}
	}
	if last := ds[want]; last.Statement != "DROP TABLE t" || last.Action != "deny" {
		t.Fatalf("last verdict stored as %+v", last)
	}
}

// exportPcap writes session id's recording as a packet capture, as
// `interlock export --pcap` gets it from the daemon.
func exportPcap(ctx context.Context, st *store.Store, id string, w io.Writer) error {
	ss, rd, err := recording.OpenSession(ctx, st, id)
	if err != nil {
		return err
	}
	defer rd.Close()
	return recording.WriteConversation(ss, rd, pcap.NewWriter(w))
}

// A store that refuses verdicts for a while (a fleet store restarting)
// leaves no hole in the decisions index: the next flushes store them. One
// that keeps refusing gets them given up, said in the error; they stay in
// the recording.
func TestVerdictsHeldWhileStoreRefuses(t *testing.T) {
	ctx := context.Background()
	// No flush but the test's.
	st, rec := newSQLiteRecorder(t, recording.WithFlushInterval(time.Hour))
	refuse := func(on bool) { refuseInserts(t, st, "decision_batches", on) }
	decide := func(s *recording.Session, stmt string) {
		seq := s.Message(true, 'Q', []byte(stmt+"\x00"), time.Now())
		s.Decide(seq, recording.Verdict{Action: "deny", Rule: "r", Enforced: true, Statement: stmt}, time.Now())
	}
	statements := func(id string) []string {
		ds, err := st.Decisions(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range ds {
			got = append(got, d.Statement)
		}
		return got
	}

	s, _ := startAllowed(t, rec, "SELECT 1")
	decide(s, "DROP TABLE a")
	refuse(true)
	if err := rec.Flush(ctx); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("flush while the store refuses: %v", err)
	}
	decide(s, "DROP TABLE b")
	refuse(false)
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := statements(s.ID()), []string{"", "DROP TABLE a", "DROP TABLE b"}; !slices.Equal(got, want) {
		t.Errorf("verdicts after the store came back: %q, want %q", got, want)
	}

	lost, _ := startAllowed(t, rec, "SELECT 2")
	refuse(true)
	for i := 1; ; i++ {
		err := rec.Flush(ctx)
		if err == nil {
			t.Fatalf("flush %d stored while the store refuses", i)
		}
		if strings.Contains(err.Error(), "1 verdicts given up") {
			if i < 60 {
				t.Fatalf("verdicts given up at flush %d: %v", i, err)
			}
			break
		}
		if i > 60 {
			t.Fatalf("verdicts still held after %d flushes: %v", i, err)
		}
	}
	refuse(false)
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := statements(lost.ID()); len(got) != 0 {
		t.Errorf("verdicts given up were stored: %q", got)
	}

	// What is held is bounded: a flush of more is given up at once.
	many, _ := startAllowed(t, rec, "SELECT 3")
	for i := range 1 << 16 {
		many.Decide(int64(i), recording.Verdict{Action: "allow", Rule: "r"}, time.Now())
	}
	refuse(true)
	if err := rec.Flush(ctx); err == nil || !strings.Contains(err.Error(), "65537 verdicts given up") {
		t.Errorf("a flush of more verdicts than are held: %v", err)
	}
	refuse(false)
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*recording.Session{s, lost, many} {
		if _, err := s.Finish(ctx, recording.End{Outcome: "closed"}); err != nil {
			t.Fatal(err)
		}
	}
}

// Flush leaves nothing decided before it outside the store: not a row
// queued for the writer's next commit, not the verdicts of a session
// whose Finish runs at the same moment (policy replay reads the store
// right after the agent's client exits).
func TestFlushHoldsEverythingDecided(t *testing.T) {
	ctx := context.Background()
	st, rec := newSQLiteRecorder(t)
	for i := range 60 {
		s, err := rec.Start(ctx, store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var stmts []string
		if i%3 != 0 { // a third of the sessions decide nothing: only their row is queued
			stmts = append(stmts, fmt.Sprintf("SELECT %d", i))
			seq := s.Message(true, 'Q', []byte(stmts[0]+"\x00"), time.Now())
			s.Decide(seq, recording.Verdict{Action: "allow", Rule: "read", Enforced: true, Statement: stmts[0]}, time.Now())
		}
		finished := make(chan error, 1)
		finishing := i%3 == 2
		if finishing {
			go func() {
				_, err := s.Finish(ctx, recording.End{})
				finished <- err
			}()
			// Flush at different moments of the Finish.
			for range i * 50 {
				runtime.Gosched()
			}
		}
		if err := rec.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Session(ctx, s.ID()); err != nil {
			t.Fatalf("round %d: session not stored after Flush: %v", i, err)
		}
		ds, err := st.Decisions(ctx, s.ID())
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) != len(stmts) || len(ds) == 1 && ds[0].Statement != stmts[0] {
			t.Fatalf("round %d: %d verdicts stored after Flush (%+v), want %q", i, len(ds), ds, stmts)
		}
		if finishing {
			err = <-finished
		} else {
			_, err = s.Finish(ctx, recording.End{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestTranscriptLinesAreTheirOwn: what a peer chose (an SSH global
// request's type, an executable's name, a decision's reason quoting what
// the agent sent) cannot write a line of its own into a transcript: a
// line break, a carriage return or a terminal escape in it is shown
// escaped, on the line it belongs to.
func TestTranscriptLinesAreTheirOwn(t *testing.T) {
	ctx := context.Background()
	st, rec := newSQLiteRecorder(t)
	forged := "\n#9    +  0.000001s -> $ rm -rf /\r\x1b[2K"
	s, err := rec.Start(ctx, store.Session{Identity: "ci", Target: "web", Protocol: "ssh", Exe: "/tmp/agent" + forged}, nil)
	if err != nil {
		t.Fatal(err)
	}
	seq := s.Message(true, ssh.MsgGlobalRequest, []byte("keepalive"+forged), time.Time{})
	s.Decide(seq, recording.Verdict{Action: "deny", Rule: "unsupported-operation", Reason: "cannot decide keepalive" + forged}, time.Time{})
	ss, err := s.Finish(ctx, recording.End{Outcome: "closed"})
	if err != nil {
		t.Fatal(err)
	}
	var tr bytes.Buffer
	if err := recording.Replay(ctx, st, ss.ID, &tr); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(tr.String(), "\n#9") || strings.ContainsAny(tr.String(), "\r\x1b") {
		t.Errorf("a forged line in the transcript:\n%s", tr.String())
	}
	for _, want := range []string{`exe /tmp/agent\n#9`, `-> global request keepalive\n#9`, `cannot decide keepalive\n#9`} {
		if !strings.Contains(tr.String(), want) {
			t.Errorf("transcript lacks %q escaped:\n%s", want, tr.String())
		}
	}
}

// TestReserveStopsRecordings: on a file system under the reserve (a real
// tmpfs, filled by a file), Start refuses sessions and an open session that
// writes is ended, both with a *SpaceError naming the free space; once the
// file is removed, sessions are recorded again. Each change is logged.
func TestReserveStopsRecordings(t *testing.T) {
	testenv.Privileged(t)
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "recordings")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=8m,mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "interlock.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var logs daemontest.Buffer
	rec, err := recording.NewRecorder(st, dir, "h", recording.WithFlushInterval(20*time.Millisecond),
		recording.WithLogger(zerolog.New(&logs)), recording.WithReserve(func(total int64) int64 { return total / 2 }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rec.Close() })
	meta := store.Session{Identity: "ci", Target: "t", Protocol: "postgresql"}
	lost := make(chan error, 1)
	open, err := rec.Start(ctx, meta, func(err error) { lost <- err })
	if err != nil {
		t.Fatalf("a session with room: %v", err)
	}
	q, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	open.Message(true, 'Q', q[5:], time.Time{})

	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 5<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	var space *recording.SpaceError
	waitFor(t, "Start to refuse", func() bool {
		s, err := rec.Start(ctx, meta, nil)
		if err == nil {
			s.Finish(ctx, recording.End{Outcome: "closed"})
		}
		return errors.As(err, &space)
	})
	if space.Free >= space.Reserve || !strings.Contains(space.Error(), "recordings.reserve") {
		t.Errorf("refusal: %+v %v", space, space)
	}
	open.Message(false, 'D', make([]byte, 1000), time.Time{})
	select {
	case err := <-lost:
		if !errors.As(err, &space) {
			t.Errorf("the open session was ended by %v, want a *SpaceError", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the open session went on writing under the reserve")
	}
	open.Finish(ctx, recording.End{Outcome: "recording unavailable"})

	os.Remove(filler)
	waitFor(t, "Start to record again", func() bool {
		s, err := rec.Start(ctx, meta, nil)
		if err != nil {
			return false
		}
		_, err = s.Finish(ctx, recording.End{Outcome: "closed"})
		return err == nil
	})
	for _, want := range []string{"recordings stopped", "recordings resumed"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

// waitFor polls cond every 10 ms for 10 s at most.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
