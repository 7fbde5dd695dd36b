package recording

import (
	"context"
	"fmt"
)

// Flush makes the store hold every verdict and session made up to this
// moment, so its readers (policy replay over recorded sessions) miss none:
// it writes every open recording's buffered messages and verdicts, waits
// for the sessions being finished (their verdicts travel with their end),
// and waits for the session rows queued for the store's next commit.
func (r *Recorder) Flush(ctx context.Context) error {
	if err := r.flushAll(ctx); err != nil {
		return err
	}
	r.mu.Lock()
	ending := make([]chan struct{}, 0, len(r.ending))
	for _, ch := range r.ending {
		ending = append(ending, ch)
	}
	r.mu.Unlock()
	for _, ch := range ending {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for the sessions being finished: %w", ctx.Err())
		}
	}
	return r.st.Sync(ctx)
}
