package recording

import "context"

// Flush writes every open recording's buffered messages and verdicts now,
// so readers of the store (policy replay over recorded sessions) see
// decisions made up to this moment.
func (r *Recorder) Flush(ctx context.Context) error { return r.flushAll(ctx) }
