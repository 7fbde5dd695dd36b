package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/interlock-dev/interlock/agent/approvals"
	"github.com/interlock-dev/interlock/agent/audit"
	"github.com/interlock-dev/interlock/agent/recording"
	"github.com/interlock-dev/interlock/agent/store"
)

// openStore opens the store (SQLite in the state directory unless a fleet
// PostgreSQL is configured) and the parts built on it: the audit chain, the
// session recorder and the approval service.
func (d *Daemon) openStore() error {
	d.host = d.cfg.Host
	if d.host == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("host name: %w", err)
		}
		d.host = h
	}
	where := d.cfg.Store
	if where == "" {
		where = filepath.Join(d.cfg.StateDir, "interlock.db")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.Open(ctx, where)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	d.store = st
	d.chain = audit.New(st, d.host, audit.WithEventLog(d.log.With().Str("component", "audit").Logger()))
	d.recorder, err = recording.NewRecorder(st, filepath.Join(d.cfg.StateDir, "recordings"), d.host,
		recording.WithAudit(d.chain), recording.WithLogger(d.log.With().Str("component", "recording").Logger()),
		recording.WithReserve(d.cfg.Recordings.Reserve.Bytes))
	if err != nil {
		d.chain.Close()
		st.Close()
		return fmt.Errorf("open recorder: %w", err)
	}
	alog := d.log.With().Str("component", "approvals").Logger()
	webURL := ""
	if d.cfg.Approvals.WebListen != "" {
		webURL = "http://" + d.cfg.Approvals.WebListen + "/"
	}
	d.approvals, err = approvals.New(approvals.Config{
		Store: st, Audit: d.chain, Host: d.host, Logger: &alog,
		Webhook: d.cfg.Approvals.Webhook, WebURL: webURL, Tokens: d.cfg.Approvals.ReviewerTokens,
		Observe: func(state store.ApprovalState, held time.Duration) {
			d.metrics.ApprovalWait.WithLabelValues(string(state)).Observe(held.Seconds())
		},
	})
	if err != nil {
		d.recorder.Close()
		d.chain.Close()
		st.Close()
		return fmt.Errorf("start approvals: %w", err)
	}
	return nil
}

func (d *Daemon) closeStore() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.approvals.Close(ctx)
	if err := d.recorder.Close(); err != nil {
		d.log.Error().Err(err).Msg("close recorder")
	}
	if err := d.chain.Close(); err != nil {
		d.log.Error().Err(err).Msg("close audit chain")
	}
	d.store.Close()
}

// serveWeb starts the reviewers' page when configured. Run calls the
// returned stop before it closes the store the page reads.
func (d *Daemon) serveWeb() (stop func(), err error) {
	if d.cfg.Approvals.WebListen == "" {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", d.cfg.Approvals.WebListen)
	if err != nil {
		return nil, fmt.Errorf("listen web page: %w", err)
	}
	return serveHTTP(l, d.approvals.WebHandler()), nil
}

// serveMetrics starts the Prometheus endpoint when configured. Run calls
// the returned stop before it closes the data path a scrape reads.
func (d *Daemon) serveMetrics() (stop func(), err error) {
	if d.cfg.MetricsListen == "" {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", d.cfg.MetricsListen)
	if err != nil {
		return nil, fmt.Errorf("listen metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", d.metrics.Handler())
	// Profiles on the same loopback-only listener, for finding what a busy
	// proxy spends its time on, and an execution trace for what it waits on.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serveHTTP(l, mux), nil
}

// serveHTTP serves h on l until the returned stop, which waits up to
// httpStopWait for the requests under way. Closing the server alone would
// not: a scrape still counting a map's entries when the daemon closed the
// map read a descriptor being closed (the race detector's find), and one
// closed and reused would have been read in its place.
func serveHTTP(l net.Listener, h http.Handler) (stop func()) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), httpStopWait)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			// A request still running (a profile of many seconds) reads
			// nothing the daemon closes next.
			srv.Close()
		}
	}
}

// httpStopWait bounds how long a stopping daemon waits for the requests to
// its web page and metrics endpoint.
const httpStopWait = 5 * time.Second
