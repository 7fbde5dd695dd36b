package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/recording/conversation"
	"github.com/interlock-dev/interlock/agent/store"
)

func (d *Daemon) sessionRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/sessions", d.handleSessions)
	mux.HandleFunc("GET /v1/sessions/{id}/transcript", d.handleTranscript)
	mux.HandleFunc("GET /v1/sessions/{id}/conversation", d.handleConversation)
	mux.HandleFunc("GET /v1/sessions/{id}/asciicast", d.handleAsciicast)
	mux.HandleFunc("GET /v1/decisions", d.handleDecisions)
	mux.HandleFunc("GET /v1/audit/verify", d.handleAuditVerify)
	mux.HandleFunc("GET /v1/audit/export", d.handleAuditExport)
	h := d.approvals.ControlHandler()
	mux.Handle(control.ApprovalsPrefix, h)
	mux.Handle(control.ApprovalsPrefix+"/", h)
}

func (d *Daemon) handleSessions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := store.SessionFilter{Host: q.Get("host"), Identity: q.Get("identity"), Target: q.Get("target"), Action: q.Get("decision")}
	if s := q.Get("since"); s != "" {
		dur, err := time.ParseDuration(s)
		if err != nil {
			control.WriteError(w, http.StatusBadRequest, "since: %v", err)
			return
		}
		f.Since = time.Now().Add(-dur)
	}
	if s := q.Get("limit"); s != "" {
		f.Limit, _ = strconv.Atoi(s)
	}
	// A session the agent has just opened or ended, and its verdicts
	// (--decision), belong in the list. A store refusing verdicts still
	// lists what it holds: the list is how its trouble is looked into.
	if err := d.recorder.Flush(r.Context()); err != nil {
		d.log.Warn().Err(err).Msg("sessions listed without the verdicts the store refused")
	}
	ss, err := d.store.ListSessions(r.Context(), f)
	if err != nil {
		control.WriteError(w, http.StatusInternalServerError, "list sessions: %v", err)
		return
	}
	out := make([]control.Session, len(ss))
	for i, s := range ss {
		out[i] = control.Session(s)
	}
	control.WriteJSON(w, http.StatusOK, out)
}

// handleDecisions returns the recorded decisions of one session (?session=ID)
// or of every session started within ?since= (e.g. 24h), oldest first, so a
// new policy can be tried against real traffic (`interlock policy replay`).
func (d *Daemon) handleDecisions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	// Everything decided until now belongs in the answer: the verdicts
	// still buffered, the sessions being finished, the rows queued.
	if err := d.recorder.Flush(r.Context()); err != nil {
		control.WriteError(w, http.StatusServiceUnavailable, "store the sessions and decisions made so far: %v", err)
		return
	}
	var ids []string
	switch {
	case q.Get("session") != "":
		ids = []string{q.Get("session")}
	case q.Get("since") != "":
		dur, err := time.ParseDuration(q.Get("since"))
		if err != nil {
			control.WriteError(w, http.StatusBadRequest, "since: %v", err)
			return
		}
		ss, err := d.store.ListSessions(r.Context(), store.SessionFilter{Since: time.Now().Add(-dur), Identity: q.Get("identity"), Limit: 10000})
		if err != nil {
			control.WriteError(w, http.StatusInternalServerError, "list sessions: %v", err)
			return
		}
		for i := len(ss) - 1; i >= 0; i-- {
			ids = append(ids, ss[i].ID)
		}
	default:
		control.WriteError(w, http.StatusBadRequest, "give session=ID or since=DURATION")
		return
	}
	out := []control.SessionDecisions{}
	for _, id := range ids {
		sess, err := d.store.Session(r.Context(), id)
		if err != nil {
			control.WriteError(w, http.StatusNotFound, "session %s: %v", id, err)
			return
		}
		ds, err := d.store.Decisions(r.Context(), id)
		if err != nil {
			control.WriteError(w, http.StatusInternalServerError, "decisions of %s: %v", id, err)
			return
		}
		sd := control.SessionDecisions{Session: control.Session(sess), Decisions: make([]control.Decision, len(ds))}
		for i, x := range ds {
			sd.Decisions[i] = control.Decision(x)
		}
		if sess.Protocol == "http" && len(ds) > 0 {
			d.decidedRequests(r.Context(), sess, ds, &sd)
		}
		out = append(out, sd)
	}
	control.WriteJSON(w, http.StatusOK, out)
}

// decidedRequests adds to sd the requests of HTTP session sess that ds
// decided, read back from its recording, or says why they could not be.
func (d *Daemon) decidedRequests(ctx context.Context, sess store.Session, ds []store.Decision, sd *control.SessionDecisions) {
	seqs := make(map[int64]bool, len(ds))
	for _, x := range ds {
		seqs[x.Seq] = true
	}
	rd, err := recording.Open(ctx, d.store, sess)
	if err != nil {
		sd.RequestsError = err.Error()
		return
	}
	defer rd.Close()
	reqs, err := recording.HTTPRequests(rd, func(seq int64) bool { return seqs[seq] })
	if err != nil {
		sd.RequestsError = err.Error()
	}
	for _, q := range reqs {
		sd.Requests = append(sd.Requests, control.HTTPRequest{Seq: q.Seq, Method: q.Method, Host: q.Host, URI: q.URI, Header: q.Header})
	}
}

func (d *Daemon) handleTranscript(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := recording.Replay(r.Context(), d.store, r.PathValue("id"), w); err != nil {
		control.WriteError(w, http.StatusNotFound, "replay %s: %v", r.PathValue("id"), err)
	}
}

// handleConversation sends a session's recording as the bytes each side
// sent, which `interlock export --pcap` writes as packets (see package
// conversation). A stream cut short lacks its end, so the command fails.
func (d *Daemon) handleConversation(w http.ResponseWriter, r *http.Request) {
	ss, rd, err := recording.OpenSession(r.Context(), d.store, r.PathValue("id"))
	if err != nil {
		control.WriteError(w, http.StatusNotFound, "export %s: %v", r.PathValue("id"), err)
		return
	}
	defer rd.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := recording.WriteConversation(ss, rd, conversation.NewEncoder(w)); err != nil {
		d.log.Warn().Err(err).Str("session", ss.ID).Msg("export conversation")
	}
}

func (d *Daemon) handleAsciicast(w http.ResponseWriter, r *http.Request) {
	// In memory first, as for a pcap.
	var buf bytes.Buffer
	if err := recording.ExportAsciicast(r.Context(), d.store, r.PathValue("id"), &buf); err != nil {
		control.WriteError(w, http.StatusNotFound, "export %s: %v", r.PathValue("id"), err)
		return
	}
	w.Header().Set("Content-Type", "application/x-asciicast")
	w.Write(buf.Bytes())
}

func (d *Daemon) handleAuditVerify(w http.ResponseWriter, r *http.Request) {
	// Everything posted so far is verified too.
	d.chain.Flush(r.Context())
	results, err := audit.VerifyAll(r.Context(), d.store)
	if err != nil {
		control.WriteError(w, http.StatusInternalServerError, "verify: %v", err)
		return
	}
	vs := make([]control.AuditVerdict, 0, len(results))
	for _, res := range results {
		vs = append(vs, control.VerdictOf(res))
	}
	control.WriteJSON(w, http.StatusOK, vs)
}

func (d *Daemon) handleAuditExport(w http.ResponseWriter, r *http.Request) {
	d.chain.Flush(r.Context())
	host := r.URL.Query().Get("host")
	if host == "" {
		host = d.host
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if err := audit.Export(r.Context(), d.store, host, w); err != nil {
		control.WriteError(w, http.StatusInternalServerError, "export: %v", err)
	}
}

// VerifyAuditStore verifies the audit chains of a store (a SQLite file or
// a postgres:// URL) with no daemon running: the trail can be checked on a
// copy, on another machine, or with interlockd down. It runs in interlockd
// (`interlockd --audit-verify-store`), which links the store, for
// `interlock audit verify --store`.
func VerifyAuditStore(ctx context.Context, storePath string) ([]control.AuditVerdict, error) {
	if !strings.Contains(storePath, "://") && !strings.Contains(storePath, "host=") {
		// Opening a SQLite path that does not exist would create an
		// empty store and report nothing to verify.
		if _, err := os.Stat(storePath); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	st, err := store.Open(ctx, storePath)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	results, err := audit.VerifyAll(ctx, st)
	if err != nil {
		return nil, err
	}
	out := make([]control.AuditVerdict, 0, len(results))
	for _, res := range results {
		out = append(out, control.VerdictOf(res))
	}
	return out, nil
}
