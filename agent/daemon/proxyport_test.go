package daemon

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

func TestInPortList(t *testing.T) {
	for _, c := range []struct {
		list string
		port int
		want bool
	}{
		{"", 15001, false},
		{"15001", 15001, true},
		{"8080,15000-15002", 15001, true},
		{"8080,15002-15009", 15001, false},
		{"40000-40100, 15001", 15001, true},
	} {
		if got := inPortList(c.list, c.port); got != c.want {
			t.Errorf("inPortList(%q, %d) = %v", c.list, c.port, got)
		}
	}
}

// TestCheckProxyPort: a port the kernel may give out as a port 0 is
// refused with the way out; the default and a port below the range are not.
func TestCheckProxyPort(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	var low, high int
	fmt.Sscan(string(b), &low, &high)
	if err := checkProxyPort(15001); low <= 15001 && 15001 <= high {
		t.Logf("this host's ephemeral range %d-%d holds the default port: %v", low, high, err)
	} else if err != nil {
		t.Errorf("default port 15001: %v", err)
	}
	reserved, _ := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports")
	for p := low; p <= high; p++ {
		if inPortList(strings.TrimSpace(string(reserved)), p) {
			continue
		}
		err := checkProxyPort(uint16(p))
		if err == nil || !strings.Contains(err.Error(), "ip_local_reserved_ports") {
			t.Errorf("port %d in the ephemeral range %d-%d: %v", p, low, high, err)
		}
		break
	}
}
