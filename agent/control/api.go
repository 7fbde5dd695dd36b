package control

import (
	"time"

	"github.com/interlock-dev/interlock/agent/audit/chain"
	"github.com/interlock-dev/interlock/policy"
)

// The control API's requests and answers. interlockd answers with them and
// the CLI decodes them; they live here, beside the socket, so the CLI
// needs nothing of the daemon to speak the API.
type (
	// TagRequest tags (or, with Identity empty, untags) a cgroup.
	TagRequest struct {
		Cgroup   string `json:"cgroup"`
		Identity string `json:"identity,omitempty"`
	}
	// ExecRequest asks for a fresh tagged cgroup holding PID, a child of the
	// caller that has not yet executed the command.
	ExecRequest struct {
		Identity string `json:"identity"`
		PID      int    `json:"pid"`
		// Placeholders maps an environment variable to an http target
		// whose credential it stands in for (exec --placeholder).
		Placeholders map[string]string `json:"placeholders,omitempty"`
	}
	// ExecAnswer names the cgroup created for an exec, and the
	// placeholder environment (VAR=value) the command gets.
	ExecAnswer struct {
		Cgroup string   `json:"cgroup"`
		Env    []string `json:"env,omitempty"`
		// Warnings are for the CLI to print: ways out the command's user
		// has that the kernel cannot close for it, and an identity the
		// policy in force does not know (see TagAnswer).
		Warnings []string `json:"warnings,omitempty"`
	}
	// Status is what `interlock status` shows.
	Status struct {
		PID         int               `json:"pid"`
		Started     time.Time         `json:"started"`
		CgroupMount string            `json:"cgroup_mount"`
		CgroupRoot  string            `json:"cgroup_root"`
		BPFFS       string            `json:"bpffs"`
		ListenPort  uint16            `json:"listen_port"`
		Policy      string            `json:"policy"`
		Tagged      []TagEntry        `json:"tagged"`
		Active      int               `json:"active_connections"`
		Maps        map[string][2]int `json:"maps,omitempty"`
		// Modes says which identities are enforced and which audited.
		Modes       []policy.IdentityMode `json:"modes"`
		DefaultMode policy.Mode           `json:"default_mode"`
		// Gaps says what this kernel does not enforce (Datapath.Gaps).
		Gaps []string `json:"gaps,omitempty"`
		// RecordingsStopped says why decoded sessions are refused, while
		// the recordings' file system is under its reserve.
		RecordingsStopped string `json:"recordings_stopped,omitempty"`
	}
)

// TagEntry is one tagged cgroup as status reports it.
type TagEntry struct {
	Cgroup   string `json:"cgroup"`
	Identity string `json:"identity"`
}

// TagAnswer is POST /v1/tag's answer: the tag as made, and warnings for
// the CLI to print (an identity the policy in force does not know).
type TagAnswer struct {
	TagEntry
	Warnings []string `json:"warnings,omitempty"`
}

// PolicyText is the policy in force as GET /v1/policy returns it: where it
// came from and the text that was compiled, so `interlock policy explain`
// decides with exactly what the daemon decides with.
type PolicyText struct {
	Policy string `json:"policy"`
	Text   string `json:"text"`
}

// CAInfo describes Interlock's certificate authority: what `interlock ca
// export` prints and where `interlock exec` points PGSSLROOTCERT and the
// other runtimes' CA variables.
type CAInfo struct {
	// PEM is the authority's certificate.
	PEM string `json:"pem"`
	// Path is a world-readable file holding the certificate alone.
	Path string `json:"path"`
	// Bundle is a world-readable file holding the system roots followed by
	// the certificate, for clients that take a single CA file.
	Bundle      string    `json:"bundle"`
	Subject     string    `json:"subject"`
	Fingerprint string    `json:"sha256"`
	NotAfter    time.Time `json:"not_after"`
}

// The files interlockd publishes its CA in, beside the control socket
// (whose directory every local user can read): the daemon writes them, and
// `interlock tag --unit` names them in drop-ins written while it is down.
const (
	CACertFile   = "ca.crt"
	CABundleFile = "ca-bundle.crt"
)

// SSHInfo describes Interlock's SSH CAs: what `interlock ssh known-hosts`
// and `interlock ssh user-ca` print.
type SSHInfo struct {
	// KnownHosts is the known_hosts line that trusts the CA's host
	// certificates: "@cert-authority * ssh-ed25519 ...".
	KnownHosts string `json:"known_hosts"`
	// Fingerprint is the host CA public key's SHA256 fingerprint.
	Fingerprint string `json:"fingerprint"`
	// UserCA is the user CA's public key in authorized_keys form, for a
	// server's TrustedUserCAKeys.
	UserCA string `json:"user_ca"`
}

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

// VerdictOf renders one verified chain as the control API reports it.
func VerdictOf(res chain.Result) AuditVerdict {
	v := AuditVerdict{Host: res.Host, Records: res.Records, OK: res.Broken == nil,
		Summary: res.String(), HeadSeq: res.Head.Seq, HeadHash: res.Head.Hash}
	if res.Broken != nil {
		v.BrokenSeq = res.Broken.Seq
	}
	return v
}

// Session is one recorded session as GET /v1/sessions lists it: the
// store's row. interlockd converts a store.Session to it, a conversion
// the compiler accepts only while the two have the same fields, so they
// cannot drift apart unnoticed. The field names are the JSON names, as
// they have always been on the wire.
type Session struct {
	ID       string
	Host     string
	Identity string
	PID      int32
	UID      uint32
	Exe      string
	Cgroup   string
	Target   string
	Protocol string // "postgresql", "http", ...
	// ClientAddr is the agent's side of the connection and UpstreamAddr the
	// server's (the original destination), both host:port.
	ClientAddr   string
	UpstreamAddr string
	Started      time.Time
	Ended        time.Time // zero while the session is open
	BytesIn      int64     // from the agent
	BytesOut     int64     // to the agent
	Messages     int64
	Outcome      string // "closed", "client error", "protocol violation", ...
	// Recording is the path of the session's recording file;
	// RecordingSHA256 (hex) and RecordingSize are set when it is sealed.
	Recording       string
	RecordingSHA256 string
	RecordingSize   int64
}

// Decision is one recorded decision of a session (store.Decision, field
// for field, like Session).
type Decision struct {
	SessionID string
	Index     int64
	Seq       int64
	Time      time.Time
	Action    string // "allow", "deny", "mask", "approve"
	Rule      string
	Reason    string
	// Enforced is false in audit mode: the action is what the policy would
	// have done ("would deny"), not what happened.
	Enforced  bool
	Statement string // the request as the agent sent it
	// Op is the operation it was decided as: an SSH request, an HTTP
	// method; "" for SQL.
	Op         string
	ApprovalID string
}

// SessionDecisions is one recorded session and the decisions made in it.
type SessionDecisions struct {
	Session   Session    `json:"session"`
	Decisions []Decision `json:"decisions"`
	// Requests are an HTTP session's decided requests as its recording
	// keeps them, by the Seq of their decisions: a decision's statement is
	// the request's path alone, and the policy decides the method, host
	// and headers too. RequestsError says why a recording could not be
	// read for them.
	Requests      []HTTPRequest `json:"requests,omitempty"`
	RequestsError string        `json:"requests_error,omitempty"`
}

// HTTPRequest is one recorded HTTP request: what the policy decided it
// on. Header values the recording redacts (credentials) read as their
// length; the headers' presence is kept.
type HTTPRequest struct {
	Seq    int64               `json:"seq"`
	Method string              `json:"method"`
	Host   string              `json:"host"`
	URI    string              `json:"uri"`
	Header map[string][]string `json:"header,omitempty"`
}

// ApprovalsPrefix is where interlockd serves the approval queue on the
// control socket (both the prefix itself and the prefix followed by a
// slash).
const ApprovalsPrefix = "/v1/approvals"

// ApprovalView is an approval as the control API and the web page show it.
type ApprovalView struct {
	ID       string `json:"id"`
	Host     string `json:"host"`
	Session  string `json:"session"`
	Identity string `json:"identity"`
	PID      int32  `json:"pid"`
	// UID is the held process's uid and User its user name, when known:
	// that user can never decide the request.
	UID       *uint32    `json:"uid,omitempty"`
	User      string     `json:"user,omitempty"`
	Exe       string     `json:"exe"`
	Target    string     `json:"target"`
	Statement string     `json:"statement"`
	Rule      string     `json:"rule"`
	Reviewers []string   `json:"reviewers"`
	Quorum    int        `json:"quorum"`
	Requested time.Time  `json:"requested"`
	Deadline  time.Time  `json:"deadline"`
	State     string     `json:"state"`
	Decided   *time.Time `json:"decided,omitempty"`
	Votes     []VoteView `json:"votes"`
}

// VoteView is one reviewer's vote in an ApprovalView.
type VoteView struct {
	Reviewer string    `json:"reviewer"`
	Approve  bool      `json:"approve"`
	Comment  string    `json:"comment,omitempty"`
	Time     time.Time `json:"time"`
}

// Approvals counts approving votes.
func (v ApprovalView) Approvals() int {
	n := 0
	for _, vt := range v.Votes {
		if vt.Approve {
			n++
		}
	}
	return n
}

// DecideRequest is the body of POST .../approve and .../deny.
type DecideRequest struct {
	Comment string `json:"comment,omitempty"`
}
