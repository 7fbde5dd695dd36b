package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// The Go runtime's monitor thread (sysmon) goes into a deep sleep whenever
// every processor is idle, and the next ordinary system call's entry wakes
// it, after which it polls every 20 µs for a millisecond. interlockd is
// idle between the connections of a light load, and a new connection makes
// ordinary system calls (accept4, close, the store's writes), so each woke
// it: half of interlockd's thread switches on new connections were the
// monitor's. The runtime has no setting for that sleep but one: with
// GODEBUG's schedtrace set, the monitor never enters it, and without work
// its polls slow to one every 10 ms (100 wake-ups a second on an idle
// daemon). Against the runtime's default, alternating (README, "What the
// measurements found"): a new HTTPS connection 4-10 thread switches instead
// of 12-18 and a fifth to a third less CPU, new HTTP/1.1 connections
// through intercept a fifth to a quarter faster; kept connections alike.
// golang/go#18236 is the runtime's issue.
//
// schedtrace's other effect is the scheduler's one-line summary on stderr
// every that many milliseconds: at the largest value GODEBUG takes (about
// 24.9 days), counted from the host's boot, so a daemon started on a host
// up longer than that prints one at its start, and one every 24.9 days.
const monitorAwake = "schedtrace=2147483647"

// monitorEnv returns environ with monitorAwake added to GODEBUG, and false
// when GODEBUG already sets schedtrace: an operator's own value is kept
// (schedtrace=0 keeps the runtime's default).
func monitorEnv(environ []string) ([]string, bool) {
	env := make([]string, 0, len(environ)+1)
	godebug := ""
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			godebug = v
			continue
		}
		env = append(env, kv)
	}
	for _, setting := range strings.Split(godebug, ",") {
		if key, _, _ := strings.Cut(setting, "="); strings.TrimSpace(key) == "schedtrace" {
			return environ, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(env, "GODEBUG="+godebug+monitorAwake), true
}

// keepMonitorAwake executes interlockd again with monitorEnv's GODEBUG,
// which the runtime reads only at a process's start; the process (its PID,
// descriptors and systemd's notify socket) stays the same. When it cannot,
// interlockd runs on with the runtime's default and says so. interlockd
// starts no programs of its own that would inherit the setting.
func keepMonitorAwake(stderr io.Writer) {
	env, add := monitorEnv(os.Environ())
	if !add {
		return
	}
	err := syscall.Exec("/proc/self/exe", os.Args, env)
	fmt.Fprintf(stderr, "interlockd: warning: cannot run again with GODEBUG=%s (new connections cost more without it): %v\n", monitorAwake, err)
}
