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
// Everything else an agent can ask for (subsystems such as sftp, env, port
// forwarding, agent forwarding, X11) is recorded, put to the Enforcer for
// the audit trail, and refused whatever the verdict: this package does not
// pass on what it cannot police. pty-req, window-change and signal only
// shape the terminal of a request already decided, and are passed on.
//
// What the recording holds, by message type (protocol.Message.Type):
//
//	'o' agent   a channel open: its type, and host:port for forwarding
//	'q' agent   a channel request: its type, then the command line,
//	            subsystem or variable name
//	'g' agent   a global request (tcpip-forward, ...): its type
//	'i' proxy   what interlockd told the agent itself (a denial on stderr)
//	'w' agent   a command's stdin        } each up to MaxRecordedStream
//	'd' server  a command's stdout       } bytes per command, in the
//	'e' server  a command's stderr       } chunks they crossed in
//	'n' server  a command's byte counts: "stdin N, stdout N, stderr N bytes"
//	'x' server  how a command ended: "exit-status N" or "exit-signal NAME"
//
// The package is pure: it never logs, never touches the kernel and holds
// no secret beyond the session's key pair, which never leaves its memory.
package ssh
