// Package http speaks HTTP/1.1 and HTTP/2, in the clear and over TLS, on
// both sides of interlockd, and decides every request in between
// (protocol.Decoder).
//
// A connection begins with a server name. The agent's TLS ClientHello is
// read without being consumed (crypto/tls parses it; see peekHello), else
// the first request's Host is: Session.Select chooses the target by that
// name and decides the connection to it. Then the target's TLS handling
// (Target.Mode) says what follows:
//
//   - Passthrough: the bytes, ClientHello included, are relayed untouched;
//     nothing is decrypted and the recording says so.
//   - Intercept: interlockd terminates TLS with Session.TLS (a leaf of
//     Interlock's CA for the server name, minted only now that the name is
//     allowed), serves HTTP/2 or HTTP/1.1 as the agent's ALPN asks
//     (golang.org/x/net/http2, net/http), and sends each allowed request
//     upstream over TLS verified for the same name against the system
//     roots or Target.RootCAs. An HTTP/2 agent whose upstream speaks
//     HTTP/2 is relayed frame by frame over one upstream connection
//     (relay2, up2), its requests decided as their HEADERS come. An
//     upstream that fails verification gets the agent a 502 and ends the
//     session with a RefusedError, never a weaker connection. Upstream
//     connections left in step when a session ends (HTTP/1.1's, the
//     relay's, and those of the net/http client the other requests take)
//     serve the identity's next sessions to the same upstream (idle1,
//     transports).
//   - Plain: HTTP/1.1 without TLS.
//
// Every request (every HTTP/2 stream) is one Enforcer.Decide, made before
// anything of it goes upstream; a hold waits on the request's own
// goroutine, so a request held for approval holds only itself. A denial is a 403 whose small JSON body names the rule (a gRPC
// call gets PERMISSION_DENIED), and the connection goes on. A Mask verdict
// rewrites the response body (see maskResponse) or refuses it with 502.
// An allowed HTTP/1.1 WebSocket upgrade is passed on, and the connection
// becomes the WebSocket's relay (see upgraded). A Host that disagrees with the TLS server name (or,
// in the clear, with the first request's) is a 421. HTTP/1.1 framing that
// two parsers could read two ways (Content-Length with Transfer-Encoding,
// repeated Content-Length, obsolete line folding, bare LF line ends) is a
// 400 before anything goes upstream, and ends the connection.
//
// What the recording holds, by message type (protocol.Message.Type):
//
//	'h' agent   a request head, in HTTP/1.1 form (HTTP/2 too); the values
//	            of Authorization, Proxy-Authorization and Cookie (and a
//	            response's Set-Cookie) are kept as their length only
//	'b' agent   a request body, its first MaxRecordedBody bytes
//	'H' server  a response head, in HTTP/1.1 form
//	'B' server  a response body, its first MaxRecordedBody bytes
//	'i' proxy   a response interlockd gave itself (403, 421, 400, 502)
//	'w' agent   a WebSocket's bytes from the agent, its first MaxRecordedBody
//	'W' server  a WebSocket's bytes from the server, its first MaxRecordedBody
//	't' proxy   a passthrough connection: server name and ALPN, not decrypted
//	'n' proxy   a passthrough connection's byte counts
//
// The package is pure: it never logs, never touches the kernel and holds
// no secret.
package http
