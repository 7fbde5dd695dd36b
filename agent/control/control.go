// Package control is interlockd's control API: JSON over HTTP on a unix
// socket. Every request carries the caller's kernel credentials
// (SO_PEERCRED), so handlers decide on who is really asking, never on what
// the caller claims.
package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a control connection, as the
// kernel reports it when the connection was made.
type Peer struct {
	PID, UID, GID uint32
	// Cgroup is the caller's cgroup v2 path relative to the mount ("/a/b").
	Cgroup string
}

type peerKey struct{}

// ProcStatus returns the fields of the line named field ("Uid", "Groups")
// of /proc/PID/status: what a caller's socket credentials do not carry
// (its supplementary groups), or a process not at the other end of one.
func ProcStatus(pid int, field string) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.Fields(rest), nil
		}
	}
	return nil, fmt.Errorf("no %s line in /proc/%d/status", field, pid)
}

// RealUID is pid's real uid (the first of its status's Uid line).
func RealUID(pid int) (uint32, error) {
	f, err := ProcStatus(pid, "Uid")
	if err != nil {
		return 0, err
	}
	if len(f) == 0 {
		return 0, fmt.Errorf("empty Uid line in /proc/%d/status", pid)
	}
	u, err := strconv.ParseUint(f[0], 10, 32)
	return uint32(u), err
}

// PeerFrom returns the peer of the connection a request arrived on.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// Listen removes a stale socket file, listens on path with mode 0660 and
// returns the listener. With gid >= 0 the socket belongs to that group (the
// daemon's control_group), so its members can connect; the kernel checks
// the socket file's write permission at connect, before SO_PEERCRED is
// ever read. The directory is created 0755.
func Listen(path string, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen %s: another interlockd is serving this socket", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("chown %s: %w", path, err)
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return l, nil
}

// NewServer returns an http.Server whose request contexts carry the Peer of
// their connection. A connection whose credentials cannot be read is closed
// before any handler runs.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			p, err := peerOf(c)
			if err != nil {
				// A zero Peer with no cgroup is refused by every handler.
				return ctx
			}
			return context.WithValue(ctx, peerKey{}, p)
		},
	}
}

func peerOf(c net.Conn) (Peer, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{}, errors.New("not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if serr != nil {
		return Peer{}, fmt.Errorf("get SO_PEERCRED: %w", serr)
	}
	cg, err := CgroupOf(int(cred.Pid))
	if err != nil {
		return Peer{}, err
	}
	return Peer{PID: uint32(cred.Pid), UID: cred.Uid, GID: cred.Gid, Cgroup: cg}, nil
}

// CgroupOf returns the cgroup v2 path of pid relative to the cgroup2 mount,
// from the "0::" line of /proc/PID/cgroup.
func CgroupOf(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest, nil
		}
	}
	return "", fmt.Errorf("pid %d has no cgroup v2 membership", pid)
}

// Error is the JSON body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// WriteJSON answers with status and v encoded as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// WriteError answers with status and an Error body.
func WriteError(w http.ResponseWriter, status int, format string, args ...any) {
	WriteJSON(w, status, Error{Error: fmt.Sprintf(format, args...)})
}

// Client calls a daemon's control API. It is safe for concurrent use.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// ErrNotRunning means nothing answers on the control socket.
var ErrNotRunning = errors.New("interlockd is not running")

// ErrPermission means the caller may not connect to the control socket:
// interlockd may well be running.
var ErrPermission = errors.New("permission denied")

// Call sends in as JSON to path (POST, or GET when in is nil) and decodes the
// answer into out (may be nil). A non-2xx answer becomes an error carrying
// the daemon's message.
func (c *Client) Call(ctx context.Context, path string, in, out any) error {
	method, body := http.MethodGet, io.Reader(nil)
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		method, body = http.MethodPost, bytes.NewReader(b)
	}
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Stream GETs path and copies the answer's body to w (transcripts, asciicasts,
// JSON lines). A non-2xx answer becomes an error, and nothing is written.
func (c *Client) Stream(ctx context.Context, path string, w io.Writer) error {
	body, err := c.Open(ctx, path)
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = io.Copy(w, body)
	return err
}

// Open GETs path and returns the answer's body for the caller to read and
// close. A non-2xx answer becomes an error.
func (c *Client) Open(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := c.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// do sends one request and turns transport failures and non-2xx answers
// into errors; on success the caller closes the body.
func (c *Client) do(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://interlockd"+path, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
				return nil, fmt.Errorf("%w on the control socket %s: %s", ErrPermission, c.Socket, whoMay(c.Socket))
			}
			return nil, fmt.Errorf("%w (socket %s: %v)", ErrNotRunning, c.Socket, op.Err)
		}
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e Error
		data, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(data)))
	}
	return resp, nil
}

// whoMay says who may use the socket at path, from its owner, group and
// mode, for a caller that was refused.
func whoMay(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		// Refused on a directory on the way: nothing more to name.
		return fmt.Sprintf("cannot reach it (%v); run as root", err)
	}
	group := strconv.Itoa(int(st.Gid))
	if g, err := user.LookupGroupId(group); err == nil {
		group = g.Name
	}
	if st.Gid == 0 {
		return fmt.Sprintf("only root may use it (mode %04o, group %s); set control_group in interlockd.yaml to let a group's members in", st.Mode&0o7777, group)
	}
	return fmt.Sprintf("root and members of group %s may use it (mode %04o); add the user to group %s (then log in again)", group, st.Mode&0o7777, group)
}
