package approvals

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/store"
)

// NewView converts a stored approval.
func NewView(a store.Approval) control.ApprovalView {
	v := control.ApprovalView{ID: a.ID, Host: a.Host, Session: a.SessionID, Identity: a.Identity, PID: a.PID, Exe: a.Exe,
		Target: a.Target, Statement: a.Statement, Rule: a.Rule, Reviewers: a.Reviewers, Quorum: a.Quorum,
		Requested: a.Requested, Deadline: a.Deadline, State: string(a.State), Votes: []control.VoteView{}}
	if v.Reviewers == nil {
		v.Reviewers = []string{}
	}
	if !a.Decided.IsZero() {
		d := a.Decided
		v.Decided = &d
	}
	for _, vt := range a.Votes {
		v.Votes = append(v.Votes, control.VoteView{Reviewer: vt.Reviewer, Approve: vt.Approve, Comment: vt.Comment, Time: vt.Time})
	}
	return v
}

// view is NewView with what the service knows besides the stored row: the
// requester's uid and user name.
func (s *Service) view(ctx context.Context, a store.Approval) control.ApprovalView {
	v := NewView(a)
	if uid, ok := s.requesterUID(ctx, a); ok {
		v.UID, v.User = &uid, s.lookup(uid)
	}
	return v
}

// ControlHandler serves the CLI's approval commands on the control socket,
// at control.ApprovalsPrefix:
//
//	GET  /v1/approvals[?state=pending|approved|...&host=H&limit=N]  -> []ApprovalView
//	GET  /v1/approvals/{id}                                         -> ApprovalView
//	POST /v1/approvals/{id}/approve  DecideRequest                  -> ApprovalView
//	POST /v1/approvals/{id}/deny     DecideRequest                  -> ApprovalView
//
// The reviewer is the caller's kernel credentials (control.PeerFrom): a
// request without them is refused. The daemon's middleware must already
// refuse callers in tagged cgroups; this handler adds the policy's reviewer
// list and the requester check.
func (s *Service) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+control.ApprovalsPrefix, s.handleList)
	mux.HandleFunc("GET "+control.ApprovalsPrefix+"/{id}", s.handleGet)
	mux.HandleFunc("POST "+control.ApprovalsPrefix+"/{id}/approve", func(w http.ResponseWriter, r *http.Request) {
		s.handleControlDecide(w, r, true)
	})
	mux.HandleFunc("POST "+control.ApprovalsPrefix+"/{id}/deny", func(w http.ResponseWriter, r *http.Request) {
		s.handleControlDecide(w, r, false)
	})
	return mux
}

func (s *Service) handleList(w http.ResponseWriter, r *http.Request) {
	f, err := filterOf(r)
	if err != nil {
		control.WriteError(w, http.StatusBadRequest, "%v", err)
		return
	}
	as, err := s.List(r.Context(), f)
	if err != nil {
		control.WriteError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	out := make([]control.ApprovalView, 0, len(as))
	for _, a := range as {
		out = append(out, s.view(r.Context(), a))
	}
	control.WriteJSON(w, http.StatusOK, out)
}

func filterOf(r *http.Request) (store.ApprovalFilter, error) {
	q := r.URL.Query()
	f := store.ApprovalFilter{Host: q.Get("host"), State: store.ApprovalState(q.Get("state"))}
	switch f.State {
	case "", store.Pending, store.Approved, store.Denied, store.Expired, store.Cancelled:
	default:
		return f, errors.New("state: want pending, approved, denied, expired or cancelled")
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			return f, errors.New("limit: want 1 to 1000")
		}
		f.Limit = n
	}
	return f, nil
}

func (s *Service) handleGet(w http.ResponseWriter, r *http.Request) {
	a, err := s.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		writeDecideError(w, err)
		return
	}
	control.WriteJSON(w, http.StatusOK, s.view(r.Context(), a))
}

func (s *Service) handleControlDecide(w http.ResponseWriter, r *http.Request, approve bool) {
	p, ok := control.PeerFrom(r.Context())
	if !ok {
		control.WriteError(w, http.StatusForbidden, "refused: the caller's credentials could not be read")
		return
	}
	var in control.DecideRequest
	if !decodeBody(w, r, &in) {
		return
	}
	s.decideAndAnswer(r.Context(), w, r.PathValue("id"), PeerReviewer(p.PID, p.UID, p.GID), approve, in.Comment)
}

func (s *Service) decideAndAnswer(ctx context.Context, w http.ResponseWriter, id string, rv Reviewer, approve bool, comment string) {
	a, err := s.Decide(ctx, id, rv, approve, comment)
	if err != nil {
		writeDecideError(w, err)
		return
	}
	control.WriteJSON(w, http.StatusOK, s.view(ctx, a))
}

// writeDecideError maps the service's errors to HTTP statuses.
func writeDecideError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, errComment):
		status = http.StatusBadRequest
	case errors.Is(err, store.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrNotReviewer), errors.Is(err, ErrRequester), errors.Is(err, ErrUnknownRequester):
		status = http.StatusForbidden
	case errors.Is(err, store.ErrDecided), errors.Is(err, store.ErrDuplicateVote):
		status = http.StatusConflict
	}
	control.WriteError(w, status, "%v", err)
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		control.WriteError(w, http.StatusBadRequest, "bad request: %v", err)
		return false
	}
	return true
}
