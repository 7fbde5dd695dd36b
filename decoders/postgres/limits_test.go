package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// countingBudget is a Budget with a fixed size that remembers its peak.
type countingBudget struct {
	mu               sync.Mutex
	size, used, peak int
}

func (b *countingBudget) Reserve(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.size {
		return false
	}
	b.used += n
	b.peak = max(b.peak, b.used)
	return true
}

func (b *countingBudget) Release(n int) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

func (b *countingBudget) state() (used, peak int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used, b.peak
}

// declare sends the header of a Query of size body bytes and the first
// part bytes of it (blanks).
func declare(t *testing.T, conn net.Conn, size, part int) {
	t.Helper()
	msg := binary.BigEndian.AppendUint32([]byte{'Q'}, uint32(size+4))
	msg = append(msg, strings.Repeat(" ", part)...)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
}

// wantFatal reads until the session's FATAL error and the end of the
// connection, and returns the error's SQLSTATE.
func wantFatal(t *testing.T, fe *pgproto3.Frontend) string {
	t.Helper()
	m, err := fe.Receive()
	if err != nil {
		t.Fatalf("want an ErrorResponse, got %v", err)
	}
	e, ok := m.(*pgproto3.ErrorResponse)
	if !ok || e.Severity != "FATAL" {
		t.Fatalf("want a FATAL ErrorResponse, got %#v", m)
	}
	if _, err := fe.Receive(); !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		t.Fatalf("session not ended after %s: %v", e.Code, err)
	}
	return e.Code
}

// lastLimit waits for the n-th finished session and returns its LimitError.
func lastLimit(t *testing.T, p *testProxy, n int) *LimitError {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(p.Errors()) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	errs := p.Errors()
	var le *LimitError
	if len(errs) < n || !errors.As(errs[n-1], &le) {
		t.Fatalf("relay returned %v, want a LimitError", errs)
	}
	return le
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestRelayMessageCap: a Query declared larger than the session's cap ends
// the session with 54000 before anything is allocated, however slowly its
// bytes come; statements below the cap and large streamed parameters work.
func TestRelayMessageCap(t *testing.T) {
	pg := testenv.StartPostgres(t)
	budget := &countingBudget{size: 4 << 20}
	p := startProxy(t, pg, func() RelayConfig {
		return RelayConfig{Enforcer: allowAll, MaxBuffered: 1 << 20, Budget: budget}
	})
	before := heapInUse()
	// Three sessions each declare a 63 MiB statement and send a little.
	for i := 0; i < 3; i++ {
		conn, fe := rawAgent(t, p)
		declare(t, conn, 63<<20, 1000)
		start := time.Now()
		if code := wantFatal(t, fe); code != "54000" {
			t.Fatalf("declared 63 MiB statement: SQLSTATE %s, want 54000", code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the oversized statement took %v to refuse", d)
		}
		if le := lastLimit(t, p, i+1); le.Limit != LimitMessage {
			t.Fatalf("limit %q, want %q", le.Limit, LimitMessage)
		}
	}
	grown := int64(heapInUse()) - int64(before)
	t.Logf("heap in use grew by %d KiB over three refused 63 MiB statements", grown>>10)
	if grown > 4<<20 {
		t.Fatalf("heap grew by %d bytes", grown)
	}
	if _, peak := budget.state(); peak != 0 {
		t.Fatalf("the budget was drawn on (%d bytes) for a refused message", peak)
	}

	c := connect(t, p)
	ctx := context.Background()
	// Below the cap: kept whole, drawn from the budget and given back.
	var n int
	sql := "SELECT length('" + strings.Repeat("x", 600<<10) + "')"
	if err := c.QueryRow(ctx, sql).Scan(&n); err != nil || n != 600<<10 {
		t.Fatalf("600 KiB statement: %d, %v", n, err)
	}
	// A 3 MiB parameter is streamed, not buffered: no cap applies.
	big := strings.Repeat("y", 3<<20)
	if err := c.QueryRow(ctx, "SELECT length($1::text)", big).Scan(&n); err != nil || n != len(big) {
		t.Fatalf("3 MiB parameter: %d, %v", n, err)
	}
	if _, peak := budget.state(); peak == 0 || peak > 1<<20 {
		t.Fatalf("budget peak %d, want between 1 and 1 MiB", peak)
	}
	// Above the cap through a real client.
	_, err := c.Exec(ctx, "SELECT '"+strings.Repeat("z", 2<<20)+"'")
	wantPgError(t, err, "54000", "larger than")
	c.Close(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for used, _ := budget.state(); used != 0; used, _ = budget.state() {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of the budget still held after every session ended", used)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayBudgetShared: sessions sharing a budget cannot together buffer
// more than it; the session that would go over ends with 53200 and the
// others go on.
func TestRelayBudgetShared(t *testing.T) {
	pg := testenv.StartPostgres(t)
	budget := &countingBudget{size: 2 << 20}
	p := startProxy(t, pg, func() RelayConfig {
		return RelayConfig{Enforcer: allowAll, MaxBuffered: 2 << 20, Budget: budget}
	})
	// The first session's half-sent statement holds 1.5 MiB of the budget.
	first, firstFE := rawAgent(t, p)
	declare(t, first, 3<<19, 1<<10)
	deadline := time.Now().Add(5 * time.Second)
	for used, _ := budget.state(); used == 0; used, _ = budget.state() {
		if time.Now().After(deadline) {
			t.Fatal("the first statement did not draw on the budget")
		}
		time.Sleep(10 * time.Millisecond)
	}
	second, secondFE := rawAgent(t, p)
	declare(t, second, 3<<19, 1<<10)
	if code := wantFatal(t, secondFE); code != "53200" {
		t.Fatalf("second session over the budget: SQLSTATE %s, want 53200", code)
	}
	if le := lastLimit(t, p, 1); le.Limit != LimitBudget {
		t.Fatalf("limit %q, want %q", le.Limit, LimitBudget)
	}
	// The first finishes its statement and gets its answer.
	rest := "SELECT 1 AS x -- " + strings.Repeat("-", 3<<19-(1<<10)-18)
	if _, err := first.Write(append([]byte(rest), 0)); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := firstFE.Receive()
		if err != nil {
			t.Fatalf("first session: %v", err)
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("first session: %s %s", e.Code, e.Message)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	first.Close()
	deadline = time.Now().Add(5 * time.Second)
	for used, _ := budget.state(); used != 0; used, _ = budget.state() {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes of the budget still held", used)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayMessageTimeout: a message begun and not finished ends the
// session after the timeout; an idle session between messages does not.
func TestRelayMessageTimeout(t *testing.T) {
	pg := testenv.StartPostgres(t)
	const timeout = time.Second
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll, MessageTimeout: timeout} })

	idle := connect(t, p)
	conn, fe := rawAgent(t, p)
	start := time.Now()
	declare(t, conn, 100, 10)
	if code := wantFatal(t, fe); code != "08P01" {
		t.Fatalf("unfinished message: SQLSTATE %s, want 08P01", code)
	}
	if d := time.Since(start); d < timeout || d > timeout+5*time.Second {
		t.Fatalf("unfinished message ended the session after %v, want about %v", d, timeout)
	}
	if le := lastLimit(t, p, 1); le.Limit != LimitMessageTimeout {
		t.Fatalf("limit %q, want %q", le.Limit, LimitMessageTimeout)
	}
	// A statement trickled in parts, each well within the timeout, and a
	// long stream of messages, each in time, are not cut off.
	conn, fe = rawAgent(t, p)
	for _, part := range [][]byte{{'Q', 0, 0}, {0, 13, 'S', 'E', 'L'}, []byte("ECT 1\x00")} {
		conn.Write(part)
		time.Sleep(timeout / 8)
	}
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("trickled statement: %v", err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	time.Sleep(timeout + 200*time.Millisecond)
	var one int
	if err := idle.QueryRow(context.Background(), "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("a session idle for longer than the timeout: %v", err)
	}
}

// TestAcceptClientEncryptionRequestsOnce: each kind of encryption request is
// answered once; a stream of them ends the handshake at the first repeat.
func TestAcceptClientEncryptionRequestsOnce(t *testing.T) {
	ssl := []byte{0, 0, 0, 8, 4, 210, 22, 47}
	gss := []byte{0, 0, 0, 8, 4, 210, 22, 48}
	a, b := net.Pipe()
	defer a.Close()
	answers := make(chan int, 1)
	go func() {
		// 1000 SSLRequests, as fast as they are read.
		n := 0
		go func() {
			for i := 0; i < 1000; i++ {
				if _, err := b.Write(ssl); err != nil {
					return
				}
			}
		}()
		var buf [1]byte
		for {
			if _, err := b.Read(buf[:]); err != nil {
				break
			}
			n++
		}
		answers <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := AcceptClient(ctx, a, ClientConfig{})
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("a repeated SSLRequest: want a ProtocolError, got %v", err)
	}
	a.Close()
	if n := <-answers; n != 1 {
		t.Fatalf("%d answers to 1000 SSLRequests, want 1", n)
	}

	// One of each, then the startup: accepted as a server would. A pipe of
	// its own: the flood's writer above may still hold b.
	server, client := net.Pipe()
	defer server.Close()
	go func() {
		var buf [1]byte
		for _, m := range [][]byte{ssl, gss} {
			client.Write(m)
			client.Read(buf[:])
		}
		st, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "u"}}).Encode(nil)
		client.Write(st)
	}()
	h, err := AcceptClient(ctx, server, ClientConfig{})
	if err != nil || h.Startup == nil || h.Startup.User != "u" {
		t.Fatalf("SSLRequest, GSSENCRequest, startup: %+v, %v", h, err)
	}
}

// TestRelayPipelineWithoutReading: an agent that sends Sync after Sync and
// reads nothing meets back-pressure, as from a server, instead of growing
// the relay's memory by an entry per message; once it reads, every Sync is
// answered in order. A real client's batch larger than the bound works.
func TestRelayPipelineWithoutReading(t *testing.T) {
	pg := testenv.StartPostgres(t)
	p := startProxy(t, pg, func() RelayConfig { return RelayConfig{Enforcer: allowAll} })
	conn, fe := rawAgent(t, p)
	conn.SetDeadline(time.Time{})
	const syncs = 1 << 20
	before := heapInUse()
	wrote := make(chan error, 1)
	go func() {
		batch := make([]byte, 0, 5<<12)
		for len(batch) < cap(batch) {
			batch = append(batch, 'S', 0, 0, 0, 4)
		}
		for sent := 0; sent < syncs; sent += 1 << 12 {
			if _, err := conn.Write(batch); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	// Long enough for every buffer on the way to fill.
	time.Sleep(3 * time.Second)
	grown := int64(heapInUse()) - int64(before)
	t.Logf("heap in use grew by %d KiB while the agent read nothing", grown>>10)
	if grown > 16<<20 {
		t.Fatalf("heap grew by %d bytes", grown)
	}
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	for n := 0; n < syncs; {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %d answers: %v", n, err)
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			n++
		}
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}

	c := connect(t, p)
	b := &pgx.Batch{}
	for i := 0; i < 3*maxPending; i++ {
		b.Queue("SELECT $1::int", i)
	}
	br := c.SendBatch(context.Background(), b)
	for i := 0; i < 3*maxPending; i++ {
		var got int
		if err := br.QueryRow().Scan(&got); err != nil || got != i {
			t.Fatalf("batch query %d: %d, %v", i, got, err)
		}
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
}
