package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/fs"
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
	PendingPush   int    `json:"pending_push"`
	RetryQueue    int    `json:"retry_queue"`
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
	s.PendingPush, s.RetryQueue = n.sync.Queues()
	return s
}

func (v syncViews) Status() []byte {
	s := v.status()
	var b strings.Builder
	fmt.Fprintf(&b, "key: %s\nname: %s\nlisten: %s\nuptime: %ds\ndatabases: %d\n", s.Key, s.Name, s.Listen, s.UptimeSeconds, s.Databases)
	fmt.Fprintf(&b, "peers_active: %d\npeers_inactive: %d\npending_push: %d\nretry_queue: %d\n", s.PeersActive, s.PeersInactive, s.PendingPush, s.RetryQueue)
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

// PeerNames lists the peers by name.
func (v syncViews) PeerNames() []string {
	var out []string
	for _, p := range v.n.sync.State().Peers() {
		out = append(out, p.Name)
	}
	return out
}

// PeerFile is one file of .sync/peers/<name>/.
func (v syncViews) PeerFile(name, file string) ([]byte, bool) {
	st := v.n.sync.State()
	p, err := v.n.sync.FindPeer(name)
	if err != nil {
		return nil, false
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format(time.RFC3339)
	}
	dbName := v.n.dbName
	var b strings.Builder
	switch file {
	case "info":
		fmt.Fprintf(&b, "key: %s\nname: %s\nstatus: %s\nfirst_seen: %s\nlast_seen: %s\nlast_sync: %s\nconsecutive_failures: %d\nrejected_entries: %d\n",
			p.Key, p.Name, p.Status, when(p.FirstSeen), when(p.LastSeen), when(p.LastSync), p.Failures, p.Rejected)
		if p.LastError != "" {
			fmt.Fprintf(&b, "last_error: %s\n", p.LastError)
		}
	case "addresses":
		for _, a := range p.Addrs {
			b.WriteString(a + "\n")
		}
	case "status":
		b.WriteString(p.Status + "\n")
	case "databases":
		for _, info := range v.n.inst.Databases() {
			d, _ := v.n.inst.DatabaseByID(info.ID)
			if s, err := d.Settings(); err == nil && s.Permission(p.Key) >= engine.PermRead {
				fmt.Fprintf(&b, "%s %s %s\n", info.Name, info.ID, s.Permission(p.Key))
			}
		}
	case "cursor", "metadata":
		cs := st.Cursors(p.Key)
		ids := make([]engine.ID, 0, len(cs))
		for id := range cs {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return dbName(ids[i]) < dbName(ids[j]) })
		for _, id := range ids {
			c := cs[id]
			if file == "cursor" {
				// db last_entry last_sync last_count total
				fmt.Fprintf(&b, "%s %s %s %d %d\n", dbName(id), c.LastEntry, when(c.LastSync), c.LastCount, c.Total)
			} else {
				fmt.Fprintf(&b, "%s successful=%d failed=%d success_rate=%.3f average_duration_ms=%.2f bytes=%d\n",
					dbName(id), c.Successful, c.Failed, c.SuccessRate(), c.AvgMs, c.Bytes)
			}
		}
	case "history":
		for _, h := range st.History(p.Key) {
			b.WriteString(historyLine(h, p.Name, dbName(h.DB)))
		}
	default:
		return nil, false
	}
	return []byte(b.String()), true
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
		b.WriteString(historyLine(h, names[h.Peer], v.n.dbName(h.DB)))
	}
	return []byte(b.String())
}

// historyLine: time, sync id, peer, database, ok or failed, entries, bytes,
// duration, error.
func historyLine(h netsync.HistoryRecord, peer, db string) string {
	result := "ok"
	if !h.OK {
		result = "failed"
	}
	line := fmt.Sprintf("%s %d %s %s %s entries=%d bytes=%d duration_ms=%.1f", h.Started.UTC().Format(time.RFC3339Nano), h.Seq,
		peer, db, result, h.Entries, h.Bytes, float64(h.Duration.Microseconds())/1000)
	if h.Err != "" {
		line += fmt.Sprintf(" error=%q", h.Err)
	}
	return line + "\n"
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
			name, db := n.peerName(r.Peer), n.dbName(r.DB)
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

// Wait blocks until the entry is held by n peers, polling the sync state.
func (v syncViews) Wait(ctx context.Context, prefix string, n int) ([]byte, error) {
	var db, id engine.ID
	found := false
	for _, info := range v.n.inst.Databases() {
		d, _ := v.n.inst.DatabaseByID(info.ID)
		if e, err := d.FindEntry(prefix); err == nil {
			db, id, found = info.ID, e, true
			break
		}
	}
	if !found {
		return nil, fmt.Errorf("entry %q: %w", prefix, engine.ErrNotFound)
	}
	ctx, cancel := context.WithTimeout(ctx, v.n.cfg.Sync.WaitTimeout.Duration)
	defer cancel()
	for {
		if holders := v.n.sync.Holders(db, id); len(holders) >= n {
			var b strings.Builder
			for _, p := range holders {
				fmt.Fprintf(&b, "%s %s\n", p.Name, p.Key)
			}
			return []byte(b.String()), nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, fs.ErrTimeout
			}
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// DBTicket is a read-only share ticket for db, the same until someone joins with it.
func (v syncViews) DBTicket(db engine.ID) []byte {
	d, ok := v.n.inst.DatabaseByID(db)
	if !ok {
		return nil
	}
	t, err := v.n.sync.ReadTicket(d)
	if err != nil {
		return []byte("error: " + err.Error() + "\n")
	}
	return []byte(t.String() + "\n")
}
