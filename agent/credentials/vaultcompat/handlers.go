package vaultcompat

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/interlock-dev/interlock/agent/credentials/pgrole"
	"golang.org/x/crypto/ssh"
)

// response is Vault's JSON envelope.
type response struct {
	RequestID     string         `json:"request_id"`
	LeaseID       string         `json:"lease_id"`
	Renewable     bool           `json:"renewable"`
	LeaseDuration int            `json:"lease_duration"`
	Data          map[string]any `json:"data"`
	WrapInfo      any            `json:"wrap_info"`
	Warnings      []string       `json:"warnings"`
	Auth          *authInfo      `json:"auth"`
}

type authInfo struct {
	ClientToken   string            `json:"client_token"`
	Accessor      string            `json:"accessor"`
	Policies      []string          `json:"policies"`
	TokenPolicies []string          `json:"token_policies"`
	Metadata      map[string]string `json:"metadata"`
	LeaseDuration int               `json:"lease_duration"`
	Renewable     bool              `json:"renewable"`
	TokenType     string            `json:"token_type"`
	Orphan        bool              `json:"orphan"`
}

// httpError carries the status Vault would answer with.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

var errDenied = errorf(http.StatusForbidden, "permission denied")

type handler func(r *http.Request, tok *token) (*response, error)

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	write := func(pattern string, h handler, auth bool) {
		s.mux.Handle("PUT "+pattern, s.wrap(h, auth))
		s.mux.Handle("POST "+pattern, s.wrap(h, auth))
	}
	read := func(pattern string, h handler, auth bool) {
		s.mux.Handle("GET "+pattern, s.wrap(h, auth))
	}
	s.mux.HandleFunc("GET /v1/sys/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"initialized": true, "sealed": false, "standby": false,
			"version": "vault-compat-test", "server_time_utc": time.Now().Unix()})
	})
	s.mux.HandleFunc("GET /v1/ssh/public_key", func(w http.ResponseWriter, r *http.Request) {
		if s.ca == nil {
			writeError(w, errorf(http.StatusNotFound, "no handler for route \"ssh/public_key\""))
			return
		}
		w.Write(ssh.MarshalAuthorizedKey(s.ca.PublicKey()))
	})
	write("/v1/auth/approle/login", s.approleLogin, false)
	write("/v1/auth/cert/login", s.certLogin, false)
	write("/v1/auth/token/renew-self", s.renewSelf, true)
	read("/v1/auth/token/lookup-self", s.lookupSelf, true)
	write("/v1/auth/token/revoke-self", s.revokeSelf, true)
	read("/v1/database/creds/{role}", s.databaseCreds, true)
	write("/v1/sys/leases/renew", s.renewLease, true)
	write("/v1/sys/leases/revoke", s.revokeLease, true)
	read("/v1/secret/data/{path...}", s.kvRead, true)
	write("/v1/secret/data/{path...}", s.kvWrite, true)
	s.mux.Handle("DELETE /v1/secret/data/{path...}", s.wrap(s.kvDelete, true))
	read("/v1/secret/metadata/{path...}", s.kvMetadata, true)
	write("/v1/ssh/sign/{role}", s.sshSign, true)
	for _, kind := range []string{"creds", "sts"} {
		read("/v1/aws/"+kind+"/{role}", s.awsCreds, true)
		write("/v1/aws/"+kind+"/{role}", s.awsCreds, true)
	}
}

func (s *Server) wrap(h handler, auth bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var tok *token
		if auth {
			if tok = s.lookupToken(r.Header.Get("X-Vault-Token")); tok == nil {
				writeError(w, errDenied)
				return
			}
		}
		resp, err := h(r, tok)
		if err != nil {
			writeError(w, err)
			return
		}
		if resp == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		resp.RequestID = randomHex(8)
		writeJSON(w, http.StatusOK, resp)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	var he *httpError
	if errors.As(err, &he) {
		status = he.status
	}
	writeJSON(w, status, map[string][]string{"errors": {err.Error()}})
}

func decodeBody(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20)).Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "failed to parse JSON input: %v", err)
	}
	return nil
}

// duration parses Vault's duration fields: seconds as a number or numeric
// string, or a Go duration string.
func duration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case nil:
		return 0, nil
	case float64:
		return time.Duration(v * float64(time.Second)), nil
	case string:
		if v == "" {
			return 0, nil
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			return time.Duration(n) * time.Second, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, errorf(http.StatusBadRequest, "invalid duration %q", v)
		}
		return d, nil
	}
	return 0, errorf(http.StatusBadRequest, "invalid duration %v", v)
}

func seconds(d time.Duration) int { return int((d + time.Second/2) / time.Second) }

func (s *Server) lookupToken(id string) *token {
	if id == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tok := s.tokens[id]
	if tok == nil || (tok.ttl > 0 && time.Now().After(tok.expires)) {
		return nil
	}
	return tok
}

// login issues a service token.
func (s *Server) login(display string, ttl time.Duration, meta map[string]string) *response {
	if ttl <= 0 {
		ttl = s.cfg.TokenTTL
	}
	now := time.Now()
	id := "hvs." + randomHex(16)
	tok := &token{display: display, policies: []string{"default"}, ttl: ttl,
		expires: now.Add(ttl), maxExpiry: now.Add(s.cfg.TokenMaxTTL)}
	s.mu.Lock()
	s.tokens[id] = tok
	s.mu.Unlock()
	return &response{Auth: &authInfo{ClientToken: id, Accessor: randomHex(12), Policies: tok.policies,
		TokenPolicies: tok.policies, Metadata: meta, LeaseDuration: seconds(ttl), Renewable: true,
		TokenType: "service", Orphan: true}}
}

func (s *Server) approleLogin(r *http.Request, _ *token) (*response, error) {
	var body struct {
		RoleID   string `json:"role_id"`
		SecretID string `json:"secret_id"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	for name, ar := range s.cfg.AppRoles {
		if ar.RoleID != "" && ar.RoleID == body.RoleID && ar.SecretID == body.SecretID {
			return s.login("approle", ar.TokenTTL, map[string]string{"role_name": name}), nil
		}
	}
	return nil, errorf(http.StatusBadRequest, "invalid role or secret ID")
}

func (s *Server) certLogin(r *http.Request, _ *token) (*response, error) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return nil, errorf(http.StatusBadRequest, "client certificate must be supplied")
	}
	cn := r.TLS.VerifiedChains[0][0].Subject.CommonName
	return s.login("cert-"+cn, 0, map[string]string{"common_name": cn}), nil
}

func (s *Server) renewSelf(r *http.Request, tok *token) (*response, error) {
	var body struct {
		Increment any `json:"increment"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	inc, err := duration(body.Increment)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.Header.Get("X-Vault-Token")
	if tok.ttl == 0 {
		return nil, errorf(http.StatusBadRequest, "lease is not renewable")
	}
	if inc <= 0 {
		inc = tok.ttl
	}
	exp := earlier(time.Now().Add(inc), tok.maxExpiry)
	tok.expires = exp
	ttl := time.Until(exp)
	return &response{Auth: &authInfo{ClientToken: id, Policies: tok.policies, TokenPolicies: tok.policies,
		LeaseDuration: seconds(ttl), Renewable: true, TokenType: "service", Orphan: true}}, nil
}

func (s *Server) lookupSelf(r *http.Request, tok *token) (*response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data := map[string]any{"id": r.Header.Get("X-Vault-Token"), "display_name": tok.display,
		"policies": tok.policies, "renewable": tok.ttl > 0, "ttl": 0, "type": "service"}
	if tok.ttl > 0 {
		data["ttl"] = seconds(time.Until(tok.expires))
		data["expire_time"] = tok.expires.UTC().Format(time.RFC3339Nano)
		data["creation_ttl"] = seconds(tok.ttl)
	}
	return &response{Data: data}, nil
}

func (s *Server) revokeSelf(r *http.Request, _ *token) (*response, error) {
	s.mu.Lock()
	delete(s.tokens, r.Header.Get("X-Vault-Token"))
	s.mu.Unlock()
	return nil, nil
}

func (s *Server) databaseCreds(r *http.Request, tok *token) (*response, error) {
	if s.cfg.Database == nil {
		return nil, errorf(http.StatusNotFound, "no handler for route %q", strings.TrimPrefix(r.URL.Path, "/v1/"))
	}
	roleName := r.PathValue("role")
	role, ok := s.cfg.Database.Roles[roleName]
	if !ok {
		return nil, errorf(http.StatusBadRequest, "unknown role: %s", roleName)
	}
	ttl, maxTTL := role.DefaultTTL, role.MaxTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	if maxTTL <= 0 {
		maxTTL = 24 * time.Hour
	}
	now := time.Now()
	// Vault's default username template, cut to PostgreSQL's 63 bytes.
	user := fmt.Sprintf("v-%s-%s-%s-%d", short(tok.display, 8), short(roleName, 8), randomHex(10), now.Unix())
	password := pgrole.RandomPassword()
	if err := s.admin.Create(r.Context(), user, password, now.Add(ttl), role.Grants...); err != nil {
		return nil, errorf(http.StatusInternalServerError, "create credential: %v", err)
	}
	id := "database/creds/" + roleName + "/" + randomHex(12)
	s.mu.Lock()
	s.leases[id] = &lease{
		revoke:    func(ctx context.Context) error { return s.admin.Drop(ctx, user, "") },
		extend:    func(ctx context.Context, until time.Time) error { return s.admin.Extend(ctx, user, until) },
		renewable: true, ttl: ttl, expires: now.Add(ttl), maxExpiry: now.Add(maxTTL)}
	s.mu.Unlock()
	return &response{LeaseID: id, Renewable: true, LeaseDuration: seconds(ttl),
		Data: map[string]any{"username": user, "password": password}}, nil
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func short(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (s *Server) renewLease(r *http.Request, _ *token) (*response, error) {
	var body struct {
		LeaseID   string `json:"lease_id"`
		Increment any    `json:"increment"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	inc, err := duration(body.Increment)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	l, ok := s.leases[body.LeaseID]
	if !ok {
		s.mu.Unlock()
		return nil, errorf(http.StatusBadRequest, "lease not found")
	}
	if !l.renewable {
		s.mu.Unlock()
		return nil, errorf(http.StatusBadRequest, "lease is not renewable")
	}
	if inc <= 0 {
		inc = l.ttl
	}
	exp := earlier(time.Now().Add(inc), l.maxExpiry)
	extend := l.extend
	s.mu.Unlock()
	if extend != nil {
		if err := extend(r.Context(), exp); err != nil {
			return nil, errorf(http.StatusInternalServerError, "renew lease: %v", err)
		}
	}
	s.mu.Lock()
	if l, ok := s.leases[body.LeaseID]; ok && exp.After(l.expires) {
		l.expires = exp
	}
	s.mu.Unlock()
	return &response{LeaseID: body.LeaseID, Renewable: true, LeaseDuration: seconds(time.Until(exp))}, nil
}

func (s *Server) revokeLease(r *http.Request, _ *token) (*response, error) {
	var body struct {
		LeaseID string `json:"lease_id"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	s.mu.Lock()
	l, ok := s.leases[body.LeaseID]
	s.mu.Unlock()
	if !ok {
		// Vault answers 204 for unknown leases too: revocation is idempotent.
		return nil, nil
	}
	if err := l.revoke(r.Context()); err != nil {
		return nil, errorf(http.StatusInternalServerError, "revoke lease: %v", err)
	}
	s.mu.Lock()
	delete(s.leases, body.LeaseID)
	s.mu.Unlock()
	return nil, nil
}

// kvVersion picks the version a read asks for (?version=N, 0 or absent:
// the latest). Callers hold s.mu.
func (s *Server) kvVersion(r *http.Request) (*kvSecret, *kvEntry, error) {
	sec, ok := s.kv[r.PathValue("path")]
	if !ok || len(sec.versions) == 0 {
		return nil, nil, errorf(http.StatusNotFound, "")
	}
	n := len(sec.versions)
	if v := r.URL.Query().Get("version"); v != "" && v != "0" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > len(sec.versions) {
			return nil, nil, errorf(http.StatusNotFound, "")
		}
	}
	return sec, sec.versions[n-1], nil
}

// kvRead answers a KV v2 read: a deleted or destroyed version reads as
// absent (404), as in Vault.
func (s *Server) kvRead(r *http.Request, _ *token) (*response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, e, err := s.kvVersion(r)
	if err != nil {
		return nil, err
	}
	if e.destroyed || !e.deleted.IsZero() {
		return nil, errorf(http.StatusNotFound, "")
	}
	return &response{Data: map[string]any{"data": e.data, "metadata": kvMeta(e)}}, nil
}

func (s *Server) kvWrite(r *http.Request, _ *token) (*response, error) {
	var body struct {
		Data    map[string]any `json:"data"`
		Options struct {
			CAS *int `json:"cas"`
		} `json:"options"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.Data == nil {
		return nil, errorf(http.StatusBadRequest, "no data provided")
	}
	path := r.PathValue("path")
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ok := s.kv[path]
	if !ok {
		sec = &kvSecret{created: time.Now()}
		s.kv[path] = sec
	}
	if body.Options.CAS != nil && *body.Options.CAS != len(sec.versions) {
		return nil, errorf(http.StatusBadRequest, "check-and-set parameter did not match the current version")
	}
	e := &kvEntry{data: body.Data, version: len(sec.versions) + 1, created: time.Now()}
	sec.versions = append(sec.versions, e)
	return &response{Data: kvMeta(e)}, nil
}

// kvDelete soft-deletes the latest version, as DELETE secret/data/<path>
// does in Vault: older versions stay readable with ?version=N.
func (s *Server) kvDelete(r *http.Request, _ *token) (*response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ok := s.kv[r.PathValue("path")]
	if ok && len(sec.versions) > 0 {
		sec.versions[len(sec.versions)-1].deleted = time.Now()
	}
	return nil, nil
}

// kvMetadata lists a secret's versions (GET secret/metadata/<path>).
func (s *Server) kvMetadata(r *http.Request, _ *token) (*response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sec, ok := s.kv[r.PathValue("path")]
	if !ok {
		return nil, errorf(http.StatusNotFound, "")
	}
	versions := map[string]any{}
	for _, e := range sec.versions {
		m := kvMeta(e)
		delete(m, "version")
		delete(m, "custom_metadata")
		versions[strconv.Itoa(e.version)] = m
	}
	last := sec.versions[len(sec.versions)-1]
	return &response{Data: map[string]any{
		"current_version": last.version, "oldest_version": 1, "max_versions": 0, "cas_required": false,
		"created_time": sec.created.UTC().Format(time.RFC3339Nano), "updated_time": last.created.UTC().Format(time.RFC3339Nano),
		"delete_version_after": "0s", "custom_metadata": nil, "versions": versions,
	}}, nil
}

func kvMeta(e *kvEntry) map[string]any {
	deleted := ""
	if !e.deleted.IsZero() {
		deleted = e.deleted.UTC().Format(time.RFC3339Nano)
	}
	return map[string]any{"version": e.version, "created_time": e.created.UTC().Format(time.RFC3339Nano),
		"deletion_time": deleted, "destroyed": e.destroyed, "custom_metadata": nil}
}

func (s *Server) sshSign(r *http.Request, tok *token) (*response, error) {
	if s.cfg.SSH == nil {
		return nil, errorf(http.StatusNotFound, "no handler for route %q", strings.TrimPrefix(r.URL.Path, "/v1/"))
	}
	roleName := r.PathValue("role")
	role, ok := s.cfg.SSH.Roles[roleName]
	if !ok {
		return nil, errorf(http.StatusBadRequest, "unknown role: %s", roleName)
	}
	var body struct {
		PublicKey       string `json:"public_key"`
		ValidPrincipals string `json:"valid_principals"`
		TTL             any    `json:"ttl"`
		CertType        string `json:"cert_type"`
		KeyID           string `json:"key_id"`
	}
	if err := decodeBody(r, &body); err != nil {
		return nil, err
	}
	if body.CertType != "" && body.CertType != "user" {
		return nil, errorf(http.StatusBadRequest, "only user certificates are supported")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(body.PublicKey))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "failed to parse public_key as SSH key: %v", err)
	}
	var principals []string
	for p := range strings.SplitSeq(body.ValidPrincipals, ",") {
		if p = strings.TrimSpace(p); p != "" {
			principals = append(principals, p)
		}
	}
	if len(principals) == 0 {
		if role.DefaultUser == "" {
			return nil, errorf(http.StatusBadRequest, "empty valid principals not allowed by role")
		}
		principals = []string{role.DefaultUser}
	}
	for _, p := range principals {
		if !slices.Contains(role.AllowedUsers, "*") && !slices.Contains(role.AllowedUsers, p) {
			return nil, errorf(http.StatusBadRequest, "%s is not a valid value for valid_principals", p)
		}
	}
	ttl, err := duration(body.TTL)
	if err != nil {
		return nil, err
	}
	def, maxTTL := role.DefaultTTL, role.MaxTTL
	if def <= 0 {
		def = 30 * time.Minute
	}
	if maxTTL <= 0 {
		maxTTL = 24 * time.Hour
	}
	if ttl <= 0 {
		ttl = def
	}
	ttl = min(ttl, maxTTL)
	var serial [8]byte
	rand.Read(serial[:])
	keyID := body.KeyID
	if keyID == "" {
		keyID = "vault-" + tok.display + "-" + ssh.FingerprintSHA256(pub)
	}
	now := time.Now()
	cert := &ssh.Certificate{
		Key: pub, Serial: binary.BigEndian.Uint64(serial[:]), CertType: ssh.UserCert, KeyId: keyID,
		ValidPrincipals: principals,
		ValidAfter:      uint64(now.Add(-30 * time.Second).Unix()),
		ValidBefore:     uint64(now.Add(ttl).Unix()),
		Permissions:     ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}},
	}
	if err := cert.SignCert(rand.Reader, s.ca); err != nil {
		return nil, errorf(http.StatusInternalServerError, "sign certificate: %v", err)
	}
	serialHex := make([]string, 8)
	for i, b := range serial {
		serialHex[i] = fmt.Sprintf("%02x", b)
	}
	return &response{Data: map[string]any{
		"serial_number": strings.Join(serialHex, "-"),
		"signed_key":    string(ssh.MarshalAuthorizedKey(cert)),
	}}, nil
}

// Leases returns the ids of the leases currently live (tests).
func (s *Server) Leases() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.leases))
	for id := range s.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
