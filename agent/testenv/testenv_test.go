package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
// port 0 is ever one of them, free on loopback, and reserved: no second
// pick, here or in another test process, gets one while its test runs.
func TestFreePort(t *testing.T) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Fatal(err)
	}
	var low int
	fmt.Sscan(string(b), &low)
	seen := map[int]bool{}
	var p int
	for i := 0; i < 20; i++ {
		p = FreePort(t)
		if p < 10000 || p >= low {
			t.Fatalf("FreePort = %d, want 10000 <= port < %d", p, low)
		}
		if !loopbackFree(p) {
			t.Fatalf("FreePort = %d, which is taken", p)
		}
		if seen[p] {
			t.Fatalf("FreePort gave %d twice", p)
		}
		seen[p] = true
		if reserve(t, p) {
			t.Fatalf("port %d reserved twice", p)
		}
	}
	// Another process, as another package's tests would be, is refused
	// the reservation too.
	if err := exec.Command("flock", "-n", filepath.Join(portLocks, strconv.Itoa(p)), "true").Run(); err == nil {
		t.Fatalf("another process took the reservation of port %d", p)
	}
}
