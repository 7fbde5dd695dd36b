package ssh

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/pkg/sftp"
	xssh "golang.org/x/crypto/ssh"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// The Operations of sftp requests (protocol.Request.Operation); Text is
// the absolute, clean path the operation acts on. policy.DecideSSH decides
// them by the same names.
const (
	// OpSFTPRead reads a file, a directory listing or a link.
	OpSFTPRead = "sftp-read"
	// OpSFTPWrite creates, writes, removes, renames or links a path, or
	// changes its attributes.
	OpSFTPWrite = "sftp-write"
	// OpSFTPStat reads a path's attributes.
	OpSFTPStat = "sftp-stat"
)

// MsgSFTP is the recording's message type of an sftp operation: what the
// agent asked and the paths, e.g. "open-write /srv/upload/a.txt" or
// "rename /a -> /b".
const MsgSFTP = 'f'

// sftpReadBuffer is how much of the agent's sftp stream one read takes;
// sftpWriteBatch bounds the requests queued for the server (batchWriter).
const (
	sftpReadBuffer = 128 << 10
	sftpWriteBatch = 256 << 10
)

// serveSFTP serves the agent's sftp subsystem from one of the server's:
// interlockd answers the agent's packets itself (pkg/sftp's request
// server), deciding each operation on its path, and carries out the
// allowed ones upstream with an sftp client. Paths are resolved against the
// server's starting directory (the login user's home), as the server would
// resolve them, so rules see absolute paths.
func (c *conn) serveSFTP(ctx context.Context, ch xssh.Channel, r *xssh.Request) {
	up, err := c.sftpUpstream()
	if err != nil {
		r.Reply(false, nil)
		c.tell(ch, "the server refused the sftp subsystem")
		return
	}
	defer up.Close()
	home, err := up.Getwd()
	if err != nil {
		r.Reply(false, nil)
		c.tell(ch, "the server did not say its sftp starting directory")
		return
	}
	r.Reply(true, nil)
	h := &sftpHandlers{c: c, ctx: ctx, up: up.Client, ch: ch}
	// Without the allocator every packet the agent sends is a new buffer,
	// and collecting them made an upload cost 16.6 CPU-ms per MiB instead
	// of 9.5 (BenchmarkSFTPUpload, the whole process). With it, a session
	// keeps a 256 KiB page per packet it has read ahead and reuses them:
	// about 8 MiB for an upload at OpenSSH's pace.
	// The request server reads a packet in two reads (length, then the
	// rest), and x/crypto/ssh answers every read of a channel whose window
	// is in use with a window adjustment: two packets to the agent for
	// every 32 KiB it uploads, each its own write to the socket (13 % of
	// interlockd's CPU in an scp upload). Reading through a buffer takes
	// what has arrived in one read, so one adjustment per buffer's worth.
	// The answers go out in batches too (batchWriter).
	answers := newBatchWriter(ch, sftpWriteBatch)
	rw := struct {
		io.Reader
		io.Writer
		io.Closer
	}{bufio.NewReaderSize(ch, sftpReadBuffer), answers, ch}
	srv := sftp.NewRequestServer(rw, sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}, sftp.WithStartDirectory(home), sftp.WithRSAllocator())
	defer srv.Close()
	status := uint32(0)
	if err := srv.Serve(); err != nil && !errors.Is(err, io.EOF) {
		status = 1
	}
	// Every answer reaches the agent before the session's end does.
	answers.Close()
	// As sshd reports its sftp-server's end: scp counts a session that
	// ends without a status as failed.
	c.exit(ch, "exit-status", xssh.Marshal(&struct{ Status uint32 }{status}))
	ch.CloseWrite()
}

// sftpUpstream starts the server's sftp subsystem on a session of its own
// and returns a client of it whose requests are written in batches.
func (c *conn) sftpUpstream() (*sftpClient, error) {
	sess, err := c.up.NewSession()
	if err != nil {
		return nil, err
	}
	w, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	r, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, err
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		sess.Close()
		return nil, err
	}
	// Closing the client writes its queued requests, then ends the
	// server's input, so the server ends its output and the client's
	// reader stops.
	cl, err := sftp.NewClientPipe(r, &sftpRequests{newBatchWriter(w, sftpWriteBatch), w})
	if err != nil {
		sess.Close()
		return nil, err
	}
	return &sftpClient{Client: cl, sess: sess}, nil
}

// sftpRequests is the server's input as the sftp client writes it.
type sftpRequests struct {
	*batchWriter
	stdin io.Closer
}

func (r *sftpRequests) Close() error {
	err := r.batchWriter.Close()
	if cerr := r.stdin.Close(); err == nil {
		err = cerr
	}
	return err
}

// sftpClient is an sftp client of the server and the session it runs on.
type sftpClient struct {
	*sftp.Client
	sess *xssh.Session
}

// Close ends the client (its queued requests written first), then the
// server's subsystem.
func (c *sftpClient) Close() error {
	err := c.Client.Close()
	c.sess.Close()
	return err
}

// sftpHandlers decides and relays the agent's sftp requests
// (sftp.Handlers).
type sftpHandlers struct {
	c   *conn
	ctx context.Context
	up  *sftp.Client
	// ch is the agent's channel, whose stderr tells denials: OpenSSH's
	// sftp shows its own text for a status, not the server's message.
	ch xssh.Channel
}

// decide records what the agent asked and decides each path, as one step:
// the first path not allowed denies the request. A held request waits for
// its reviewer here; the agent's other requests go on meanwhile.
func (h *sftpHandlers) decide(what string, op string, paths ...string) error {
	c := h.c
	v := h.verdict(what, op, paths)
	if v.Action == protocol.Hold {
		v = waitApproval(h.ctx, v)
	}
	if v.Action == protocol.Deny {
		msg := fmt.Sprintf("%s: denied by policy rule %q%s", what, v.Rule, suffix(v.Message))
		c.tell(h.ch, msg)
		return fmt.Errorf("interlock: %s: %w", msg, sftp.ErrSSHFxPermissionDenied)
	}
	return nil
}

// verdict records the request and decides its paths, under the lock that
// files each decision with its request.
func (h *sftpHandlers) verdict(what string, op string, paths []string) (v protocol.Verdict) {
	c := h.c
	c.decide.Lock()
	defer c.decide.Unlock()
	c.s.Recorder.Record(protocol.Message{FromClient: true, Type: MsgSFTP, Body: []byte(what), Time: time.Now()})
	for _, p := range paths {
		if v = c.s.Enforcer.Decide(h.ctx, protocol.Request{Operation: op, Text: p}); v.Action != protocol.Allow && v.Action != protocol.Mask {
			break
		}
	}
	return v
}

// contain is deferred by every handler: pkg/sftp runs them on goroutines
// of its own, which recover nothing. A handler that panicked answers
// SSH_FX_FAILURE, and the connection ends (conn.contain).
func (h *sftpHandlers) contain(method string, err *error) {
	if ie := protocol.Contained("sftp "+method, recover()); ie != nil {
		h.c.fail(ie)
		*err = fmt.Errorf("interlock: internal error: %w", sftp.ErrSSHFxFailure)
	}
}

// serverStatus turns the server's answer into what the request server sends
// the agent: the server's own status, which pkg/sftp's client hands back
// as os errors.
func serverStatus(err error) error {
	var se *sftp.StatusError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, os.ErrNotExist):
		return sftp.ErrSSHFxNoSuchFile
	case errors.Is(err, os.ErrPermission):
		return sftp.ErrSSHFxPermissionDenied
	case errors.Is(err, io.EOF):
		return io.EOF
	case errors.As(err, &se):
		return fmt.Errorf("%s: %w", se.Error(), sftp.ErrSSHFxFailure)
	}
	return err
}

// Fileread opens a file for reading upstream (sftp.FileReader).
func (h *sftpHandlers) Fileread(r *sftp.Request) (_ io.ReaderAt, err error) {
	defer h.contain(r.Method, &err)
	if err := h.decide("open-read "+r.Filepath, OpSFTPRead, r.Filepath); err != nil {
		return nil, err
	}
	f, err := h.up.Open(r.Filepath)
	if err != nil {
		return nil, serverStatus(err)
	}
	return sftpFile{f}, nil
}

// Filewrite opens a file for writing upstream with the agent's flags
// (sftp.FileWriter).
func (h *sftpHandlers) Filewrite(r *sftp.Request) (_ io.WriterAt, err error) {
	defer h.contain(r.Method, &err)
	if err := h.decide("open-write "+r.Filepath, OpSFTPWrite, r.Filepath); err != nil {
		return nil, err
	}
	pf := r.Pflags()
	flags := os.O_WRONLY
	if pf.Read {
		flags = os.O_RDWR
	}
	for _, f := range []struct {
		set  bool
		flag int
	}{{pf.Append, os.O_APPEND}, {pf.Creat, os.O_CREATE}, {pf.Trunc, os.O_TRUNC}, {pf.Excl, os.O_EXCL}} {
		if f.set {
			flags |= f.flag
		}
	}
	f, err := h.up.OpenFile(r.Filepath, flags)
	if err != nil {
		return nil, serverStatus(err)
	}
	return sftpFile{f}, nil
}

// sftpFile is an upstream file the request server reads or writes at
// offsets and closes; errors are the server's status.
type sftpFile struct{ f *sftp.File }

func (f sftpFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.f.ReadAt(p, off)
	return n, serverStatus(err)
}

func (f sftpFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.f.WriteAt(p, off)
	return n, serverStatus(err)
}

func (f sftpFile) Close() error { return serverStatus(f.f.Close()) }

// Filecmd carries out a change of the file tree upstream (sftp.FileCmder).
func (h *sftpHandlers) Filecmd(r *sftp.Request) (err error) {
	defer h.contain(r.Method, &err)
	p := r.Filepath
	switch r.Method {
	case "Setstat":
		if err := h.decide("setstat "+p, OpSFTPWrite, p); err != nil {
			return err
		}
		return h.setstat(r)
	case "Rename", "PosixRename":
		if err := h.decide(strings.ToLower(r.Method)+" "+p+" -> "+r.Target, OpSFTPWrite, p, r.Target); err != nil {
			return err
		}
		if r.Method == "PosixRename" {
			return serverStatus(h.up.PosixRename(p, r.Target))
		}
		return serverStatus(h.up.Rename(p, r.Target))
	case "Rmdir":
		if err := h.decide("rmdir "+p, OpSFTPWrite, p); err != nil {
			return err
		}
		return serverStatus(h.up.RemoveDirectory(p))
	case "Remove":
		if err := h.decide("remove "+p, OpSFTPWrite, p); err != nil {
			return err
		}
		return serverStatus(h.up.Remove(p))
	case "Mkdir":
		if err := h.decide("mkdir "+p, OpSFTPWrite, p); err != nil {
			return err
		}
		return serverStatus(h.up.Mkdir(p))
	case "Symlink":
		// Filepath is what the link points at, as the agent wrote it:
		// relative to the link's directory unless absolute. A link may
		// only lead where the agent may write anyway.
		target := p
		if !path.IsAbs(target) {
			target = path.Join(path.Dir(r.Target), target)
		}
		if err := h.decide("symlink "+r.Target+" -> "+p, OpSFTPWrite, r.Target, path.Clean(target)); err != nil {
			return err
		}
		return serverStatus(h.up.Symlink(p, r.Target))
	case "Link":
		if err := h.decide("link "+r.Target+" -> "+p, OpSFTPWrite, r.Target, p); err != nil {
			return err
		}
		return serverStatus(h.up.Link(p, r.Target))
	}
	h.decide(strings.ToLower(r.Method)+" "+p, strings.ToLower(r.Method), p)
	return sftp.ErrSSHFxOpUnsupported
}

// setstat applies the attributes the agent sent, each as the server's own
// request would.
func (h *sftpHandlers) setstat(r *sftp.Request) error {
	flags, a, p := r.AttrFlags(), r.Attributes(), r.Filepath
	if a == nil {
		// Attributes shorter than their flags say: pkg/sftp parses none.
		return sftp.ErrSSHFxBadMessage
	}
	if flags.Size {
		if err := h.up.Truncate(p, int64(a.Size)); err != nil {
			return serverStatus(err)
		}
	}
	if flags.Permissions {
		if err := h.up.Chmod(p, a.FileMode()); err != nil {
			return serverStatus(err)
		}
	}
	if flags.UidGid {
		if err := h.up.Chown(p, int(a.UID), int(a.GID)); err != nil {
			return serverStatus(err)
		}
	}
	if flags.Acmodtime {
		if err := h.up.Chtimes(p, a.AccessTime(), a.ModTime()); err != nil {
			return serverStatus(err)
		}
	}
	return nil
}

// Filelist lists a directory or stats a path upstream (sftp.FileLister).
func (h *sftpHandlers) Filelist(r *sftp.Request) (_ sftp.ListerAt, err error) {
	defer h.contain(r.Method, &err)
	p := r.Filepath
	switch r.Method {
	case "List":
		if err := h.decide("list "+p, OpSFTPRead, p); err != nil {
			return nil, err
		}
		fis, err := h.up.ReadDir(p)
		if err != nil {
			return nil, serverStatus(err)
		}
		return listing(fis), nil
	case "Stat":
		if err := h.decide("stat "+p, OpSFTPStat, p); err != nil {
			return nil, err
		}
		fi, err := h.up.Stat(p)
		if err != nil {
			return nil, serverStatus(err)
		}
		return listing{fi}, nil
	}
	h.decide(strings.ToLower(r.Method)+" "+p, strings.ToLower(r.Method), p)
	return nil, sftp.ErrSSHFxOpUnsupported
}

// Lstat stats a path upstream without following a final link
// (sftp.LstatFileLister).
func (h *sftpHandlers) Lstat(r *sftp.Request) (_ sftp.ListerAt, err error) {
	defer h.contain(r.Method, &err)
	if err := h.decide("lstat "+r.Filepath, OpSFTPStat, r.Filepath); err != nil {
		return nil, err
	}
	fi, err := h.up.Lstat(r.Filepath)
	if err != nil {
		return nil, serverStatus(err)
	}
	return listing{fi}, nil
}

// Readlink reads a link upstream (sftp.ReadlinkFileLister).
func (h *sftpHandlers) Readlink(p string) (_ string, err error) {
	defer h.contain("Readlink", &err)
	if err := h.decide("readlink "+p, OpSFTPRead, p); err != nil {
		return "", err
	}
	t, err := h.up.ReadLink(p)
	return t, serverStatus(err)
}

// listing is a directory listing or one stat's answer (sftp.ListerAt).
type listing []os.FileInfo

func (l listing) ListAt(dst []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}
