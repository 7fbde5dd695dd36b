package session

import (
	"context"
	"time"

	"github.com/interlock-dev/interlock/agent/metrics"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/store"
	"github.com/interlock-dev/interlock/decoders/protocol"
)

// finishTimeout bounds sealing a session's recording.
const finishTimeout = 10 * time.Second

// recorder records one session (protocol.Recorder).
type recorder struct {
	p       *Pipeline
	c       *conn
	session *recording.Session
	// cut ends the session with its cause.
	cut context.CancelCauseFunc
	// lastSeq is the recording sequence number of the agent's latest
	// message. Decoders record a request before they ask the Enforcer
	// about it, on the same goroutine, so the decision finds its request
	// here.
	lastSeq int64
	// relayed are the bytes from and to the agent that the decoder relayed
	// unrecorded (Relayed).
	relayed [2]int64
}

// Start implements protocol.Recorder.
func (r *recorder) Start(ctx context.Context) error {
	s, err := r.p.cfg.Recorder.Start(ctx, r.c.storeSession(), func(err error) {
		r.p.cfg.Log.Error().Err(err).Str("conn", r.c.id).Msg("the session cannot be recorded: ending it")
		r.cut(&protocol.RefusedError{Outcome: protocol.RecordingUnavailable, Err: err})
	})
	if err != nil {
		r.p.cfg.Log.Error().Err(err).Str("conn", r.c.id).Msg("start recording")
		return &protocol.RefusedError{Outcome: protocol.RecordingUnavailable, Err: err}
	}
	r.session, r.c.begun = s, true
	r.p.cfg.Metrics.ConnectSetup.WithLabelValues(r.c.protocol()).Observe(metrics.Since(r.c.accepted))
	return nil
}

// Ready implements protocol.Recorder.
func (r *recorder) Ready() error { return r.p.cfg.Recorder.Stopped() }

// Record implements protocol.Recorder.
func (r *recorder) Record(m protocol.Message) {
	seq := r.session.Message(m.FromClient, m.Type, m.Body, m.Time)
	if m.FromClient {
		r.lastSeq = seq
	}
}

// Relayed implements protocol.Recorder.
func (r *recorder) Relayed(fromAgent, toAgent int64) {
	r.relayed[0] += fromAgent
	r.relayed[1] += toAgent
}

// finish seals the recording, if the session began, and returns its row.
func (r *recorder) finish(outcome string) *store.Session {
	if r.session == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), finishTimeout)
	defer cancel()
	ss, err := r.session.Finish(ctx, recording.End{Outcome: outcome, BytesIn: r.relayed[0], BytesOut: r.relayed[1]})
	if err != nil {
		r.p.cfg.Log.Error().Err(err).Str("conn", r.c.id).Msg("seal recording")
	}
	return &ss
}
