package session

import (
	"path/filepath"
	"sync"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/datapath"
)

// cgroupPaths remembers the path of each cgroup agents connected from, by
// the cgroup ID the kernel recorded at connect: reading /proc/PID/cgroup
// makes the kernel build the path again, about 25 µs of every connection.
// cgroup v2 cannot rename a cgroup and never gives an ID twice, so a path
// found for an ID stays its path.
var cgroupPaths = struct {
	sync.Mutex
	m map[uint64]string
}{m: map[uint64]string{}}

// maxCgroupPaths bounds cgroupPaths; when full it starts over.
const maxCgroupPaths = 4096

var cgroupMount = sync.OnceValues(datapath.CgroupMount)

// cgroupOf returns the path, relative to the cgroup2 mount, of the cgroup
// with the kernel's ID id, which process pid connected from; "" if the
// process is gone. A process that has moved since, from a cgroup not
// remembered, gets the path of where it is now: /proc knows no other.
func cgroupOf(id uint64, pid uint32) (string, error) {
	mount, merr := cgroupMount()
	if merr == nil {
		cgroupPaths.Lock()
		p, ok := cgroupPaths.m[id]
		cgroupPaths.Unlock()
		if ok {
			return p, nil
		}
	}
	p, err := control.CgroupOf(int(pid))
	if err != nil {
		if processGone(err) {
			return "", nil
		}
		return "", err
	}
	if merr != nil {
		return p, nil
	}
	if got, err := datapath.CgroupID(filepath.Join(mount, p)); err == nil && got == id {
		cgroupPaths.Lock()
		if len(cgroupPaths.m) >= maxCgroupPaths {
			clear(cgroupPaths.m)
		}
		cgroupPaths.m[id] = p
		cgroupPaths.Unlock()
	}
	return p, nil
}
