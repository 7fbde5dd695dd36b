// Package ssh terminates an agent's SSH connection in interlockd and
// serves it from a connection of its own to the server, deciding every
// request in between (protocol.Decoder).
//
// Towards the agent it is an SSH server presenting a host certificate
// signed by Interlock's SSH host CA (the agent's known_hosts trusts it with
// one @cert-authority line); it accepts the agent with "none" or any public
// key, since the agent's identity is the kernel's, never a secret it holds.
// Towards the server it logs in with a key pair made for the session and a
// certificate issued for that key (Upstream.Credential), after checking the
// server's host key against the target's known_hosts file.
//
// Each session channel's exec request is decided (Operation "exec", Text
// the command line), and so is a shell (Operation "shell"); a denial is
// exit status 126 with the rule on stderr, and the connection goes on.
// git's and legacy scp's commands are exec lines too: the policy decides
// them as the repository or file operation they are.
//
// The sftp subsystem (and so scp, which OpenSSH 9 runs over sftp) is served
// by interlockd itself with github.com/pkg/sftp: each operation is decided
// on its path (Operations "sftp-read", "sftp-write", "sftp-stat"; Text the
// absolute path, resolved against the server's starting directory), and
// an allowed one is carried out on an sftp session of the server's. A
// denial is SSH_FX_PERMISSION_DENIED, with the rule on the channel's
// stderr (OpenSSH's sftp shows stderr, not the status message); the
// session goes on.
//
// Everything else an agent can ask for (other subsystems, env, port
// forwarding, agent forwarding, X11) is recorded, put to the Enforcer for
// the audit trail, and refused whatever the verdict: this package does not
// pass on what it cannot police. pty-req, window-change and signal only
// shape the terminal of a request already decided, and are passed on.
//
// What the recording holds, by message type (protocol.Message.Type):
//
//	'o' agent   a channel open: its type, and host:port for forwarding
//	'q' agent   a channel request: its type, then the command line,
//	            subsystem or variable name ("pty-req TERM COLSxROWS")
//	'g' agent   a global request (tcpip-forward, ...): its type
//	'f' agent   an sftp operation and its paths: "open-read /p",
//	            "open-write /p", "rename /a -> /b", "list /d", ...
//	'i' proxy   what interlockd told the agent itself (a denial on stderr)
//	'w' agent   a command's stdin        } each up to MaxRecordedStream
//	'd' server  a command's stdout       } bytes per command, in the
//	'e' server  a command's stderr       } chunks they crossed in
//	'n' server  a command's byte counts: "stdin N, stdout N, stderr N bytes"
//	'x' server  how a command ended: "exit-status N" or "exit-signal NAME"
//
// The package is pure: it never logs, never touches the kernel and holds
// no secret beyond the session's key pair (or a static key the credential
// hands it), which never leaves its memory.
package ssh
