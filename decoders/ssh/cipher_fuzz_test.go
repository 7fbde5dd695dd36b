package ssh

import (
	"bytes"
	"io"
	"net"
	"slices"
	"testing"

	xssh "golang.org/x/crypto/ssh"
)

// FuzzPeekClientKexInit: whatever a client sends first, peeking at its key
// exchange never panics, offers a cipher interlockd supports, and hands the
// library exactly the bytes it read.
func FuzzPeekClientKexInit(f *testing.F) {
	f.Add([]byte("SSH-2.0-OpenSSH_9.2p1\r\n\x00\x00\x00\x0c\x04\x14abcdefg\x00\x00\x00\x00"))
	f.Add([]byte("SSH-2.0-x\r\n\x00\x00\x00\x05\x04\x14"))
	f.Add(append([]byte("SSH-2.0-go\r\n\x00\x00\x01\x00\x08"), xssh.Marshal(&clientKexInit{CiphersToSrv: []string{xssh.CipherAES128GCM}, CiphersToCli: []string{xssh.CipherAES128GCM}})...))
	f.Fuzz(func(t *testing.T, in []byte) {
		srv, cli := net.Pipe()
		defer cli.Close()
		defer srv.Close()
		c := &peekConn{Conn: srv, r: bytes.NewReader(in)}
		conn, ciphers, err := peekClientKexInit(c, "SSH-2.0-Interlock")
		if err != nil {
			return
		}
		for _, ci := range ciphers {
			if !slices.Contains(agentCiphers, ci) {
				t.Fatalf("offered %q, not one of interlockd's", ci)
			}
		}
		if replayed, _ := io.ReadAll(conn); !bytes.Equal(replayed, in) {
			t.Fatalf("replayed %q of %q", replayed, in)
		}
	})
}
