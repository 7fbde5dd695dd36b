package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/interlock-dev/interlock/agent/daemontest"
	"github.com/interlock-dev/interlock/agent/datapath"
)

// A defect that one datagram reaches drops that datagram: the socket's
// next datagrams are served.
func TestDNSDefectDropsOneDatagram(t *testing.T) {
	var logged daemontest.Buffer
	s := &dnsServer{slots: make(chan struct{}, dnsInFlight), log: zerolog.New(&logged)}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var looked atomic.Int32
	lookup := func(peer, local netip.AddrPort) (datapath.Origin, error) {
		if looked.Add(1) == 1 {
			panic("lookup defect")
		}
		return datapath.Origin{}, errors.New("no record")
	}
	go s.serveUDP(context.Background(), c, lookup)
	agent, err := net.DialUDP("udp", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	agent.Write([]byte("first"))
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logged.String(), "ended by an internal error"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the defect was not logged:\n%s", logged.String())
		}
	}
	agent.Write([]byte("second"))
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logged.String(), "dropping unidentified dns datagram"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the next datagram was not served:\n%s", logged.String())
		}
	}
	if l := logged.String(); !strings.Contains(l, `"where":"dns over udp"`) || !strings.Contains(l, `"panic":"lookup defect"`) || !strings.Contains(l, "TestDNSDefectDropsOneDatagram") {
		t.Errorf("the defect's log lacks where, what or the stack:\n%s", l)
	}
}
