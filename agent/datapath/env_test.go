package datapath

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/interlock-dev/interlock/agent/testenv"
)

// The test binary re-executes itself as the "agent": a child placed in a
// cgroup of the test's own subtree that performs one network operation and
// prints what happened as JSON.
const helperEnv = "INTERLOCK_DATAPATH_HELPER"

func TestMain(m *testing.M) {
	if action := os.Getenv(helperEnv); action != "" {
		os.Exit(runHelper(action, os.Args[len(os.Args)-1]))
	}
	os.Exit(m.Run())
}

// result is what a helper reports.
type result struct {
	Err   string // "" on success
	Errno int    // the syscall errno behind Err, if any
	Peer  string // getpeername of the connected socket
	Local string // getsockname
	Data  string // first line read from the connection
	PID   int
	UID   int
	// SetupErrno is the errno of a step before the operation (a
	// setsockopt, a bind), if it failed.
	SetupErrno int
}

func errResult(err error) result {
	r := result{Err: err.Error(), PID: os.Getpid(), UID: os.Getuid()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		r.Errno = int(errno)
	}
	return r
}

func runHelper(action, arg string) int {
	var r result
	switch action {
	case "tcp", "tcp6":
		r = helperTCP(action, arg)
	case "tfo":
		r = helperFastOpen(arg)
	case "uring":
		r = helperUringConnect(arg)
	case "uring-sendto":
		r = helperUringSendto(arg)
	case "uring-unix":
		r = helperUringUnix(arg)
	case "uring-raw":
		r = helperUringRaw()
	case "hit-and-run":
		// Connect, send, close at once: gone before the proxy accepts.
		c, err := net.Dial("tcp", arg)
		if err != nil {
			r = errResult(err)
		} else {
			c.Write([]byte("bye\n"))
			c.Close()
		}
	case "tcp-mapped":
		r = helperMapped(arg)
	case "udp", "udp6":
		c, err := net.Dial(action, arg)
		if err == nil {
			_, err = c.Write([]byte("ping"))
			c.Close()
		}
		if err != nil {
			r = errResult(err)
		}
	case "sendto":
		// An unconnected UDP send: the sendmsg hook decides.
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err == nil {
			ap := netip.MustParseAddrPort(arg)
			err = unix.Sendto(fd, []byte("ping"), 0, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()})
			unix.Close(fd)
		}
		if err != nil {
			r = errResult(err)
		}
	case "raw":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
		if err != nil {
			r = errResult(err)
		} else {
			unix.Close(fd)
		}
	case "packet":
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			r = errResult(err)
		} else {
			unix.Close(fd)
		}
	case "vsock":
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0)
		if err != nil {
			r = errResult(err)
		} else {
			unix.Close(fd)
		}
	case "unix":
		c, err := net.Dial("unix", arg)
		if err != nil {
			r = errResult(err)
		} else {
			c.Close()
		}
	case "srcroute":
		r = helperSourceRoute(arg)
	case "bind":
		r = helperBind(arg)
	case "listen":
		return helperListen(arg)
	case "squat":
		return helperSquat(arg)
	case "unixgram":
		r = helperUnixgram(arg)
	case "dns":
		r = helperDNS(arg)
	case "udpself":
		return helperUDPSelf(arg)
	case "udprecv":
		return helperUDPRecv(arg)
	case "bigsockopt":
		r = helperBigSockopt(arg)
	case "unixfull":
		r = helperUnixFull(arg)
	case "bench":
		return helperBench(arg)
	case "open":
		return helperOpen(arg)
	case "loop":
		return helperLoop(arg)
	default:
		r = result{Err: "unknown action " + action}
	}
	if r.PID == 0 {
		r.PID, r.UID = os.Getpid(), os.Getuid()
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

func helperTCP(network, addr string) result {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return errResult(err)
	}
	defer c.Close()
	r := result{PID: os.Getpid(), UID: os.Getuid(), Local: c.LocalAddr().String()}
	// Ask the kernel directly rather than trusting net's cached address.
	raw, _ := c.(*net.TCPConn).SyscallConn()
	raw.Control(func(fd uintptr) {
		sa, err := unix.Getpeername(int(fd))
		if err != nil {
			r.Peer = "error: " + err.Error()
			return
		}
		r.Peer = sockaddrString(sa)
	})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		r.Err = "read: " + err.Error()
	}
	r.Data = strings.TrimSpace(line)
	return r
}

// helperMapped connects an AF_INET6 socket to an IPv4-mapped address, which
// Go's net package would not do.
func helperMapped(addr string) result {
	ap := netip.MustParseAddrPort(addr)
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	f := os.NewFile(uintptr(fd), "tcp6")
	defer f.Close()
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		return errResult(err)
	}
	return connected(f, fd)
}

// connected reports a helper's connected socket f (descriptor fd): its
// addresses, as the kernel has them, and the first line read from it.
func connected(f *os.File, fd int) result {
	r := result{PID: os.Getpid(), UID: os.Getuid()}
	if sa, err := unix.Getpeername(fd); err == nil {
		r.Peer = sockaddrString(sa)
	}
	if sa, err := unix.Getsockname(fd); err == nil {
		r.Local = sockaddrString(sa)
	}
	f.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		r.Err = "read: " + err.Error()
	}
	r.Data = strings.TrimSpace(line)
	return r
}

// helperFastOpen connects with TCP Fast Open: sendto(MSG_FASTOPEN) instead
// of connect(2).
func helperFastOpen(addr string) result {
	ap := netip.MustParseAddrPort(addr)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return errResult(err)
	}
	f := os.NewFile(uintptr(fd), "tfo")
	defer f.Close()
	if err := unix.Sendto(fd, []byte("hello\n"), unix.MSG_FASTOPEN, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
		return errResult(err)
	}
	return connected(f, fd)
}

// helperLoop connects to addr over and over until stdin closes, printing one
// line per attempt: what the first line read was, or the error.
func helperLoop(addr string) int {
	stop := make(chan struct{})
	go func() {
		buf := make([]byte, 1)
		os.Stdin.Read(buf)
		close(stop)
	}()
	for {
		select {
		case <-stop:
			return 0
		default:
		}
		r := helperTCP("tcp", addr)
		if r.Err != "" {
			fmt.Println("error", r.Errno)
		} else {
			fmt.Println("ok", r.Data)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

// env is one test's private world: a cgroup subtree the programs attach
// at, a bpffs instance for the pins, a loaded Datapath.
type env struct {
	t      testing.TB
	mount  string // cgroup2 mount
	root   string // the test's cgroup subtree
	pinDir string
	cfg    Config
	dp     *Datapath
	// listeners are the fake proxy's sockets, served by open.
	listeners []*net.TCPListener
	// dnsConns are the fake DNS proxy's sockets, served by open.
	dnsConns []*net.UDPConn
}

func randomName(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newEnv sets up the subtree and pin dir; it does not Open.
func newEnv(t testing.TB) *env {
	t.Helper()
	testenv.Privileged(t)
	if err := CheckKernel(); err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	mount, err := CgroupMount()
	if err != nil {
		testenv.Unavailable(t, "%v", err)
	}
	e := &env{t: t, mount: mount}
	e.root = filepath.Join(mount, randomName("interlock-test-"))
	if err := os.Mkdir(e.root, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroupTree(t, e.root) })

	e.pinDir = t.TempDir()
	if err := unix.Mount("bpf", e.pinDir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		// Uninstall first: the links must be detached, not just unpinned.
		if err := Uninstall(e.pinDir); err != nil {
			t.Errorf("uninstall: %v", err)
		}
		if err := unix.Unmount(e.pinDir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	e.cfg = Config{CgroupRoot: e.root, PinDir: filepath.Join(e.pinDir, "interlock")}
	return e
}

// open opens the Datapath with e.cfg and closes it at cleanup.
func (e *env) open() *Datapath {
	e.t.Helper()
	dp, err := Open(e.cfg)
	if err != nil {
		e.t.Fatalf("open: %v", err)
	}
	e.dp = dp
	e.t.Cleanup(func() { dp.Close() })
	for _, l := range e.listeners {
		if err := dp.ServeListener(l); err != nil {
			e.t.Fatal(err)
		}
	}
	for _, c := range e.dnsConns {
		if err := dp.ServeDNS(c); err != nil {
			e.t.Fatal(err)
		}
	}
	return dp
}

// cgroup creates a cgroup below the test subtree (rel may be nested) and
// returns its path and id.
func (e *env) cgroup(rel string) (string, uint64) {
	e.t.Helper()
	dir := filepath.Join(e.root, rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatalf("create cgroup: %v", err)
	}
	id, err := CgroupID(dir)
	if err != nil {
		e.t.Fatal(err)
	}
	return dir, id
}

// removeCgroupTree kills what still runs in the tree and removes it, deepest
// first.
func removeCgroupTree(t testing.TB, root string) {
	var dirs []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.WriteFile(filepath.Join(dirs[i], "cgroup.kill"), []byte("1"), 0)
		var err error
		for try := 0; try < 100; try++ {
			if err = os.Remove(dirs[i]); err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("remove cgroup %s: %v", dirs[i], err)
		}
	}
}

// helperCmd builds a helper child that starts in the cgroup at dir.
func helperCmd(t testing.TB, dir, action, arg string) (*exec.Cmd, func()) {
	t.Helper()
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", arg)
	cmd.Env = append(os.Environ(), helperEnv+"="+action)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	return cmd, func() { cg.Close() }
}

// run runs one helper action in the cgroup at dir and returns its result.
func run(t testing.TB, dir, action, arg string) result {
	t.Helper()
	cmd, done := helperCmd(t, dir, action, arg)
	defer done()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper %s %s: %v\n%s", action, arg, err, out)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("helper %s output %q: %v", action, out, err)
	}
	return r
}

// server is a loopback TCP listener that greets every connection with its
// name and counts accepts.
type server struct {
	ln      *net.TCPListener
	name    string
	accepts atomic.Int64
	// onAccept, if set, is called with each connection before the greeting
	// and returns the greeting.
	onAccept func(net.Conn) string
}

func listen(t testing.TB, network, addr, name string, onAccept func(net.Conn) string) *server {
	t.Helper()
	ln := tcpListen(t, network, addr)
	s := &server{ln: ln, name: name, onAccept: onAccept}
	go s.serve()
	return s
}

// tcpListen listens with plain TCP, not Go's default MPTCP: a proxy's
// listener goes into a SOCKMAP, which holds TCP sockets only.
func tcpListen(t testing.TB, network, addr string) *net.TCPListener {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(t.Context(), network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	// The cleanup also keeps the listener reachable: once served, nothing
	// else may refer to it, and its finalizer would close the socket.
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func (s *server) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepts.Add(1)
		go func() {
			defer c.Close()
			greeting := s.name
			if s.onAccept != nil {
				greeting = s.onAccept(c)
			}
			fmt.Fprintln(c, greeting)
			// Close politely: half-close, then drain until the client
			// closes. Closing with the client's bytes unread resets the
			// connection, and a reset socket has no peer to report: a
			// Fast Open client's first bytes arrive that way.
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.Copy(io.Discard, c)
		}()
	}
}

func (s *server) addrPort() netip.AddrPort {
	return s.ln.Addr().(*net.TCPAddr).AddrPort()
}
