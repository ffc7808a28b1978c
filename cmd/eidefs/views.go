package main

import (
	"fmt"
	"strings"
	"time"
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
