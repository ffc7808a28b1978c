package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// tipsOf reads the sorted tips of db from n's mount.
func tipsOf(n *node, db string) ([]string, error) {
	b, err := os.ReadFile(n.path(db, ".sync/tips"))
	if err != nil {
		return nil, err
	}
	t := strings.Fields(string(b))
	slices.Sort(t)
	return t, nil
}

// waitConverged waits until every node shows the same, non-empty tips of db. It
// returns how long that took, or an error describing each node's tips.
func waitConverged(ctx context.Context, nodes []*node, db string, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		var first []string
		same := true
		var msg strings.Builder
		for i, n := range nodes {
			t, err := tipsOf(n, db)
			if err != nil {
				same = false
				fmt.Fprintf(&msg, "\n  %s: %v", n.name, err)
				continue
			}
			fmt.Fprintf(&msg, "\n  %s: %s", n.name, shortIDs(t))
			if i == 0 {
				first = t
			}
			if len(t) == 0 || !slices.Equal(t, first) {
				same = false
			}
		}
		if same {
			return time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return time.Since(start), fmt.Errorf("tips differ after %v:%s", timeout, msg.String())
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return time.Since(start), ctx.Err()
		}
	}
}

func shortIDs(ids []string) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id[:min(12, len(id))]
	}
	return "[" + strings.Join(s, " ") + "]"
}

// fileRec is one entry of a tree: a directory, or a file's size and hash.
type fileRec struct {
	dir  bool
	size int64
	hash string
}

func (f fileRec) String() string {
	if f.dir {
		return "dir"
	}
	return fmt.Sprintf("%d bytes %s", f.size, f.hash)
}

// readTree reads everything under root (the database's directory in a mount),
// the generated .sync directory left out; keys are slash-separated relative paths.
func readTree(root string) (map[string]fileRec, error) {
	out := map[string]fileRec{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if rel == ".sync" {
			return filepath.SkipDir
		}
		if d.IsDir() {
			out[rel] = fileRec{dir: true}
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = fileRec{size: int64(len(b)), hash: hash(b)}
		return nil
	})
	return out, err
}

// diffTrees lists (at most limit) paths where b differs from a.
func diffTrees(aName string, a map[string]fileRec, bName string, b map[string]fileRec, limit int) (n int, lines []string) {
	var paths []string
	for p := range a {
		paths = append(paths, p)
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	for _, p := range paths {
		fa, oka := a[p]
		fb, okb := b[p]
		if oka == okb && fa == fb {
			continue
		}
		n++
		if len(lines) < limit {
			show := func(f fileRec, ok bool) string {
				if !ok {
					return "missing"
				}
				return f.String()
			}
			lines = append(lines, fmt.Sprintf("%s: %s has %s, %s has %s", p, aName, show(fa, oka), bName, show(fb, okb)))
		}
	}
	return n, lines
}

// lossReport is the outcome of checking one node's final tree against the model.
type lossReport struct {
	certain, uncertain, hot int
	lost                    []string // acknowledged content missing or different
	resurrected             []string // acknowledged delete, yet present
	invalid                 []string // uncertain key holding none of its allowed states
	hotBad                  []string // hot key missing or holding a value never written
	hotUnacked              int      // hot keys whose final value's write was not acknowledged
	unexpected              []string // files the model does not know
	uncertainAbsent         int      // uncertain keys that ended absent
}

// checkTree checks tree (one node's final database) against the model.
func (m *model) checkTree(nodeName string, tree map[string]fileRec, kills []killEvent) lossReport {
	m.mu.Lock()
	defer m.mu.Unlock()
	var r lossReport
	got := func(p string) string {
		f, ok := tree[p]
		switch {
		case !ok:
			return absent
		case f.dir:
			return "(a directory)"
		default:
			return f.hash
		}
	}
	paths := make([]string, 0, len(m.keys))
	for p := range m.keys {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		ks := m.keys[p]
		g := got(p)
		if ks.certain {
			r.certain++
			want := ks.want[0]
			switch {
			case g == want:
			case want == absent:
				r.resurrected = append(r.resurrected, fmt.Sprintf("%s: deleted on %s at %s, present on %s (%s)%s",
					p, ks.node, ks.ackedAt.Format("15:04:05.000"), nodeName, tree[p], killsAfter(kills, ks.node, ks.ackedAt)))
			default:
				what := "missing"
				if g != absent {
					what = "holds " + tree[p].String()
				}
				r.lost = append(r.lost, fmt.Sprintf("%s: acknowledged on %s at %s with %s, %s on %s%s",
					p, ks.node, ks.ackedAt.Format("15:04:05.000"), want, what, nodeName, killsAfter(kills, ks.node, ks.ackedAt)))
			}
			continue
		}
		r.uncertain++
		if !slices.Contains(ks.want, g) {
			r.invalid = append(r.invalid, fmt.Sprintf("%s: %s holds %s, allowed %q", p, nodeName, g, ks.want))
		} else if g == absent {
			r.uncertainAbsent++
		}
	}
	for p, hs := range m.hot {
		r.hot++
		g := got(p)
		switch {
		case g == absent && len(hs.acked) == 0:
		case !hs.attempted[g]:
			r.hotBad = append(r.hotBad, fmt.Sprintf("%s: %s holds %s, not a value any writer wrote", p, nodeName, g))
		case !hs.acked[g]:
			r.hotUnacked++
		}
	}
	for p, f := range tree {
		if f.dir {
			continue
		}
		if _, ok := m.keys[p]; ok {
			continue
		}
		if _, ok := m.hot[p]; ok {
			continue
		}
		r.unexpected = append(r.unexpected, fmt.Sprintf("%s on %s (%s)", p, nodeName, f))
	}
	sort.Strings(r.unexpected)
	return r
}

// killsAfter describes the stops of node that followed t within a minute, to
// tell a loss across a kill from one without.
func killsAfter(kills []killEvent, node string, t time.Time) string {
	var s []string
	for _, k := range kills {
		if k.node == node && k.at.After(t) && k.at.Sub(t) < time.Minute {
			s = append(s, fmt.Sprintf("%v %v later", k.signal, k.at.Sub(t).Round(time.Millisecond)))
		}
	}
	if len(s) == 0 {
		return ""
	}
	return "; " + node + " was stopped " + strings.Join(s, ", ")
}

// conflictsOf lists db's conflicts on n (unresolved, or all), sorted.
func conflictsOf(ctx context.Context, n *node, db string, all bool) ([]string, error) {
	args := []string{"conflicts", "--json", db}
	if all {
		args = []string{"conflicts", "--all", "--json", db}
	}
	out, err := n.cli(ctx, time.Minute, args...)
	if err != nil {
		return nil, err
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("node %s: eidefs conflicts --json: %w", n.name, err)
	}
	var s []string
	for _, c := range list {
		s = append(s, fmt.Sprintf("%v %v %v", c["key"], c["loser"], c["winner"]))
	}
	sort.Strings(s)
	return s, nil
}

// logScan counts the notable lines in a node's log (all its lifetimes).
type logScan struct {
	warn, errors int
	panics       []string // panic, fatal error, data race
	errLines     []string // the first few level=ERROR lines
	warnKinds    map[string]int
}

func scanLog(path string) (logScan, error) {
	s := logScan{warnKinds: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		return s, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") || strings.Contains(line, "DATA RACE"):
			s.panics = append(s.panics, line)
		case strings.Contains(line, "level=ERROR"):
			s.errors++
			if len(s.errLines) < 5 {
				s.errLines = append(s.errLines, line)
			}
		case strings.Contains(line, "level=WARN"):
			s.warn++
			s.warnKinds[logMsg(line)]++
		}
	}
	return s, sc.Err()
}

// logMsg is the msg= field of a slog text line.
func logMsg(line string) string {
	_, rest, ok := strings.Cut(line, " msg=")
	if !ok {
		return "?"
	}
	if strings.HasPrefix(rest, `"`) {
		if end := strings.Index(rest[1:], `"`); end >= 0 {
			return rest[1 : end+1]
		}
	}
	msg, _, _ := strings.Cut(rest, " ")
	return msg
}

// trend summarises one process lifetime's samples after a warm-up: medians of the
// first and the last fifth, and the least-squares slope of RSS.
type trend struct {
	node        string
	lifetime    int
	samples     int // all samples of the lifetime
	used        int // after the warm-up
	span        time.Duration
	first, last sample // medians per field of the first and last window
	peakRSS     float64
	rssSlope    float64 // MiB per minute
	enough      bool    // enough samples to judge
}

// trends groups samples by node and lifetime.
func trends(samples []sample, warmup time.Duration, minSamples int) []trend {
	type key struct {
		node     string
		lifetime int
	}
	groups := map[key][]sample{}
	var keys []key
	for _, s := range samples {
		k := key{s.node, s.lifetime}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], s)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].node != keys[j].node {
			return keys[i].node < keys[j].node
		}
		return keys[i].lifetime < keys[j].lifetime
	})
	var out []trend
	for _, k := range keys {
		g := groups[k]
		t := trend{node: k.node, lifetime: k.lifetime, samples: len(g), span: g[len(g)-1].at.Sub(g[0].at)}
		for _, s := range g {
			t.peakRSS = math.Max(t.peakRSS, s.rss)
		}
		var used []sample
		for _, s := range g {
			if s.at.Sub(g[0].at) >= warmup {
				used = append(used, s)
			}
		}
		t.used = len(used)
		w := max(1, len(used)/5)
		if len(used) >= 2 {
			t.first, t.last = medianSample(used[:w]), medianSample(used[len(used)-w:])
			t.rssSlope = slope(used)
		}
		t.enough = len(used) >= minSamples
		out = append(out, t)
	}
	return out
}

// medianSample is the per-field median of ss.
func medianSample(ss []sample) sample {
	med := func(f func(sample) float64) float64 {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = f(s)
		}
		sort.Float64s(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return sample{
		at:         ss[len(ss)/2].at,
		rss:        med(func(s sample) float64 { return s.rss }),
		heap:       med(func(s sample) float64 { return s.heap }),
		goroutines: med(func(s sample) float64 { return s.goroutines }),
		fds:        med(func(s sample) float64 { return s.fds }),
		tables:     med(func(s sample) float64 { return s.tables }),
		entries:    int(med(func(s sample) float64 { return float64(s.entries) })),
	}
}

// slope is the least-squares slope of RSS over time, in MiB per minute.
func slope(ss []sample) float64 {
	var sx, sy, sxx, sxy float64
	t0 := ss[0].at
	for _, s := range ss {
		x := s.at.Sub(t0).Minutes()
		y := s.rss / (1 << 20)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	n := float64(len(ss))
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}
