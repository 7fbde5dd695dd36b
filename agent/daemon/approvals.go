package daemon

import (
	"context"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/decoders/postgres"
	"github.com/interlock-dev/interlock/policy"
)

// hold puts a statement up for review. The returned verdict makes the relay
// tell the agent the approval id and wait, holding this session only.
func (s *pgSession) hold(ctx context.Context, t *policy.Target, sql string, dec policy.Decision) (postgres.Verdict, string) {
	spec := policy.ApprovalSpec{Quorum: 1}
	if dec.Approval != nil {
		spec = *dec.Approval
	}
	id, wait, err := s.d.approvals.Hold(ctx, approvals.Request{
		Session: s.rec.ID(), Identity: s.c.Identity.Name, PID: int(s.c.Identity.PID), UID: s.c.Identity.UID,
		Exe: s.c.Identity.Exe, Target: targetName(t), Protocol: "postgresql", Statement: sql, Rule: dec.Rule,
		Reviewers: spec.Reviewers, Quorum: spec.Quorum, Timeout: spec.Timeout,
	})
	if err != nil {
		s.log.Error().Err(err).Msg("hold for approval")
		return postgres.Verdict{Action: postgres.Deny, Rule: dec.Rule, Message: "needs approval, and the request could not be held"}, ""
	}
	return postgres.Verdict{Action: postgres.Hold, Rule: dec.Rule, Message: dec.Message, ApprovalID: id, Wait: wait}, id
}
