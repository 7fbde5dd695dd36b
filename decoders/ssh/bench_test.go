package ssh

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	xssh "golang.org/x/crypto/ssh"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// BenchmarkSFTPUpload writes a file over sftp, as scp does, straight to the
// server and through the decoder (each open decided, every byte decrypted
// and encrypted again); the ratio is what interlockd leaves of the direct
// throughput when the three share this machine's CPUs.
func BenchmarkSFTPUpload(b *testing.B) {
	const size = 64 << 20
	data := make([]byte, 1<<20)
	rand.Read(data)
	f := newFixture(b)
	// OpenSSH's order: the cipher is the client's first the server has.
	f.ciphers = []string{xssh.CipherChaCha20Poly1305, xssh.CipherAES128CTR, xssh.CipherAES192CTR, xssh.CipherAES256CTR, xssh.CipherAES128GCM, xssh.CipherAES256GCM}
	if err := os.Mkdir(filepath.Join(f.srv.root, "up"), 0o755); err != nil {
		b.Fatal(err)
	}
	cfg := &xssh.ClientConfig{User: "deploy", HostKeyCallback: xssh.InsecureIgnoreHostKey(), Auth: []xssh.AuthMethod{xssh.PublicKeys(f.userCert(b))}}
	cfg.Ciphers = f.ciphers
	direct, err := xssh.Dial("tcp", f.srv.addr, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	through, _ := f.connect("deploy")
	for _, c := range []struct {
		name string
		conn *xssh.Client
	}{{"direct", direct}, {"interlock", through}} {
		b.Run(c.name, func(b *testing.B) {
			// OpenSSH's sftp keeps 64 writes of 32 KiB in flight.
			sc, err := sftp.NewClient(c.conn, sftp.UseConcurrentWrites(true), sftp.MaxConcurrentRequestsPerFile(64))
			if err != nil {
				b.Fatal(err)
			}
			defer sc.Close()
			b.SetBytes(size)
			cpu0 := cpuTime(b)
			for b.Loop() {
				w, err := sc.Create("up/big")
				if err != nil {
					b.Fatal(err)
				}
				for n := 0; n < size; n += len(data) {
					if _, err := w.Write(data); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
			// Wall time swings with whatever else runs on the machine;
			// the CPU the process spent per byte does much less.
			b.ReportMetric(float64((cpuTime(b)-cpu0).Milliseconds())/float64(b.N*size>>20), "cpu-ms/MiB")
		})
	}
}

// userCert is a login the server accepts without the decoder: a key
// certified as upstream.Credential certifies the decoder's.
func (f *fixture) userCert(tb testing.TB) xssh.Signer {
	key := newSigner(tb)
	cred, err := (&upstream{f: f}).Credential(tb.Context(), protocol.CredentialRequest{PublicKey: xssh.MarshalAuthorizedKey(key.PublicKey())})
	if err != nil {
		tb.Fatal(err)
	}
	s, err := certificateSigner(cred.Certificate, key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
