package proxy

import (
	"io"
	"net"
	"sync/atomic"

	"github.com/interlock-dev/interlock/agent/rawsock"
)

// Relay copies bytes both ways between the agent and upstream until both
// directions end, and returns the byte counts (agent to upstream, upstream
// to agent). Each direction half-closes its destination when its source
// ends, so protocols that shut down one side keep working; an error on
// either side closes both.
func Relay(client, upstream *net.TCPConn) (sent, received int64) {
	var r relay
	errc := make(chan error, 2)
	go r.copyUp(client, upstream, errc)
	go r.copyDown(upstream, client, errc)
	if err := <-errc; err != nil {
		// A reset or failure on one side ends the relay: the other copy
		// would otherwise wait on a peer that is never told.
		client.Close()
		upstream.Close()
	}
	<-errc
	return r.up.Load(), r.down.Load()
}

type relay struct{ up, down atomic.Int64 }

// copyUp and copyDown are separate methods so stack traces say which way a
// stuck copy was going.
func (r *relay) copyUp(src, dst *net.TCPConn, errc chan<- error) {
	n, err := copyRaw(dst, src)
	r.up.Add(n)
	dst.CloseWrite()
	errc <- err
}

func (r *relay) copyDown(src, dst *net.TCPConn, errc chan<- error) {
	n, err := copyRaw(dst, src)
	r.down.Add(n)
	dst.CloseWrite()
	errc <- err
}

// copyRaw copies with rawsock reads and writes rather than io.Copy's
// splice(2): agents' traffic is mostly small requests and answers, where a
// splice costs two system calls and a pipe per chunk and the runtime's
// syscall entry adds thread switches (see rawsock.Wrap), while the copy it
// saves is cheap.
func copyRaw(dst, src *net.TCPConn) (int64, error) {
	buf := make([]byte, 32<<10)
	return io.CopyBuffer(rawsock.Wrap(dst), rawsock.Wrap(src), buf)
}
