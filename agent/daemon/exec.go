package daemon

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/datapath"
	"github.com/interlock-dev/interlock/agent/store"
)

// handleExec creates a fresh cgroup under the root, tags it and moves the
// caller's waiting child into it. The daemon moves the process rather than
// the CLI because moving needs write access to the common ancestor's
// cgroup.procs, which only root has; the child must be the caller's own so
// that nobody can pull a stranger's process into an identity.
func (d *Daemon) handleExec(w http.ResponseWriter, r *http.Request) {
	var req control.ExecRequest
	if !decode(w, r, &req) {
		return
	}
	p, _ := control.PeerFrom(r.Context())
	if ppid, err := parentOf(req.PID); err != nil || ppid != int(p.PID) {
		control.WriteError(w, http.StatusForbidden, "refused: pid %d is not a child of the caller (pid %d)", req.PID, p.PID)
		return
	}
	if !validIdentity(req.Identity) {
		control.WriteError(w, http.StatusBadRequest, "identity %q: use letters, digits, '-', '_' and '.' (at most 64)", req.Identity)
		return
	}
	abs := filepath.Join(d.root, execDir, req.Identity+"-"+store.NewID())
	if err := os.MkdirAll(abs, 0o755); err != nil {
		control.WriteError(w, http.StatusInternalServerError, "create cgroup: %v", err)
		return
	}
	rel := strings.TrimPrefix(abs, d.mount)
	if err := d.tag(abs, rel, req.Identity, ""); err != nil {
		os.Remove(abs)
		control.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	env, err := d.execPlaceholders(r.Context(), rel, req)
	if err != nil {
		d.releaseExec(abs, rel)
		control.WriteError(w, http.StatusBadGateway, "%v", err)
		return
	}
	if err := os.WriteFile(filepath.Join(abs, "cgroup.procs"), []byte(strconv.Itoa(req.PID)), 0); err != nil {
		d.releaseExec(abs, rel)
		control.WriteError(w, http.StatusInternalServerError, "move pid %d into %s: %v", req.PID, rel, err)
		return
	}
	d.chain.Record(audit.Exec{Identity: req.Identity, PID: req.PID, ByUID: p.UID, Cgroup: rel})
	warnings := append(d.serviceManagerWarnings(req.PID, req.Identity), d.unknownIdentity(req.Identity)...)
	control.WriteJSON(w, http.StatusOK, control.ExecAnswer{Cgroup: rel, Env: env, Warnings: warnings})
}

// unknownIdentity warns, for the CLI that tags with identity, when no
// identity of the policy in force matches it. The tag is made all the
// same, as a policy reloaded later may name it; but a mistyped identity
// would otherwise show only as refusals.
func (d *Daemon) unknownIdentity(identity string) []string {
	pol := d.policy.Current()
	if pol.KnowsTag(identity) {
		return nil
	}
	return []string{fmt.Sprintf("no identity of the policy in force (%s) matches %q: "+
		"what its processes do is denied as an unknown identity's", pol.Name(), identity)}
}

// serviceManagerWarnings names the systemd user manager of the command's
// user (pid's real uid) when the identity may reach its sockets: asked over
// them (systemd-run --user), it starts commands in cgroups of its own,
// untagged. No set-user-ID program is involved, so no_new_privs does not
// stop it; the policy's unix paths do, where the kernel enforces them.
func (d *Daemon) serviceManagerWarnings(pid int, identity string) []string {
	uid, err := control.RealUID(pid)
	if err != nil || uid == 0 {
		// Root has worse ways out, which the start log and status name.
		return nil
	}
	pol := d.policy.Current()
	var open []string
	for _, p := range []string{fmt.Sprintf("/run/user/%d/systemd/private", uid), fmt.Sprintf("/run/user/%d/bus", uid)} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&os.ModeSocket == 0 {
			continue
		}
		if datapath.UnixConnectSupported() && !pol.UnixReachable(identity, p) {
			continue
		}
		open = append(open, p)
	}
	if len(open) == 0 {
		return nil
	}
	how := "list them in the policy's deny_unix_paths, give the identity allow_unix_paths, or stop the manager (loginctl disable-linger)"
	if !datapath.UnixConnectSupported() {
		how = "this kernel cannot refuse unix connects (6.7 and later can): stop the manager (loginctl disable-linger) or run the command as another user"
	}
	msg := fmt.Sprintf("uid %d has a systemd user manager listening on %s, which identity %s may reach: the command could have it "+
		"start commands outside its cgroup (systemd-run --user); %s", uid, strings.Join(open, " and "), identity, how)
	d.log.Warn().Int("pid", pid).Str("identity", identity).Msg(msg)
	return []string{msg}
}

func (d *Daemon) handleExecRelease(w http.ResponseWriter, r *http.Request) {
	var req control.TagRequest
	if !decode(w, r, &req) {
		return
	}
	abs, rel, err := d.cgroupDir(req.Cgroup)
	if err != nil || filepath.Dir(abs) != filepath.Join(d.root, execDir) {
		control.WriteError(w, http.StatusBadRequest, "%s is not an exec cgroup", req.Cgroup)
		return
	}
	pop, err := populated(abs)
	if err != nil {
		control.WriteError(w, http.StatusServiceUnavailable, "cgroup %s kept: whether it still has processes cannot be read: %v", rel, err)
		return
	}
	if pop {
		control.WriteError(w, http.StatusConflict, "cgroup %s still has processes", rel)
		return
	}
	d.releaseExec(abs, rel)
	control.WriteJSON(w, http.StatusOK, control.TagEntry{Cgroup: rel})
}

// releaseExec untags and removes an exec cgroup. Untag comes after the
// cgroup is empty and before rmdir, so no process of it ever runs untagged.
func (d *Daemon) releaseExec(abs, rel string) {
	d.releasePlaceholders(rel)
	if err := d.tag(abs, rel, "", "exec ended"); err != nil {
		d.log.Warn().Err(err).Str("cgroup", rel).Msg("untag exec cgroup")
	}
	if err := os.Remove(abs); err != nil && !os.IsNotExist(err) {
		d.log.Warn().Err(err).Str("cgroup", rel).Msg("remove exec cgroup")
	}
}

// collectExecCgroups removes exec cgroups whose processes have all exited
// but whose CLI never released them (it was killed), and drops the tags of
// cgroups that no longer exist.
func (d *Daemon) collectExecCgroups(ctx context.Context) {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.uninstalled:
			return
		case <-t.C:
		}
		for _, abs := range d.execCgroups() {
			st, err := os.Stat(abs)
			if err != nil || time.Since(st.ModTime()) <= 10*time.Second {
				continue
			}
			pop, err := populated(abs)
			if err != nil {
				d.log.Warn().Err(err).Str("cgroup", strings.TrimPrefix(abs, d.mount)).
					Msg("exec cgroup kept tagged: whether its processes have exited cannot be read")
				continue
			}
			if !pop {
				d.releaseExec(abs, strings.TrimPrefix(abs, d.mount))
			}
		}
		d.pruneRemovedCgroups()
	}
}

// removeExecCgroups is part of uninstall: exec cgroups hold agents that
// would otherwise keep running in a tree nobody enforces; they stay
// (processes cannot be orphaned from a cgroup) but lose their tags.
func (d *Daemon) removeExecCgroups() {
	for _, abs := range d.execCgroups() {
		rel := strings.TrimPrefix(abs, d.mount)
		if pop, err := populated(abs); err == nil && !pop {
			d.releaseExec(abs, rel)
		}
	}
	os.Remove(filepath.Join(d.root, execDir))
}

// execCgroups lists the exec cgroups: the directories under execDir. The
// files beside them (cgroup.procs, memory.pressure, ...) are the parent
// cgroup's own and can never be removed.
func (d *Daemon) execCgroups() []string {
	entries, _ := os.ReadDir(filepath.Join(d.root, execDir))
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(d.root, execDir, e.Name()))
		}
	}
	return dirs
}

// populated reports whether the cgroup at abs, or one below it, holds a
// process. An error is not an answer: taken for "no", it would untag a
// running agent's cgroup (out of descriptors, the read fails), and its
// connects would no longer come to interlockd.
func populated(abs string) (bool, error) {
	data, err := os.ReadFile(filepath.Join(abs, "cgroup.events"))
	if err != nil {
		return false, err
	}
	return strings.Contains(string(data), "populated 1"), nil
}

func parentOf(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name in parentheses may hold spaces; fields start after it.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strconv.Atoi(f[1])
}

// pruneRemovedCgroups drops the tags of cgroups that were removed (a
// systemd unit gets a fresh cgroup at every start), so the kernel map does
// not fill up with ids no task can have any more. A cgroup id is never
// reused, so a tag whose directory is gone is dead.
func (d *Daemon) pruneRemovedCgroups() {
	for rel, id := range d.ids.taggedIDs() {
		if _, err := os.Stat(filepath.Join(d.mount, rel)); !os.IsNotExist(err) {
			continue
		}
		if err := d.dp.Untag(id); err != nil {
			d.log.Warn().Err(err).Str("cgroup", rel).Msg("drop the tag of a removed cgroup")
			continue
		}
		d.ids.setTag(rel, id, "")
		d.chain.Record(audit.Untagged{Cgroup: rel, Reason: "cgroup removed"})
	}
}

// envName is an environment variable name a placeholder may take.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// execPlaceholders issues the credential of each target an exec asked a
// placeholder for and returns the command's VAR=placeholder environment;
// the credentials last as long as the exec cgroup (releaseExec).
func (d *Daemon) execPlaceholders(ctx context.Context, rel string, req control.ExecRequest) ([]string, error) {
	if len(req.Placeholders) == 0 {
		return nil, nil
	}
	vars := make([]string, 0, len(req.Placeholders))
	for v := range req.Placeholders {
		vars = append(vars, v)
	}
	sort.Strings(vars)
	var env []string
	for _, v := range vars {
		if !envName.MatchString(v) {
			d.releasePlaceholders(rel)
			return nil, fmt.Errorf("placeholder %q: not an environment variable name", v)
		}
		ph, release, err := d.sessions.Placeholder(ctx, req.Identity, req.Placeholders[v], rel)
		if err != nil {
			d.releasePlaceholders(rel)
			return nil, fmt.Errorf("placeholder %s: %w", v, err)
		}
		d.placeholderMu.Lock()
		if d.placeholders == nil {
			d.placeholders = map[string][]func(){}
		}
		d.placeholders[rel] = append(d.placeholders[rel], release)
		d.placeholderMu.Unlock()
		env = append(env, v+"="+ph)
	}
	return env, nil
}

// releasePlaceholders ends the placeholders of an exec cgroup: their
// credentials are revoked, and the values are no longer swapped.
func (d *Daemon) releasePlaceholders(rel string) {
	d.placeholderMu.Lock()
	releases := d.placeholders[rel]
	delete(d.placeholders, rel)
	d.placeholderMu.Unlock()
	for _, release := range releases {
		release()
	}
}
