package daemon

import (
	"bytes"
	"net/http"
	"strconv"
	"time"

	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/store"
)

// AuditVerdict is one host's chain as `interlock audit verify` reports it.
type AuditVerdict struct {
	Host    string `json:"host"`
	Records uint64 `json:"records"`
	OK      bool   `json:"ok"`
	Summary string `json:"summary"`
	// BrokenSeq is the first record that fails the check (0 when OK).
	BrokenSeq uint64 `json:"broken_seq,omitempty"`
	// HeadSeq and HeadHash are the last record that checked out, to be
	// anchored outside the host.
	HeadSeq  uint64 `json:"head_seq"`
	HeadHash string `json:"head_hash"`
}

// SessionDecisions is one recorded session and the decisions made in it.
type SessionDecisions struct {
	Session   store.Session    `json:"session"`
	Decisions []store.Decision `json:"decisions"`
}

func (d *Daemon) sessionRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/sessions", d.handleSessions)
	mux.HandleFunc("GET /v1/sessions/{id}/transcript", d.handleTranscript)
	mux.HandleFunc("GET /v1/sessions/{id}/pcap", d.handlePcap)
	mux.HandleFunc("GET /v1/decisions", d.handleDecisions)
	mux.HandleFunc("GET /v1/audit/verify", d.handleAuditVerify)
	mux.HandleFunc("GET /v1/audit/export", d.handleAuditExport)
	h := d.approvals.ControlHandler()
	mux.Handle("/v1/approvals", h)
	mux.Handle("/v1/approvals/", h)
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
	ss, err := d.store.ListSessions(r.Context(), f)
	if err != nil {
		control.WriteError(w, http.StatusInternalServerError, "list sessions: %v", err)
		return
	}
	if ss == nil {
		ss = []store.Session{}
	}
	control.WriteJSON(w, http.StatusOK, ss)
}

// handleDecisions returns the recorded decisions of one session (?session=ID)
// or of every session started within ?since= (e.g. 24h), oldest first, so a
// new policy can be tried against real traffic (`interlock policy replay`).
func (d *Daemon) handleDecisions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
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
	// Decisions still buffered in the recorder belong in the answer.
	d.recorder.Flush(r.Context())
	out := []SessionDecisions{}
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
		out = append(out, SessionDecisions{Session: sess, Decisions: ds})
	}
	control.WriteJSON(w, http.StatusOK, out)
}

func (d *Daemon) handleTranscript(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := recording.Replay(r.Context(), d.store, r.PathValue("id"), w); err != nil {
		control.WriteError(w, http.StatusNotFound, "replay %s: %v", r.PathValue("id"), err)
	}
}

func (d *Daemon) handlePcap(w http.ResponseWriter, r *http.Request) {
	// Rendered in memory first: a failure half-way must not leave the
	// caller a truncated file that looks valid.
	var buf bytes.Buffer
	if err := recording.ExportPcap(r.Context(), d.store, r.PathValue("id"), &buf); err != nil {
		control.WriteError(w, http.StatusNotFound, "export %s: %v", r.PathValue("id"), err)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.tcpdump.pcap")
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
	out := make([]AuditVerdict, 0, len(results))
	for _, res := range results {
		v := AuditVerdict{Host: res.Host, Records: res.Records, OK: res.Broken == nil,
			Summary: res.String(), HeadSeq: res.Head.Seq, HeadHash: res.Head.Hash}
		if res.Broken != nil {
			v.BrokenSeq = res.Broken.Seq
		}
		out = append(out, v)
	}
	control.WriteJSON(w, http.StatusOK, out)
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
