package main

import (
	"context"
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

func (v syncViews) Status() []byte {
	var b strings.Builder
	n := v.n
	fmt.Fprintf(&b, "key: %s\n", n.inst.Identity().Public())
	fmt.Fprintf(&b, "name: %s\n", n.cfg.Name)
	fmt.Fprintf(&b, "listen: %s\n", strings.Join(n.sync.Addrs(), ","))
	fmt.Fprintf(&b, "uptime: %s\n", time.Since(v.started).Truncate(time.Second))
	fmt.Fprintf(&b, "databases: %d\n", len(n.inst.Databases()))
	active, inactive := 0, 0
	var lastSync time.Time
	lastErr := ""
	for _, p := range n.sync.State().Peers() {
		if p.Status == "active" {
			active++
		} else {
			inactive++
		}
		if p.LastSync.After(lastSync) {
			lastSync = p.LastSync
		}
		if p.LastError != "" {
			lastErr = p.Name + ": " + p.LastError
		}
	}
	fmt.Fprintf(&b, "peers_active: %d\npeers_inactive: %d\n", active, inactive)
	if !lastSync.IsZero() {
		fmt.Fprintf(&b, "last_sync: %s\n", lastSync.UTC().Format(time.RFC3339))
	}
	if lastErr != "" {
		fmt.Fprintf(&b, "last_error: %s\n", lastErr)
	}
	st := n.inst.Stats()
	fmt.Fprintf(&b, "commits: %d\napplied: %d\nrejected: %d\n", st.Commits, st.Applied, st.Rejected)
	return []byte(b.String())
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
