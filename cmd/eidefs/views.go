package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/netsync"
)

// syncViews implements fs.SyncViews from the running node.
type syncViews struct {
	n       *node
	started time.Time
}

// nodeStatus is what .sync/status and status.json show.
type nodeStatus struct {
	Key           string `json:"key"`
	Name          string `json:"name"`
	Listen        string `json:"listen"`
	UptimeSeconds int64  `json:"uptime_seconds"`
	Databases     int    `json:"databases"`
	PeersActive   int    `json:"peers_active"`
	PeersInactive int    `json:"peers_inactive"`
	LastSync      string `json:"last_sync,omitempty"`
	LastError     string `json:"last_error,omitempty"`
	Commits       uint64 `json:"commits"`
	Applied       uint64 `json:"applied"`
	Rejected      uint64 `json:"rejected"`
}

func (v syncViews) status() nodeStatus {
	n := v.n
	st := n.inst.Stats()
	s := nodeStatus{Key: n.inst.Identity().Public().String(), Name: n.cfg.Name, Listen: strings.Join(n.sync.Addrs(), ","),
		UptimeSeconds: int64(time.Since(v.started).Seconds()), Databases: len(n.inst.Databases()),
		Commits: st.Commits, Applied: st.Applied, Rejected: st.Rejected}
	var lastSync time.Time
	for _, p := range n.sync.State().Peers() {
		if p.Status == "active" {
			s.PeersActive++
		} else {
			s.PeersInactive++
		}
		if p.LastSync.After(lastSync) {
			lastSync = p.LastSync
		}
		if p.LastError != "" {
			s.LastError = p.Name + ": " + p.LastError
		}
	}
	if !lastSync.IsZero() {
		s.LastSync = lastSync.UTC().Format(time.RFC3339)
	}
	return s
}

func (v syncViews) Status() []byte {
	s := v.status()
	var b strings.Builder
	fmt.Fprintf(&b, "key: %s\nname: %s\nlisten: %s\nuptime: %ds\ndatabases: %d\n", s.Key, s.Name, s.Listen, s.UptimeSeconds, s.Databases)
	fmt.Fprintf(&b, "peers_active: %d\npeers_inactive: %d\n", s.PeersActive, s.PeersInactive)
	if s.LastSync != "" {
		fmt.Fprintf(&b, "last_sync: %s\n", s.LastSync)
	}
	if s.LastError != "" {
		fmt.Fprintf(&b, "last_error: %s\n", s.LastError)
	}
	fmt.Fprintf(&b, "commits: %d\napplied: %d\nrejected: %d\n", s.Commits, s.Applied, s.Rejected)
	return []byte(b.String())
}

func (v syncViews) StatusJSON() []byte {
	b, _ := json.MarshalIndent(v.status(), "", "  ")
	return append(b, '\n')
}

// Peers: name key status last_sync addresses, one peer a line (for awk).
func (v syncViews) Peers() []byte {
	var b strings.Builder
	for _, p := range v.n.sync.State().Peers() {
		last := "never"
		if !p.LastSync.IsZero() {
			last = p.LastSync.UTC().Format(time.RFC3339)
		}
		addrs := strings.Join(p.Addrs, ",")
		if addrs == "" {
			addrs = "-"
		}
		fmt.Fprintf(&b, "%s %s %s %s %s\n", p.Name, p.Key, p.Status, last, addrs)
	}
	return []byte(b.String())
}

// History: one line per sync with any peer, oldest first (at most the last 1,000
// per peer): time, sync id, peer, database, ok or failed, entries, bytes, duration,
// error.
func (v syncViews) History() []byte {
	st := v.n.sync.State()
	var recs []netsync.HistoryRecord
	for _, p := range st.Peers() {
		recs = append(recs, st.History(p.Key)...)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Seq < recs[j].Seq })
	names := map[engine.PublicKey]string{}
	for _, p := range st.Peers() {
		names[p.Key] = p.Name
	}
	var b strings.Builder
	for _, h := range recs {
		db := h.DB.Short()
		if d, ok := v.n.inst.DatabaseByID(h.DB); ok {
			db = d.Name()
		}
		result := "ok"
		if !h.OK {
			result = "failed"
		}
		fmt.Fprintf(&b, "%s %d %s %s %s entries=%d bytes=%d duration_ms=%.1f", h.Started.UTC().Format(time.RFC3339Nano), h.Seq,
			names[h.Peer], db, result, h.Entries, h.Bytes, float64(h.Duration.Microseconds())/1000)
		if h.Err != "" {
			fmt.Fprintf(&b, " error=%q", h.Err)
		}
		b.WriteByte('\n')
	}
	return []byte(b.String())
}

// Control runs a command written to .sync/ctl.
func (v syncViews) Control(cmd string) (string, error) {
	n := v.n
	f := strings.Fields(cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	report := func(results []netsync.Result) (string, error) {
		var b strings.Builder
		failed := 0
		for _, r := range results {
			name := r.Peer.Short()
			if p, ok := n.sync.State().Peer(r.Peer); ok {
				name = p.Name
			}
			db := r.DB.Short()
			if d, ok := n.inst.DatabaseByID(r.DB); ok {
				db = d.Name()
			}
			if r.Err != nil {
				failed++
				fmt.Fprintf(&b, "%s %s: failed: %v\n", name, db, r.Err)
			} else {
				fmt.Fprintf(&b, "%s %s: ok, received %d, sent %d\n", name, db, r.Received, r.Sent)
			}
		}
		if failed > 0 {
			return b.String(), fmt.Errorf("%d of %d syncs failed:\n%s", failed, len(results), b.String())
		}
		return b.String(), nil
	}
	switch {
	case len(f) == 1 && f[0] == "sync":
		return report(n.sync.SyncAll(ctx))
	case len(f) == 2 && f[0] == "sync":
		p, err := n.sync.FindPeer(f[1])
		if err != nil {
			return "", err
		}
		return report(n.sync.SyncPeer(ctx, p.Key))
	case len(f) == 2 && f[0] == "connect":
		key, name, offers, err := n.sync.Discover(ctx, f[1])
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("key: %s\nname: %s\nshared databases: %d\n", key, name, len(offers)), nil
	case (len(f) == 3 || len(f) == 4) && f[0] == "peer" && f[1] == "add":
		ks, addr, ok := strings.Cut(f[2], "@")
		if !ok {
			return "", fmt.Errorf("want peer add KEY@ADDRESS [NAME]")
		}
		k, err := engine.ParsePublicKey(ks)
		if err != nil {
			return "", err
		}
		name := ""
		if len(f) == 4 {
			name = f[3]
		}
		return "", n.sync.AddPeer(k, name, []string{addr})
	}
	return "", fmt.Errorf("unknown command %q (want: sync, sync PEER, connect ADDRESS, peer add KEY@ADDRESS [NAME])", cmd)
}

// DBPeers: per peer sharing the database, one line: name key status last_entry
// last_sync total successful failed (the cursor and its counters).
func (v syncViews) DBPeers(db engine.ID) []byte {
	st := v.n.sync.State()
	var b strings.Builder
	for _, p := range st.Peers() {
		c, ok := st.Cursors(p.Key)[db]
		if !ok {
			continue
		}
		last := "never"
		if !c.LastSync.IsZero() {
			last = c.LastSync.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(&b, "%s %s %s %s %s total=%d successful=%d failed=%d\n", p.Name, p.Key, p.Status, c.LastEntry, last, c.Total, c.Successful, c.Failed)
	}
	return []byte(b.String())
}
