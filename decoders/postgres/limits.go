package postgres

import (
	"github.com/jackc/pgx/v5/pgproto3"
)

// Limit names, as LimitError.Limit reports them.
const (
	// LimitMessage: a message the relay must read whole is larger than
	// RelayConfig.MaxBuffered.
	LimitMessage = "message_buffer"
	// LimitBudget: the shared RelayConfig.Budget refused the memory for a
	// message.
	LimitBudget = "buffer_budget"
	// LimitMessageTimeout: the agent began a message and did not finish it
	// within RelayConfig.MessageTimeout.
	LimitMessageTimeout = "message_timeout"
)

// Budget is memory shared by several sessions, e.g. all of one identity's.
// The relay reserves from it before it grows a buffer beyond its standard
// size and releases what it reserved when the buffer shrinks back or the
// session ends. Implementations must be safe for concurrent use.
type Budget interface {
	// Reserve takes n bytes from the budget and reports whether they were
	// available; on false nothing is taken.
	Reserve(n int) bool
	// Release gives back n bytes taken by Reserve.
	Release(n int)
}

// LimitError ends a session that went over one of the relay's limits. The
// agent is told with Code: 54000 (program_limit_exceeded) for a message
// above the session's cap, 53200 (out_of_memory) when the shared budget is
// spent, 08P01 for a message left unfinished.
type LimitError struct {
	// Limit is one of the Limit* names.
	Limit string
	Code  string
	Msg   string
}

func (e *LimitError) Error() string { return "postgres limit " + e.Limit + ": " + e.Msg }

// Response returns the ErrorResponse that tells the agent about e.
func (e *LimitError) Response() *pgproto3.ErrorResponse {
	return &pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: e.Code, Message: "interlock: " + e.Msg}
}
