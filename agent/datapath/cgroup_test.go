package datapath

import (
	"strings"
	"testing"
)

func TestCgroup2Mount(t *testing.T) {
	for _, c := range []struct{ name, mountinfo, want string }{
		{"hybrid", `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`, "/sys/fs/cgroup/unified"},
		{"systemd", `35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`, "/sys/fs/cgroup"},
		{"bind mount of a subtree first, escaped path", `50 24 0:30 /a /mnt/a rw - cgroup2 cgroup2 rw
51 24 0:30 / /run/my\040cgroup rw - cgroup2 cgroup2 rw
`, "/run/my cgroup"},
	} {
		got, err := cgroup2Mount(strings.NewReader(c.mountinfo))
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v; want %q", c.name, got, err, c.want)
		}
	}
	if _, err := cgroup2Mount(strings.NewReader("31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")); err == nil {
		t.Error("found a cgroup2 mount in a v1-only listing")
	}
}

func TestAtLeast(t *testing.T) {
	for _, c := range []struct {
		rel, floor [2]int
		want       bool
	}{
		{[2]int{5, 15}, [2]int{5, 15}, true},
		{[2]int{5, 14}, [2]int{5, 15}, false},
		{[2]int{6, 1}, [2]int{5, 15}, true},
		{[2]int{4, 19}, [2]int{5, 15}, false},
		{[2]int{6, 6}, [2]int{6, 7}, false},
		{[2]int{6, 18}, [2]int{6, 7}, true},
	} {
		if got := atLeast(c.rel, c.floor); got != c.want {
			t.Errorf("atLeast(%v, %v) = %v", c.rel, c.floor, got)
		}
	}
}
