package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/datapath"
)

func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", d.handleStatus)
	mux.HandleFunc("POST /v1/tag", d.handleTag)
	mux.HandleFunc("POST /v1/exec", d.handleExec)
	mux.HandleFunc("POST /v1/exec/release", d.handleExecRelease)
	mux.HandleFunc("POST /v1/policy/reload", d.handleReload)
	mux.HandleFunc("GET /v1/policy", d.handlePolicy)
	mux.HandleFunc("POST /v1/uninstall", d.handleUninstall)
	mux.HandleFunc("GET /v1/ca", d.handleCA)
	mux.HandleFunc("POST /v1/ca/rotate", d.handleCARotate)
	mux.HandleFunc("GET /v1/ssh", d.handleSSH)
	d.sessionRoutes(mux)
	return d.authorize(mux)
}

// authorize admits root and members of the control group, and refuses any
// caller that runs inside a tagged cgroup whatever its uid: an agent must
// never be able to untag, approve or reload for itself.
func (d *Daemon) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := control.PeerFrom(r.Context())
		if !ok {
			control.WriteError(w, http.StatusForbidden, "refused: the caller's credentials could not be read")
			return
		}
		id, tagged, err := d.dp.TaggedPath(d.mount, p.Cgroup)
		if err != nil {
			control.WriteError(w, http.StatusForbidden, "refused: cannot check the caller's cgroup %s: %v", p.Cgroup, err)
			return
		}
		// A tagged caller may only ask to tag (handleTag narrows that to
		// re-applying its own identity): the ExecStartPre of a tagged unit
		// whose old processes outlived it (KillMode=process, as the GitHub
		// Actions runner's unit has) starts in its still-tagged cgroup.
		if tagged && !(r.Method == http.MethodPost && r.URL.Path == "/v1/tag") {
			d.refuseTagged(w, p, id, r.URL.Path)
			return
		}
		if p.UID != 0 && !d.inControlGroup(p) {
			control.WriteError(w, http.StatusForbidden, "refused: uid %d is neither root nor in the control group", p.UID)
			return
		}
		if tagged {
			r = r.WithContext(context.WithValue(r.Context(), taggedCallerKey{}, taggedCaller{peer: p, id: id}))
		}
		next.ServeHTTP(w, r)
	})
}

// taggedCaller is a control request from a process in a tagged cgroup.
type taggedCaller struct {
	peer control.Peer
	id   uint32
}

type taggedCallerKey struct{}

func (d *Daemon) refuseTagged(w http.ResponseWriter, p control.Peer, id uint32, path string) {
	d.chain.Record(audit.ControlRefused{UID: p.UID, PID: p.PID, Path: path, Cgroup: p.Cgroup, Identity: d.ids.name(id),
		Reason: "the caller runs in a tagged cgroup"})
	control.WriteError(w, http.StatusForbidden, "refused: pid %d runs in tagged cgroup %s (identity %q); agents cannot control interlock", p.PID, p.Cgroup, d.ids.name(id))
}

func (d *Daemon) inControlGroup(p control.Peer) bool {
	if d.controlGID < 0 {
		return false
	}
	if int(p.GID) == d.controlGID {
		return true
	}
	// Supplementary groups are not in SO_PEERCRED; read them from /proc.
	groups, _ := control.ProcStatus(int(p.PID), "Groups")
	return slices.Contains(groups, strconv.Itoa(d.controlGID))
}

func lookupGroup(name string) (int, error) {
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("control group: %w", err)
	}
	return strconv.Atoi(g.Gid)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		control.WriteError(w, http.StatusBadRequest, "bad request: %v", err)
		return false
	}
	return true
}

func (d *Daemon) handleStatus(w http.ResponseWriter, r *http.Request) {
	fill, _ := d.dp.MapFill()
	st := control.Status{
		PID: os.Getpid(), Started: d.started, CgroupMount: d.mount, CgroupRoot: d.root,
		BPFFS: d.cfg.BPFFS, ListenPort: d.cfg.ListenPort, Policy: d.policySrc,
		Tagged: d.ids.tags(), Active: d.proxy.Active(), Maps: fill,
		Modes: d.policy.Current().Modes(), DefaultMode: d.policy.Current().DefaultMode(),
		Gaps: d.dp.Gaps(),
	}
	if err := d.recorder.Stopped(); err != nil {
		st.RecordingsStopped = err.Error()
	}
	control.WriteJSON(w, http.StatusOK, st)
}

// cgroupDir resolves a cgroup given as an absolute directory or as a path
// relative to the mount, and requires it to lie inside the attached subtree:
// a tag outside it would not be enforced, so it is refused rather than
// silently ignored.
func (d *Daemon) cgroupDir(arg string) (abs, rel string, err error) {
	if arg == "" {
		return "", "", fmt.Errorf("no cgroup given")
	}
	abs = filepath.Clean(arg)
	if !strings.HasPrefix(abs, d.mount+"/") && abs != d.mount {
		abs = filepath.Join(d.mount, arg)
	}
	if abs != d.root && !strings.HasPrefix(abs, d.root+"/") {
		return "", "", fmt.Errorf("cgroup %s is outside the enforced subtree %s", arg, d.root)
	}
	if st, err := os.Stat(abs); err != nil || !st.IsDir() {
		return "", "", fmt.Errorf("cgroup %s does not exist", abs)
	}
	rel = strings.TrimPrefix(abs, d.mount)
	if rel == "" {
		rel = "/"
	}
	return abs, rel, nil
}

func (d *Daemon) handleTag(w http.ResponseWriter, r *http.Request) {
	var req control.TagRequest
	if !decode(w, r, &req) {
		return
	}
	abs, rel, err := d.cgroupDir(req.Cgroup)
	if err != nil {
		control.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if tc, ok := r.Context().Value(taggedCallerKey{}).(taggedCaller); ok {
		// Only what changes nothing: the caller's own identity on a cgroup
		// that already carries it (itself or inherited). Untagging or
		// another identity could loosen what the caller is held to.
		target, targetTagged, err := d.dp.TaggedPath(d.mount, rel)
		if err != nil || !targetTagged || target != tc.id || req.Identity != d.ids.name(tc.id) {
			d.refuseTagged(w, tc.peer, tc.id, r.URL.Path)
			return
		}
	}
	if err := d.tag(abs, rel, req.Identity, ""); err != nil {
		control.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	answer := control.TagAnswer{TagEntry: control.TagEntry{Cgroup: rel, Identity: req.Identity}}
	if req.Identity != "" {
		answer.Warnings = d.unknownIdentity(req.Identity)
	}
	control.WriteJSON(w, http.StatusOK, answer)
}

// tag tags (identity non-empty) or untags the cgroup at abs.
// why says what removed a tag ("" for an operator's untag).
func (d *Daemon) tag(abs, rel, identity, why string) error {
	cgid, err := datapath.CgroupID(abs)
	if err != nil {
		return err
	}
	if identity == "" {
		if err := d.dp.Untag(cgid); err != nil {
			return fmt.Errorf("untag %s: %w", rel, err)
		}
		d.tagsChanged(time.Now())
		d.tagGen.Add(1)
		d.chain.Record(audit.Untagged{Cgroup: rel, Reason: why})
		return d.ids.setTag(rel, cgid, "")
	}
	if !validIdentity(identity) {
		return fmt.Errorf("identity %q: use letters, digits, '-', '_' and '.' (at most 64)", identity)
	}
	id, err := d.ids.id(identity)
	if err != nil {
		return err
	}
	// Rules first, then the tag: the first connect of a newly tagged cgroup
	// must already see its identity's rules.
	if err := d.applyIdentityRules(identity, id); err != nil {
		return err
	}
	if err := d.dp.Tag(cgid, id); err != nil {
		return fmt.Errorf("tag %s: %w", rel, err)
	}
	// A tag may name another identity for a cgroup, or for those below it.
	d.tagsChanged(time.Now())
	d.chain.Record(audit.Tagged{Cgroup: rel, Identity: identity})
	return d.ids.setTag(rel, cgid, identity)
}

func validIdentity(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (d *Daemon) handleReload(w http.ResponseWriter, r *http.Request) {
	if err := d.Reload(); err != nil {
		control.WriteError(w, http.StatusBadRequest, "policy reload refused, previous policy stays in force: %v", err)
		return
	}
	control.WriteJSON(w, http.StatusOK, map[string]string{"policy": d.policySrc})
}

func (d *Daemon) handlePolicy(w http.ResponseWriter, r *http.Request) {
	control.WriteJSON(w, http.StatusOK, d.policyText.Load())
}

func (d *Daemon) handleUninstall(w http.ResponseWriter, r *http.Request) {
	p, _ := control.PeerFrom(r.Context())
	d.removeExecCgroups()
	if err := datapath.Uninstall(d.cfg.BPFFS); err != nil {
		control.WriteError(w, http.StatusInternalServerError, "uninstall: %v", err)
		return
	}
	d.chain.Record(audit.Uninstalled{UID: p.UID, PID: p.PID})
	control.WriteJSON(w, http.StatusOK, map[string]string{"removed": d.cfg.BPFFS})
	d.once.Do(func() { close(d.uninstalled) })
}
