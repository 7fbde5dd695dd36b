// Package postgres speaks the PostgreSQL wire protocol (version 3) on both
// sides of interlockd: it accepts an agent's connection without needing the
// agent's password, authenticates upstream with a session credential, and
// relays the session message by message, asking an Enforcer about every
// statement before it reaches the server.
//
// Framing and message encoding come from jackc/pgx's pgproto3. The relay's hot
// path scans message headers itself over reused buffers and forwards the raw
// bytes of every message it does not change, so a session allocates nothing
// per message beyond the SQL text it hands the Enforcer.
//
// The package is pure: it never logs, never touches the kernel and holds no
// secrets beyond the credential a caller passes to ConnectUpstream. It returns
// errors and leaves decisions to its caller.
package postgres
