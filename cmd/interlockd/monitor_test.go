package main

import (
	"slices"
	"testing"
)

// TestMonitorEnv: interlockd adds schedtrace to GODEBUG, beside the
// settings already there, and keeps an operator's own schedtrace.
func TestMonitorEnv(t *testing.T) {
	for _, c := range []struct {
		name    string
		environ []string
		want    []string
		add     bool
	}{
		{"no GODEBUG", []string{"PATH=/bin", "HOME=/root"}, []string{"PATH=/bin", "HOME=/root", "GODEBUG=" + monitorAwake}, true},
		{"other settings kept", []string{"GODEBUG=madvdontneed=1", "PATH=/bin"}, []string{"PATH=/bin", "GODEBUG=madvdontneed=1," + monitorAwake}, true},
		{"empty GODEBUG", []string{"GODEBUG="}, []string{"GODEBUG=" + monitorAwake}, true},
		{"the operator's schedtrace=0", []string{"GODEBUG=schedtrace=0"}, []string{"GODEBUG=schedtrace=0"}, false},
		{"the operator's own period", []string{"GODEBUG=gctrace=1, schedtrace=1000"}, []string{"GODEBUG=gctrace=1, schedtrace=1000"}, false},
		{"not a setting's value", []string{"GODEBUG=x=schedtrace", "NOTGODEBUG=schedtrace=1"}, []string{"NOTGODEBUG=schedtrace=1", "GODEBUG=x=schedtrace," + monitorAwake}, true},
	} {
		got, add := monitorEnv(c.environ)
		if add != c.add || !slices.Equal(got, c.want) {
			t.Errorf("%s: monitorEnv(%q) = %q, %v; want %q, %v", c.name, c.environ, got, add, c.want, c.add)
		}
	}
}
