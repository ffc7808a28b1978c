package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/eidefs/eidefs/netsync"
)

// serveMetrics exposes Prometheus metrics at http://addr/metrics: commits, entries
// received, applied and rejected, kv writes, peers active, pushes pending, what
// hostile peers tried (netsync.AbuseStats), per sync
// the entries moved and its duration, and per FUSE operation a latency histogram
// (its _count is the number of requests) and an error count. stop closes the
// listener.
func serveMetrics(n *node, addr string, log *slog.Logger) (stop func(), err error) {
	set := metrics.NewSet()
	stats := func(f func() float64) func() float64 { return f }
	set.NewGauge("eidefs_commits_total", stats(func() float64 { return float64(n.inst.Stats().Commits) }))
	set.NewGauge("eidefs_entries_applied_total", stats(func() float64 { return float64(n.inst.Stats().Applied) }))
	set.NewGauge("eidefs_entries_rejected_total", stats(func() float64 { return float64(n.inst.Stats().Rejected) }))
	set.NewGauge("eidefs_kv_writes_total", stats(func() float64 { return float64(n.inst.Stats().Groups) }))
	set.NewGauge("eidefs_databases", func() float64 { return float64(len(n.inst.Databases())) })
	set.NewGauge("eidefs_peers_active", func() float64 {
		active := 0
		for _, p := range n.sync.State().Peers() {
			if p.Status == "active" {
				active++
			}
		}
		return float64(active)
	})
	set.NewGauge("eidefs_push_pending", func() float64 { p, _ := n.sync.Queues(); return float64(p) })
	set.NewGauge("eidefs_peers_retrying", func() float64 { _, r := n.sync.Queues(); return float64(r) })
	abuse := func(f func(a netsync.AbuseStats) uint64) func() float64 {
		return func() float64 { return float64(f(n.sync.Abuse())) }
	}
	set.NewGauge("eidefs_protocol_errors_total", abuse(func(a netsync.AbuseStats) uint64 { return a.ProtocolErrors }))
	set.NewGauge("eidefs_protocol_errors_strangers_total", abuse(func(a netsync.AbuseStats) uint64 { return a.StrangerErrors }))
	set.NewGauge("eidefs_forged_uploads_total", abuse(func(a netsync.AbuseStats) uint64 { return a.ForgedUploads }))
	set.NewGauge("eidefs_connections_refused_total", abuse(func(a netsync.AbuseStats) uint64 { return a.ConnsRefused }))
	set.NewGauge("eidefs_requests_limited_total", abuse(func(a netsync.AbuseStats) uint64 { return a.RequestsLimited }))
	set.NewGauge("eidefs_handshakes_refused_total", abuse(func(a netsync.AbuseStats) uint64 { return a.HandshakesRefused }))
	syncs := set.NewCounter(`eidefs_syncs_total{result="ok"}`)
	failed := set.NewCounter(`eidefs_syncs_total{result="failed"}`)
	moved := set.NewCounter("eidefs_sync_entries_total")
	received := set.NewCounter("eidefs_entries_received_total")
	sent := set.NewCounter("eidefs_entries_sent_total")
	bytes := set.NewCounter("eidefs_sync_bytes_total")
	took := set.NewHistogram("eidefs_sync_duration_seconds")
	n.sync.OnHistory(func(h netsync.HistoryRecord) {
		if h.OK {
			syncs.Inc()
		} else {
			failed.Inc()
		}
		moved.Add(h.Entries)
		received.Add(h.Received)
		sent.Add(h.Sent)
		bytes.Add(h.Bytes)
		took.Update(h.Duration.Seconds())
	})

	n.observe = func(op string, took time.Duration, failed bool) {
		set.GetOrCreateHistogram(`eidefs_fuse_op_duration_seconds{op="` + op + `"}`).Update(took.Seconds())
		if failed {
			set.GetOrCreateCounter(`eidefs_fuse_op_errors_total{op="` + op + `"}`).Inc()
		}
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		set.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	srv := &http.Server{Handler: mux}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server", "err", err)
		}
	}()
	log.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return func() { srv.Close() }, nil
}
