package ssh

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pkg/sftp"
	xssh "golang.org/x/crypto/ssh"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// packet frames one sftp packet: length, type, body.
func packet(typ byte, body ...[]byte) []byte {
	b := bytes.Join(body, nil)
	out := binary.BigEndian.AppendUint32(nil, uint32(1+len(b)))
	return append(append(out, typ), b...)
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

func str(s string) []byte { return append(u32(uint32(len(s))), s...) }

// FuzzSFTP feeds arbitrary bytes to the agent side of the sftp relay:
// interlockd must neither panic nor carry out anything the enforcer did
// not allow. Writes are allowed only under up/ of the server's directory,
// reads only within it; the rest of the directory must stay as it was.
func FuzzSFTP(f *testing.F) {
	init := packet(1, u32(3))
	f.Add(init)
	f.Add(append(append([]byte{}, init...), packet(3, u32(1), str("up/a"), u32(0x1a), u32(0))...)) // open create|trunc|write
	f.Add(append(append([]byte{}, init...), packet(13, u32(2), str("docs/a.txt"))...))             // remove
	f.Add(append(append([]byte{}, init...), packet(18, u32(3), str("up/a"), str("../../x"))...))   // rename
	f.Add(append(append([]byte{}, init...), packet(20, u32(4), str("../../etc"), str("up/l"))...)) // symlink
	f.Add(append(append([]byte{}, init...), packet(11, u32(5), str("."))...))                      // opendir
	f.Add(append(append([]byte{}, init...), packet(9, u32(6), str("up/a"), u32(0x2))...))          // setstat: uid and gid flagged, not sent
	f.Fuzz(func(t *testing.T, data []byte) {
		root := t.TempDir()
		os.Mkdir(filepath.Join(root, "up"), 0o755)
		os.Mkdir(filepath.Join(root, "docs"), 0o755)
		os.WriteFile(filepath.Join(root, "docs", "a.txt"), []byte("a"), 0o644)
		upAgent, upServer := net.Pipe()
		srv, err := sftp.NewServer(upServer, sftp.WithServerWorkingDirectory(root))
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve()
		defer srv.Close()
		up, err := sftp.NewClientPipe(upAgent, &sftpRequests{newBatchWriter(upAgent, sftpWriteBatch), upAgent})
		if err != nil {
			t.Fatal(err)
		}
		defer up.Close()
		e := &fuzzEnforcer{root: root}
		c := &conn{s: &protocol.Session{Recorder: &recorder{}, Enforcer: e}}
		ch := &fakeChannel{in: bytes.NewReader(data)}
		h := &sftpHandlers{c: c, ctx: context.Background(), up: up, ch: ch}
		rs := sftp.NewRequestServer(ch, sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}, sftp.WithStartDirectory(root))
		rs.Serve()
		rs.Close()
		// Outside up/, nothing changed.
		if b, err := os.ReadFile(filepath.Join(root, "docs", "a.txt")); err != nil || string(b) != "a" {
			t.Fatalf("docs/a.txt changed: %q, %v", b, err)
		}
		for _, d := range []string{root, filepath.Join(root, "docs")} {
			names, _ := os.ReadDir(d)
			if len(names) != 2 && d == root || len(names) != 1 && d != root {
				t.Fatalf("%s holds %v", d, names)
			}
		}
	})
}

// fuzzEnforcer allows reads and stats within root and writes within
// root/up.
type fuzzEnforcer struct{ root string }

func (e *fuzzEnforcer) Decide(_ context.Context, r protocol.Request) protocol.Verdict {
	allow := false
	switch r.Operation {
	case OpSFTPRead, OpSFTPStat:
		allow = r.Text == e.root || strings.HasPrefix(r.Text, e.root+"/")
	case OpSFTPWrite:
		allow = strings.HasPrefix(r.Text, e.root+"/up/")
	}
	if allow {
		return protocol.Verdict{Action: protocol.Allow, Rule: "fuzz"}
	}
	return protocol.Verdict{Action: protocol.Deny, Rule: "fuzz"}
}

// fakeChannel is the agent's channel: what it reads is the fuzz input,
// what it writes is dropped.
type fakeChannel struct{ in io.Reader }

func (c *fakeChannel) Read(p []byte) (int, error)  { return c.in.Read(p) }
func (c *fakeChannel) Write(p []byte) (int, error) { return len(p), nil }
func (c *fakeChannel) Close() error                { return nil }
func (c *fakeChannel) CloseWrite() error           { return nil }
func (c *fakeChannel) SendRequest(string, bool, []byte) (bool, error) {
	return false, nil
}
func (c *fakeChannel) Stderr() io.ReadWriter { return &bytes.Buffer{} }

var _ xssh.Channel = (*fakeChannel)(nil)
