package policy

import (
	"fmt"
	"path"
	"strings"

	"github.com/interlock-dev/interlock/policy/sshcmd"
)

// The SSH requests on files and repositories, besides "exec" and "shell"
// (Operation.SSH, DecideSSH's request). Args[0] is the path or repository.
const (
	// SFTPRead reads a file or lists a directory (sftp: read:).
	SFTPRead = "sftp-read"
	// SFTPWrite creates, writes, removes, renames, links or changes the
	// attributes of a path (sftp: write:).
	SFTPWrite = "sftp-write"
	// SFTPStat reads a path's attributes: allowed where reading or writing
	// is, since a client stats a directory before it writes into it.
	SFTPStat = "sftp-stat"
	// GitFetch is git-upload-pack (or git-upload-archive) on a repository
	// (git_fetch:).
	GitFetch = "git-fetch"
	// GitPush is git-receive-pack on a repository (git_push:).
	GitPush = "git-push"
)

// pathGlob is an sftp: path pattern: an absolute path.Match pattern, where
// a final "/**" also matches the directory itself and everything under it.
type pathGlob struct {
	pattern string
	// subtree is set for a final "/**"; pattern is then the directory.
	subtree bool
	depth   int // segments of pattern, for subtree
}

func (g pathGlob) match(p string) bool {
	if !g.subtree {
		ok, _ := path.Match(g.pattern, p)
		return ok
	}
	if g.pattern == "/" {
		return true
	}
	// The first depth segments of p must match the directory.
	segs := strings.SplitN(p, "/", g.depth+2)
	if len(segs) < g.depth+1 {
		return false
	}
	ok, _ := path.Match(g.pattern, strings.Join(segs[:g.depth+1], "/"))
	return ok
}

// sftpPaths compiles the path globs of an sftp: read: or write: list.
func (c *compiler) sftpPaths(rule, key string, globs []string, pos Pos) []pathGlob {
	var out []pathGlob
	for _, g := range globs {
		pg := pathGlob{pattern: g}
		if base, ok := strings.CutSuffix(g, "/**"); ok {
			pg.pattern, pg.subtree = base, true
			if base == "" {
				pg.pattern = "/"
			}
		}
		if _, err := path.Match(pg.pattern, ""); err != nil || !path.IsAbs(pg.pattern) || path.Clean(pg.pattern) != pg.pattern || strings.Contains(pg.pattern, "**") {
			c.errorf(pos, "rule %q: sftp %s path %q: want a clean absolute path glob (* within a name, a final /** for a whole tree)", rule, key, g)
			continue
		}
		pg.depth = strings.Count(strings.TrimSuffix(pg.pattern, "/"), "/")
		out = append(out, pg)
	}
	return out
}

// repoPatterns compiles git_fetch: or git_push: repository globs. A
// repository is named as the git client sends it, without a leading "/"
// ("acme/infra.git" for both host:acme/infra.git and ssh://host/acme/infra.git).
func (c *compiler) repoPatterns(rule, key string, globs []string, pos Pos) []string {
	var out []string
	for _, g := range globs {
		g = strings.TrimPrefix(g, "/")
		if _, err := path.Match(g, ""); err != nil || g == "" {
			c.errorf(pos, "rule %q: ssh %s repository %q: want a path glob", rule, key, g)
			continue
		}
		out = append(out, g)
	}
	return out
}

func (m *sshMatch) matchesPath(op *Operation) bool {
	if len(op.Args) != 1 {
		return false
	}
	p := op.Args[0]
	anyPath := func(globs []pathGlob) bool {
		for _, g := range globs {
			if g.match(p) {
				return true
			}
		}
		return false
	}
	anyRepo := func(globs []string) bool {
		for _, g := range globs {
			if ok, _ := path.Match(g, p); ok {
				return true
			}
		}
		return false
	}
	switch op.SSH {
	case SFTPRead:
		return anyPath(m.sftpRead)
	case SFTPWrite:
		return anyPath(m.sftpWrite)
	case SFTPStat:
		return anyPath(m.sftpRead) || anyPath(m.sftpWrite)
	case GitFetch:
		return anyRepo(m.gitFetch)
	case GitPush:
		return anyRepo(m.gitPush)
	}
	return false
}

// decideSFTP decides one sftp operation on p, which must be absolute and
// clean: the decoder resolves the agent's relative paths.
func (p *Policy) decideSFTP(ids *bitset, in *Input, file string) Decision {
	if !path.IsAbs(file) || path.Clean(file) != file {
		return Decision{Action: Deny, Rule: "sftp-path", Message: fmt.Sprintf("path %q is not absolute and clean", file)}
	}
	in.Op.Args = []string{file}
	return p.decide(ids, in)
}

// decideFileCommand decides an exec line that is one command of git's,
// legacy scp's or rsync's, as the file or repository operation it is. ok is false for
// any other line, which is decided as exec.
func (p *Policy) decideFileCommand(ids *bitset, in *Input, cmds []sshcmd.Command) (Decision, bool) {
	if len(cmds) != 1 || cmds[0].Undecidable != "" || len(cmds[0].Args) < 2 {
		return Decision{}, false
	}
	args := cmds[0].Args
	switch args[0] {
	case "git-upload-pack", "git-upload-archive", "git-receive-pack":
		if len(args) != 2 {
			return Decision{}, false
		}
		in.Op.SSH = GitFetch
		if args[0] == "git-receive-pack" {
			in.Op.SSH = GitPush
		}
		in.Op.Args = []string{strings.TrimPrefix(args[1], "/")}
		return p.decide(ids, in), true
	case "scp":
		return p.decideLegacySCP(ids, in, args[1:])
	case "rsync":
		return p.decideRsync(ids, in, args[1:])
	}
	return Decision{}, false
}

// decideLegacySCP decides `scp -t PATH` (an upload: the client runs
// `scp -O`, or an OpenSSH before 9) as a write of PATH and of any name in
// it, since the client sends the name in-band (decideAnyChild), and
// `scp -f PATH` (a download) as a read of PATH. Recursive copies (-r) name
// what they write in-band at any depth: they are refused, as are relative
// paths, which the server resolves against a home directory the policy does
// not know. Lines of other shapes are decided as exec.
func (p *Policy) decideLegacySCP(ids *bitset, in *Input, args []string) (Decision, bool) {
	var sink, source, recursive bool
	for _, a := range args[:len(args)-1] {
		if !strings.HasPrefix(a, "-") || len(a) < 2 {
			return Decision{}, false
		}
		for _, f := range a[1:] {
			switch f {
			case 't':
				sink = true
			case 'f':
				source = true
			case 'r':
				recursive = true
			case 'd', 'p', 'v', 'q':
			default:
				return Decision{}, false
			}
		}
	}
	if sink == source {
		return Decision{}, false
	}
	file := args[len(args)-1]
	switch {
	case recursive:
		return Decision{Action: Deny, Rule: "scp-recursive", Message: "a recursive legacy scp names its files in-band; use scp without -O (sftp) or sftp"}, true
	case !path.IsAbs(file):
		return Decision{Action: Deny, Rule: "scp-relative-path", Message: fmt.Sprintf("legacy scp path %q is relative; give an absolute path, or use scp without -O (sftp)", file)}, true
	}
	dir := strings.HasSuffix(file, "/")
	file = path.Clean(file)
	if source {
		in.Op.SSH = SFTPRead
		return p.decideSFTP(ids, in, file), true
	}
	in.Op.SSH = SFTPWrite
	// PATH is the file written, or a directory the client names the file
	// in: the name could be any, so the write must be allowed for every
	// name in PATH. A PATH ending in "/" is a directory.
	d := p.decideAnyChild(ids, in, file)
	if dir || d.Action == Deny {
		return d, true
	}
	if self := p.decideSFTP(ids, in, file); precedence(self.Action) > precedence(d.Action) {
		return self, true
	}
	return d, true
}

// decideAnyChild decides a write of a name in dir that is not known yet
// (legacy scp's in-band file name) as the strictest decision any name
// could get (decideCovering).
func (p *Policy) decideAnyChild(ids *bitset, in *Input, dir string) Decision {
	return p.decideCovering(ids, in, dir, func(m *sshMatch) []pathGlob { return m.sftpWrite },
		pathGlob.coversChildren, pathGlob.matchesAChild)
}

// decideCovering decides an operation on paths not known yet, all of them
// related to root (every name in it, everything under it), as the
// strictest decision any of them could get: the first rule with a glob
// that covers every such path decides, unless an earlier rule that is not
// a plain allow has a glob that could match one of them.
func (p *Policy) decideCovering(ids *bitset, in *Input, root string, globs func(*sshMatch) []pathGlob, every, some func(pathGlob, string) bool) Decision {
	if !path.IsAbs(root) || path.Clean(root) != root {
		return Decision{Action: Deny, Rule: "sftp-path", Message: fmt.Sprintf("path %q is not absolute and clean", root)}
	}
	proto := in.Protocol
	if proto == "" && in.Target != nil {
		proto = in.Target.Protocol
	}
	for _, r := range p.rules {
		if !r.matchesCaller(ids, in, proto) {
			continue
		}
		if r.any {
			return r.decision
		}
		if r.kind != OpSSH || r.ssh == nil {
			continue
		}
		all, any := false, false
		for _, g := range globs(r.ssh) {
			all = all || every(g, root)
			any = any || some(g, root)
		}
		if all || any && r.decision.Action != Allow {
			return r.decision
		}
	}
	return defaultDeny
}

// segments counts the names of a clean absolute path ("/" has none).
func segments(p string) int {
	if p == "/" {
		return 0
	}
	return strings.Count(p, "/")
}

// coversChildren reports whether g matches every name directly in dir.
func (g pathGlob) coversChildren(dir string) bool {
	n := segments(dir)
	switch {
	case g.subtree && n >= g.depth:
		return g.match(dir)
	case g.subtree && n+1 == g.depth, !g.subtree && n+1 == segments(g.pattern):
		ok, _ := path.Match(path.Dir(g.pattern), dir)
		return ok && path.Base(g.pattern) == "*"
	}
	return false
}

// matchesAChild reports whether g matches some name directly in dir.
func (g pathGlob) matchesAChild(dir string) bool {
	n := segments(dir)
	switch {
	case g.subtree && n >= g.depth:
		return g.match(dir)
	case g.subtree && n+1 == g.depth, !g.subtree && n+1 == segments(g.pattern):
		ok, _ := path.Match(path.Dir(g.pattern), dir)
		return ok
	}
	return false
}

// coversTree reports whether g matches root and everything under it.
func (g pathGlob) coversTree(root string) bool {
	return g.subtree && segments(root) >= g.depth && g.match(root)
}

// matchesInTree reports whether g matches root or something under it.
func (g pathGlob) matchesInTree(root string) bool {
	n, depth := segments(root), segments(g.pattern)
	if g.subtree {
		depth = g.depth
	}
	if !g.subtree && depth < n {
		return false
	}
	// Compare the shorter of the two, name by name.
	k := min(n, depth)
	ok, _ := path.Match(firstNames(g.pattern, k), firstNames(root, k))
	return ok
}

// firstNames returns the first k names of a clean absolute path, as a path.
func firstNames(p string, k int) string {
	if k == 0 {
		return "/"
	}
	segs := strings.SplitN(p, "/", k+2)
	return strings.Join(segs[:k+1], "/")
}

// rsyncOptions are the long options an rsync server may be given that act
// only within the paths decided; any other (--log-file, --temp-dir,
// --backup-dir, --remove-source-files, ...) reaches elsewhere, and the line
// is refused.
var rsyncOptions = map[string]bool{
	"--delete": true, "--delete-before": true, "--delete-during": true, "--delete-delay": true,
	"--delete-after": true, "--partial": true, "--inplace": true, "--append": true,
	"--numeric-ids": true, "--safe-links": true, "--size-only": true, "--ignore-times": true,
	"--existing": true, "--ignore-existing": true, "--mkpath": true, "--force": true,
}

// decideRsync decides `rsync --server ...`, what `rsync -e ssh` runs on the
// server: as a sender (a download) a read of every path named and
// everything under it; as a receiver (an upload) a write of the destination
// and everything under it, since the file names travel in rsync's own
// protocol. Relative paths and options that act outside the paths are
// refused. Lines of other shapes are decided as exec.
func (p *Policy) decideRsync(ids *bitset, in *Input, args []string) (Decision, bool) {
	if args[0] != "--server" {
		return Decision{}, false
	}
	sender, i := false, 1
	for ; i < len(args) && args[i] != "."; i++ {
		switch a := args[i]; {
		case a == "--sender":
			sender = true
		case strings.HasPrefix(a, "--"):
			if !rsyncOptions[a] {
				return Decision{Action: Deny, Rule: "rsync-option", Message: fmt.Sprintf("rsync option %s acts outside the paths decided", a)}, true
			}
		case !strings.HasPrefix(a, "-"):
			return Decision{}, false
		}
	}
	paths := args[min(i+1, len(args)):]
	if i == len(args) || len(paths) == 0 || !sender && len(paths) != 1 {
		return Decision{}, false
	}
	in.Op.SSH = SFTPWrite
	globs := func(m *sshMatch) []pathGlob { return m.sftpWrite }
	if sender {
		in.Op.SSH = SFTPRead
		globs = func(m *sshMatch) []pathGlob { return m.sftpRead }
	}
	var best Decision
	for i, f := range paths {
		if !path.IsAbs(f) {
			return Decision{Action: Deny, Rule: "rsync-relative-path", Message: fmt.Sprintf("rsync path %q is relative; give an absolute path", f)}, true
		}
		d := p.decideCovering(ids, in, path.Clean(f), globs, pathGlob.coversTree, pathGlob.matchesInTree)
		if i == 0 || precedence(d.Action) > precedence(best.Action) {
			best = d
		}
		if d.Action == Deny {
			break
		}
	}
	return best, true
}
