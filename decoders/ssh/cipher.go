package ssh

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"

	xssh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/cpu"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// agentCiphers is interlockd's order of preference for the agent's leg,
// cheapest first. In SSH the client's order decides (RFC 4253 7.1), and
// OpenSSH's is chacha20-poly1305, then AES-CTR, then AES-GCM. x/crypto runs
// chacha20 in plain Go on amd64, and CTR needs a separate MAC
// (hmac-sha2-256: an eighth of interlockd's CPU in an scp upload); with
// AES-NI and carry-less multiply, AES-GCM costs least. So interlockd reads
// the client's offer first (peekClientKexInit) and offers it only the
// cheapest cipher it accepts. Elsewhere chacha20 is the cheapest.
var agentCiphers = func() []string {
	gcm := []string{xssh.CipherAES128GCM, xssh.CipherAES256GCM}
	ctr := []string{xssh.CipherAES128CTR, xssh.CipherAES192CTR, xssh.CipherAES256CTR}
	if cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ {
		return slices.Concat(gcm, ctr, []string{xssh.CipherChaCha20Poly1305})
	}
	return slices.Concat([]string{xssh.CipherChaCha20Poly1305}, gcm, ctr)
}()

// cipherFor is the cipher list to offer a client whose key exchange offers
// toServer and toClient: the first of agentCiphers the client accepts both
// ways, alone; all of agentCiphers if it accepts none (the library then
// refuses the handshake and says why).
func cipherFor(toServer, toClient []string) []string {
	for _, c := range agentCiphers {
		if slices.Contains(toServer, c) && slices.Contains(toClient, c) {
			return []string{c}
		}
	}
	return agentCiphers
}

// clientKexInit is the start of a client's SSH_MSG_KEXINIT (RFC 4253 7.1),
// as far as the ciphers; xssh.Unmarshal reads it.
type clientKexInit struct {
	Cookie         [16]byte `sshtype:"20"`
	KexAlgos       []string
	HostKeyAlgos   []string
	CiphersToSrv   []string
	CiphersToCli   []string
	MACsToSrv      []string
	MACsToCli      []string
	CompToSrv      []string
	CompToCli      []string
	LanguagesToSrv []string
	LanguagesToCli []string
	FirstFollows   bool
	Reserved       uint32
}

// Limits of what is read before the library takes over: RFC 4253 4.2 caps
// the version line at 255 bytes, and a first KEXINIT is a few kilobytes
// (OpenSSH 9's is about 1.5 KiB); 35000 is the RFC's packet size that every
// implementation must accept (6.1).
const (
	maxVersionLine = 255
	maxKexInit     = 35000
)

// peekClientKexInit sends the agent interlockd's version line, reads the
// client's version line and first key exchange packet, and returns the
// cipher list to offer and a connection for the library's handshake: its
// reads replay everything read here, and its first write, the library's
// own version line, is dropped, since the agent already has it. The client
// sends its KEXINIT only once it has the server's version (OpenSSH does
// exactly that), so the version goes first. Reads are bounded by the
// connection's deadline.
func peekClientKexInit(c net.Conn, version string) (net.Conn, []string, error) {
	line := version + "\r\n"
	if _, err := io.WriteString(c, line); err != nil {
		return nil, nil, err
	}
	var seen bytes.Buffer
	r := bufio.NewReaderSize(io.TeeReader(c, &seen), 4096)
	replay := &replayConn{ReplayConn: protocol.ReplayConn{Conn: c}, skip: []byte(line)}
	// Lines before the version are allowed of servers only (4.2), so
	// anything else is left to the library to refuse.
	v, err := r.ReadSlice('\n')
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
		return nil, nil, fmt.Errorf("reading the client's version: %w", err)
	}
	if len(v) > maxVersionLine || !bytes.HasPrefix(v, []byte("SSH-")) {
		replay.replay(seen.Bytes())
		return replay, agentCiphers, nil
	}
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, nil, fmt.Errorf("reading the client's key exchange: %w", err)
	}
	n, pad := binary.BigEndian.Uint32(hdr[:4]), uint32(hdr[4])
	if n > maxKexInit || n < pad+1 {
		return nil, nil, fmt.Errorf("the client's first packet claims %d bytes with %d of padding", n, pad)
	}
	packet := make([]byte, n-1)
	if _, err := io.ReadFull(r, packet); err != nil {
		return nil, nil, fmt.Errorf("reading the client's key exchange: %w", err)
	}
	// Everything the reader took from the connection is replayed, the
	// bytes it buffered past the packet included.
	replay.replay(seen.Bytes())
	var k clientKexInit
	if err := xssh.Unmarshal(packet[:n-1-pad], &k); err != nil {
		// Not a KEXINIT: the library says what is wrong with it.
		return replay, agentCiphers, nil
	}
	return replay, cipherFor(k.CiphersToSrv, k.CiphersToCli), nil
}

// replayConn is a connection whose reads replay the bytes already read
// and whose first write is dropped if it is skip.
type replayConn struct {
	protocol.ReplayConn
	skip []byte
}

// replay sets what the connection's reads give first.
func (c *replayConn) replay(read []byte) {
	c.R = io.MultiReader(bytes.NewReader(read), c.Conn)
}

func (c *replayConn) Write(p []byte) (int, error) {
	if c.skip != nil {
		skip := c.skip
		c.skip = nil
		if bytes.Equal(p, skip) {
			return len(p), nil
		}
		// The library wrote something else first: the agent then has
		// two version lines and the handshake fails, as it should.
	}
	return c.Conn.Write(p)
}
