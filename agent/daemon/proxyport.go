package daemon

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// checkProxyPort refuses a proxy port the kernel may give a process as its
// port 0. interlockd binds no TCP socket on the port: the data path hands
// every connection to 127.0.0.1 and [::1] on it, in the whole network
// namespace, to interlockd's listeners. A program given the port by bind(0)
// would find the connections made to its own listener taken by interlockd
// (and refused as unidentified), at random. A port in
// net.ipv4.ip_local_reserved_ports is never given out.
func checkProxyPort(port uint16) error {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fmt.Errorf("listen_port: read the ephemeral port range: %w", err)
	}
	var low, high int
	if _, err := fmt.Sscan(string(b), &low, &high); err != nil {
		return fmt.Errorf("listen_port: ip_local_port_range %q: %w", strings.TrimSpace(string(b)), err)
	}
	p := int(port)
	if p < low || p > high {
		return nil
	}
	reserved, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports")
	if err != nil {
		return fmt.Errorf("listen_port: read the reserved ports: %w", err)
	}
	if inPortList(strings.TrimSpace(string(reserved)), p) {
		return nil
	}
	return fmt.Errorf("listen_port %d is in the kernel's ephemeral port range %d-%d (net.ipv4.ip_local_port_range): "+
		"another program may be given it as its port 0, and interlockd would take the connections made to that program; "+
		"choose a port outside the range, or reserve it (sysctl net.ipv4.ip_local_reserved_ports=%d)", p, low, high, p)
}

// inPortList reports whether port is in list, the kernel's format for
// reserved ports: "8080,9000-9100".
func inPortList(list string, port int) bool {
	for _, item := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(item), "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				continue
			}
		}
		if a <= port && port <= b {
			return true
		}
	}
	return false
}
