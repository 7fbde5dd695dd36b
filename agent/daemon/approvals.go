package daemon

import (
	"context"

	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/decoders/postgres"
	"github.com/interlock-dev/interlock/policy"
)

// hold puts a statement up for review.
func (d *Daemon) hold(ctx context.Context, c *proxy.Conn, t *policy.Target, sql string, dec policy.Decision) postgres.Verdict {
	return postgres.Verdict{Action: postgres.Deny, Rule: dec.Rule, Message: "needs approval, and no approval service is running"}
}
