package testenv

import (
	"fmt"
	"os"
	"testing"
)

func TestStartPostgres(t *testing.T) {
	Privileged(t)
	pg := StartPostgres(t)
	if got := pg.Psql(t, "select 40+2"); got != "42" {
		t.Fatalf("select 40+2 = %q", got)
	}
}

// TestFreePort: the ports are below the ephemeral range, so no process's
// port 0 is ever one of them, and free on loopback.
func TestFreePort(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	var low int
	fmt.Sscan(string(b), &low)
	for i := 0; i < 20; i++ {
		p := FreePort(t)
		if p < 10000 || p >= low {
			t.Fatalf("FreePort = %d, want 10000 <= port < %d", p, low)
		}
		if !loopbackFree(p) {
			t.Fatalf("FreePort = %d, which is taken", p)
		}
	}
}
