package http

import (
	"context"
	nethttp "net/http"

	"github.com/interlock-dev/interlock/decoders/protocol"
)

// Guard sees what crosses a decrypted (or plain) HTTP session besides the
// policy's decision: it adds the session's credential to requests for the
// target that has one, and keeps secrets from going where they must not.
// Its methods are called concurrently, from each request's goroutine.
type Guard interface {
	// Outbound gets each allowed request as it will go upstream (the
	// agent's head, hop-by-hop headers removed; its body as the agent
	// streams it). It may rewrite the head and replace the body. An error
	// refuses the request: a *Refusal with its status, anything else 502.
	// The body's reader may also fail with a *Refusal while it streams;
	// the request is then abandoned upstream and the agent gets it.
	Outbound(ctx context.Context, s *protocol.Session, target string, req *nethttp.Request) error
	// Inbound gets each upstream response before it is masked, recorded
	// or read by the agent; it may rewrite the head and replace the body.
	// An error answers the agent 502 instead.
	Inbound(s *protocol.Session, target string, resp *nethttp.Response) error
	// Passes reports whether Outbound and Inbound would leave every
	// request and response of the session to target as they are, so that
	// the decoder may relay them without calling either (see relay2).
	Passes(s *protocol.Session, target string) bool
}

// Refusal is a request a Guard refused, with the status and message the
// agent gets in interlockd's JSON error body.
type Refusal struct {
	Status  int
	Message string
}

func (r *Refusal) Error() string { return r.Message }
