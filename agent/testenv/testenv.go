// Package testenv gives tests the real environment they need: root for the
// kernel tests, a throwaway PostgreSQL cluster, a private cgroup subtree.
//
// Privileged tests never silently skip where CI runs: when
// INTERLOCK_TEST_PRIVILEGED=1 a missing prerequisite is a failure.
package testenv

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MustRun reports whether the environment demands that privileged tests run.
func MustRun() bool { return os.Getenv("INTERLOCK_TEST_PRIVILEGED") == "1" }

// Privileged skips the test when it cannot run here, unless
// INTERLOCK_TEST_PRIVILEGED=1, in which case it fails.
func Privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	Unavailable(t, "needs root")
}

// Unavailable stops a test whose prerequisite is missing: a failure when
// INTERLOCK_TEST_PRIVILEGED=1, a skip otherwise.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if MustRun() {
		t.Fatalf("INTERLOCK_TEST_PRIVILEGED=1 but %s", msg)
	}
	t.Skip(msg)
}

// ListenDNS opens a UDP and a TCP listener on one loopback port, as a DNS
// server has, and closes both when the test ends. The port the kernel picks
// for UDP may be a TCP connection's local port at that moment (tests running
// beside this one), so it picks again then.
func ListenDNS(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for try := 0; ; try++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			t.Cleanup(func() { pc.Close(); ln.Close() })
			return pc, ln
		}
		pc.Close()
		if try == 20 {
			t.Fatal(err)
		}
	}
}

// FreePort returns a port for a server a test starts later (PostgreSQL, a
// metrics endpoint, interlockd's --listen-port): below the kernel's
// ephemeral range, and free on loopback for TCP and UDP a moment ago. A
// port from the ephemeral range may become another process's port 0
// between the pick and the bind: CI saw interlockd fail to bind its
// metrics port because a test in another package had connected from it.
// For interlockd's proxy port the range matters twice: interlockd never
// binds that port for TCP, its sk_lookup program hands every connection to
// 127.0.0.1 and [::1] on it, in the whole network namespace, to its own
// listener, so a process whose port 0 it became would lose its own
// connections. A port is also reserved for the test until it ends (see
// reserve), so that no other test, of this package or another run beside
// it, picks it before its server has bound it.
func FreePort(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	var ephemeral int
	if _, err := fmt.Sscan(string(b), &ephemeral); err != nil {
		t.Fatalf("free port: ip_local_port_range %q: %v", b, err)
	}
	const lowest = 10000
	if ephemeral <= lowest+1000 {
		t.Fatalf("free port: the ephemeral range starts at %d, leaving no room below it above %d", ephemeral, lowest)
	}
	for i := 0; i < 200; i++ {
		port := lowest + rand.IntN(ephemeral-lowest)
		if loopbackFree(port) && reserve(t, port) {
			return port
		}
	}
	t.Fatalf("free port: no free port found in %d-%d", lowest, ephemeral-1)
	return 0
}

// portLocks is where FreePort's reservations are: a file per port, locked
// by the test process that holds it. The kernel drops a lock with the
// process that took it, so a test killed half-way leaves none behind. One
// directory per user, which only its user can write to.
var portLocks = filepath.Join(os.TempDir(), fmt.Sprintf("interlock-test-ports-%d", os.Getuid()))

// reserve takes port for t until t ends, or reports that another test
// (of any test process on the host) holds it. Between a pick and its
// server's bind there is a window, a second or more for a PostgreSQL
// cluster or an interlockd starting, in which the port is free on
// loopback yet promised.
func reserve(t testing.TB, port int) bool {
	t.Helper()
	if err := os.MkdirAll(portLocks, 0o700); err != nil {
		t.Fatalf("free port: %v", err)
	}
	f, err := os.OpenFile(filepath.Join(portLocks, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	// flock's locks belong to the open file, so a second reservation of
	// the port within this process is refused as one from another.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if err == syscall.EWOULDBLOCK {
			return false
		}
		t.Fatalf("free port: lock %s: %v", f.Name(), err)
	}
	t.Cleanup(func() { f.Close() })
	return true
}

// loopbackFree reports whether port can be bound for TCP and UDP on
// 127.0.0.1, and on ::1 where the host has it.
func loopbackFree(port int) bool {
	for _, host := range []string{"127.0.0.1", "::1"} {
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			if host == "::1" && !hasIPv6Loopback() {
				continue
			}
			return false
		}
		l.Close()
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

func hasIPv6Loopback() bool {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// PGBin returns the directory of PostgreSQL's server binaries (Debian layout).
func PGBin(t testing.TB) string {
	t.Helper()
	for _, v := range []string{"17", "16", "15"} {
		dir := "/usr/lib/postgresql/" + v + "/bin"
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir
		}
	}
	Unavailable(t, "PostgreSQL server binaries not found under /usr/lib/postgresql")
	return ""
}

// Postgres is a throwaway PostgreSQL cluster owned by one test.
type Postgres struct {
	Dir  string // data directory
	Host string // 127.0.0.1
	Port int
	// Superuser is "postgres"; it authenticates with Password over TCP
	// (scram-sha-256) and with trust over the unix socket in SocketDir.
	Superuser string
	Password  string
	SocketDir string
}

// DSN returns a libpq URL for user/password on database db.
func (p *Postgres) DSN(user, password, db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", user, password, p.Host, p.Port, db)
}

// AdminDSN returns the superuser's URL for database postgres.
func (p *Postgres) AdminDSN() string { return p.DSN(p.Superuser, p.Password, "postgres") }

// Addr returns host:port.
func (p *Postgres) Addr() string { return net.JoinHostPort(p.Host, strconv.Itoa(p.Port)) }

// Psql runs psql as the superuser over the unix socket and returns its
// output; it fails the test on error.
func (p *Postgres) Psql(t testing.TB, sql string) string {
	t.Helper()
	cmd := exec.Command("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
		"-h", p.SocketDir, "-p", strconv.Itoa(p.Port), "-U", p.Superuser, "-d", "postgres", "-c", sql)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", sql, err, out)
	}
	return strings.TrimSpace(string(out))
}

// StartPostgres initdb's a cluster in a temporary directory, starts it on a
// free loopback port and stops it when the test ends. As root, the cluster
// runs as the postgres user (initdb refuses root).
func StartPostgres(t testing.TB, extraConf ...string) *Postgres {
	t.Helper()
	bin := PGBin(t)
	base, err := os.MkdirTemp("", "interlock-pg-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Postgres{
		Dir: filepath.Join(base, "data"), Host: "127.0.0.1", Port: FreePort(t),
		Superuser: "postgres", Password: "interlock-test-superuser", SocketDir: base,
	}
	asPG := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(filepath.Join(bin, name), args...)
		if os.Geteuid() == 0 {
			cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(bin, name)}, args...)...)
		}
		return cmd
	}
	if os.Geteuid() == 0 {
		if out, err := exec.Command("chown", "postgres:postgres", base).CombinedOutput(); err != nil {
			t.Fatalf("chown %s: %v\n%s", base, err, out)
		}
	}
	pwfile := filepath.Join(base, "pw")
	if err := os.WriteFile(pwfile, []byte(p.Password+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	out, err := asPG("initdb", "-D", p.Dir, "-U", p.Superuser, "--pwfile", pwfile,
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync").CombinedOutput()
	if err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		fmt.Sprintf("port = %d", p.Port),
		fmt.Sprintf("unix_socket_directories = '%s'", base),
		"fsync = off", "synchronous_commit = off", "full_page_writes = off",
		"max_connections = 200", "shared_buffers = 128MB",
	}
	conf = append(conf, extraConf...)
	f, err := os.OpenFile(filepath.Join(p.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(f, strings.Join(conf, "\n"))
	f.Close()
	logf := filepath.Join(base, "server.log")
	if out, err := asPG("pg_ctl", "-D", p.Dir, "-l", logf, "-w", "-t", "60", "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(logf)
		t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	t.Cleanup(func() {
		asPG("pg_ctl", "-D", p.Dir, "-m", "immediate", "-w", "stop").Run()
	})
	// pg_ctl -w returns once the server accepts connections; wait for TCP too.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres on %s: %v", p.Addr(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// TCPPair returns the two ends of a loopback TCP connection: the dialled
// one and the accepted one, closed when the test ends. Its waits are
// bounded: a handshake that does not complete fails the test with the
// kernel's view of the port rather than holding the package until its
// timeout (CI once saw an accept wait 40 minutes: a test interlockd of
// another package had been given the port's connections; see FreePort).
func TCPPair(t testing.TB) (dialled, accepted net.Conn) {
	t.Helper()
	const wait = 10 * time.Second
	// Plain TCP, as interlockd's listeners are: net.Listen's would be MPTCP
	// where the kernel has it, and this machine's does.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
	type accept struct {
		c   net.Conn
		err error
	}
	done := make(chan accept, 1)
	go func() {
		c, err := ln.Accept()
		done <- accept{c, err}
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), wait)
	if err != nil {
		t.Fatalf("dial %s: %v\n%s", ln.Addr(), err, sockets(ln.Addr()))
	}
	a := <-done
	if a.err != nil {
		c.Close()
		t.Fatalf("accept on %s, dialled from %s: %v\n%s", ln.Addr(), c.LocalAddr(), a.err, sockets(ln.Addr()))
	}
	if a.c.RemoteAddr().String() != c.LocalAddr().String() {
		c.Close()
		a.c.Close()
		t.Fatalf("accepted %s, but dialled from %s", a.c.RemoteAddr(), c.LocalAddr())
	}
	t.Cleanup(func() { c.Close(); a.c.Close() })
	return c, a.c
}

// sockets is what ss(8) shows of the sockets on addr's port, for a failure
// message.
func sockets(addr net.Addr) string {
	port := addr.(*net.TCPAddr).Port
	out, err := exec.Command("ss", "-tanoie", fmt.Sprintf("( sport = :%d or dport = :%d )", port, port)).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ss: %v\n%s", err, out)
	}
	return string(out)
}

// LiveHeap returns the bytes of live heap of this process after two
// collections: the second empties sync.Pools, whose victim caches survive
// one.
func LiveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
