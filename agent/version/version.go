// Package version names the build that interlock and interlockd report
// (--version, the interlock_build_info metric, the audit trail's
// daemon_started event). It imports nothing of the daemon, so the CLI can
// link it without the daemon's dependencies.
package version

import "runtime/debug"

// Version is the release, set at build time with
// -ldflags "-X github.com/interlock-dev/interlock/agent/version.Version=...".
var Version = "dev"

// Commit is the VCS revision the binaries were built from, set at build
// time like Version (`make build` does, because GOFLAGS may turn Go's own
// VCS stamping off); empty means the go command's stamp.
var Commit = ""

// Revision is Commit when the build set it, else the revision the go
// command stamped ("+dirty" when the tree had changes), else "unknown".
func Revision() string {
	if Commit != "" {
		return Commit
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "unknown", ""
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "+dirty"
		}
	}
	return rev + dirty
}

// String is what --version prints after the program's name: the version
// and the revision.
func String() string { return Version + " (commit " + Revision() + ")" }
