package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// report is what the checks found, printed as markdown.
type report struct {
	cfg       *config
	load      *load
	keep      map[string]bool
	started   time.Time
	loadTook  time.Duration
	loadStart string
	loadEnd   string

	converged   time.Duration // after the load stopped; 0 with convergeErr
	convergeErr error
	diag        []string // peer lists when convergence failed
	idleStart   []sample // after setup, before the load
	idleEnd     []sample // after convergence
	trees       map[string]map[string]fileRec
	treeDiffs   int
	diffLines   []string
	loss        map[string]lossReport
	conflicts   map[string][2]int // unresolved, all
	logs        map[string]logScan
	trends      []trend
	verdicts    []string
	finalStops  map[string]stopResult
	failures    []string
}

func (r *report) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.failures = append(r.failures, msg)
	logf("FAIL: %s", msg)
}

// check runs the end-of-run checks on the stopped load.
func (r *report) check(ctx context.Context, c *cluster) {
	l := r.load
	for _, n := range c.nodes {
		if n.running() {
			continue
		}
		r.fail("node %s was not running when the load stopped", n.name)
		if err := n.start(time.Minute); err != nil {
			r.fail("node %s: restart for the checks: %v", n.name, err)
			return
		}
	}
	logf("waiting up to %v for the same tips on all nodes", r.cfg.converge)
	r.converged, r.convergeErr = waitConverged(ctx, c.nodes, db, r.cfg.converge)
	if r.convergeErr != nil {
		r.fail("no convergence: %v", r.convergeErr)
		for _, n := range c.nodes {
			out, err := n.cli(ctx, time.Minute, "peer", "list")
			if err != nil {
				out = err.Error()
			}
			r.diag = append(r.diag, "peers of "+n.name+":\n"+out)
		}
	} else {
		logf("converged %v after the load stopped", r.converged.Round(time.Millisecond))
	}
	for _, n := range c.nodes {
		if s, err := l.sampleNode(n); err == nil {
			r.idleEnd = append(r.idleEnd, s)
		} else {
			r.fail("node %s: final sample: %v", n.name, err)
		}
	}

	r.trees = map[string]map[string]fileRec{}
	for _, n := range c.nodes {
		t, err := readTree(n.path(db, ""))
		if err != nil {
			r.fail("node %s: reading the final tree: %v", n.name, err)
			continue
		}
		r.trees[n.name] = t
	}
	if ta, ok := r.trees["a"]; ok {
		for _, n := range c.nodes[1:] {
			if tn, ok := r.trees[n.name]; ok {
				nd, lines := diffTrees("a", ta, n.name, tn, 10)
				r.treeDiffs += nd
				r.diffLines = append(r.diffLines, lines...)
			}
		}
	}
	if r.treeDiffs > 0 {
		r.fail("the final trees differ in %d paths", r.treeDiffs)
	}

	l.mu.Lock()
	kills := slices.Clone(l.kills)
	l.mu.Unlock()
	r.loss = map[string]lossReport{}
	for _, n := range c.nodes {
		if t, ok := r.trees[n.name]; ok {
			lr := l.model.checkTree(n.name, t, kills)
			r.loss[n.name] = lr
			for _, x := range []struct {
				what string
				list []string
			}{{"acknowledged writes lost", lr.lost}, {"acknowledged deletes undone", lr.resurrected},
				{"keys in a state no operation produced", lr.invalid}, {"hot keys with a wrong value", lr.hotBad},
				{"files no writer wrote", lr.unexpected}} {
				if len(x.list) > 0 {
					r.fail("node %s: %d %s; first: %s", n.name, len(x.list), x.what, strings.Join(x.list[:min(5, len(x.list))], "; "))
				}
			}
		}
	}

	r.conflicts = map[string][2]int{}
	var firstAll []string
	for i, n := range c.nodes {
		open, err1 := conflictsOf(ctx, n, db, false)
		all, err2 := conflictsOf(ctx, n, db, true)
		if err1 != nil || err2 != nil {
			r.fail("conflicts on %s: %v %v", n.name, err1, err2)
			continue
		}
		r.conflicts[n.name] = [2]int{len(open), len(all)}
		if i == 0 {
			firstAll = all
		} else if !slices.Equal(all, firstAll) {
			r.fail("eidefs conflicts --all on %s lists %d conflicts, on a %d: the lists differ", n.name, len(all), len(firstAll))
		}
	}

	r.logs = map[string]logScan{}
	for _, n := range c.nodes {
		s, err := scanLog(n.logPath)
		if err != nil {
			r.fail("node %s: reading its log: %v", n.name, err)
		}
		r.logs[n.name] = s
		if len(s.panics) > 0 {
			r.fail("node %s logged %d panics or fatal errors; first: %s", n.name, len(s.panics), s.panics[0])
		}
	}

	r.judgeMemory()
	if n := l.faults.total(); n > 0 {
		r.fail("%d faults during the load (see Faults)", n)
	}
}

// judgeMemory compares, for the nodes never stopped, the first and last fifth of
// their samples after a warm-up, and their idle figures before and after the load.
func (r *report) judgeMemory() {
	l := r.load
	l.mu.Lock()
	samples := slices.Clone(l.samples)
	l.mu.Unlock()
	warmup := max(time.Minute, r.loadTook/10)
	r.trends = trends(samples, warmup, 10)
	countOK := func(first, last float64) bool { return last <= first*r.cfg.maxCountGrowth+10 }
	for _, t := range r.trends {
		if !r.keep[t.node] {
			continue
		}
		if !t.enough {
			r.verdicts = append(r.verdicts, fmt.Sprintf("%s: not judged: %d samples after the %v warm-up (10 needed)", t.node, t.used, warmup))
			continue
		}
		// RSS grows with what the node holds (entries ×5 in a 10-minute run, a
		// known inode per file): flat is within the ratio, or within a growth per
		// entry the database grew by.
		grown := max(t.last.entries-t.first.entries, 1)
		perEntry := (t.last.rss - t.first.rss) / float64(grown)
		rssOK := t.last.rss <= t.first.rss*r.cfg.maxRSSGrowth || perEntry <= r.cfg.maxRSSPerEntry
		gOK := countOK(t.first.goroutines, t.last.goroutines)
		fOK := countOK(t.first.fds, t.last.fds)
		v := fmt.Sprintf("%s: RSS %s → %s MiB (×%.2f, bound ×%.2f; %.1f KiB per entry added, bound %.1f), goroutines %.0f → %.0f, open files other than tables %.0f → %.0f (bound ×%.2f+10), while entries grew %d → %d and open table files %.0f → %.0f",
			t.node, mib(t.first.rss), mib(t.last.rss), t.last.rss/t.first.rss, r.cfg.maxRSSGrowth, perEntry/1024, r.cfg.maxRSSPerEntry/1024,
			t.first.goroutines, t.last.goroutines, t.first.fds, t.last.fds, r.cfg.maxCountGrowth, t.first.entries, t.last.entries, t.first.tables, t.last.tables)
		if rssOK && gOK && fOK {
			r.verdicts = append(r.verdicts, v+": flat")
		} else {
			r.verdicts = append(r.verdicts, v+": NOT flat")
			r.fail("node %s: memory, goroutines or open files not flat: %s", t.node, v)
		}
	}
	for _, s0 := range r.idleStart {
		if !r.keep[s0.node] {
			continue
		}
		for _, s1 := range r.idleEnd {
			if s1.node != s0.node || s1.lifetime != s0.lifetime {
				continue
			}
			v := fmt.Sprintf("%s idle, before the load → after convergence: goroutines %.0f → %.0f, open files other than tables %.0f → %.0f (table files %.0f → %.0f)",
				s0.node, s0.goroutines, s1.goroutines, s0.fds, s1.fds, s0.tables, s1.tables)
			if countOK(s0.goroutines, s1.goroutines) && countOK(s0.fds, s1.fds) {
				r.verdicts = append(r.verdicts, v+": back to the baseline")
			} else {
				r.verdicts = append(r.verdicts, v+": NOT back to the baseline")
				r.fail("node %s: %s", s0.node, v)
			}
		}
	}
}

func mib(b float64) string { return fmt.Sprintf("%.1f", b/(1<<20)) }

// print writes the report as markdown.
func (r *report) print(w io.Writer) {
	l, cfg := r.load, r.cfg
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(w, "# eidefs soak %s\n\n", r.started.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "- machine: %d CPUs, Linux %s, %s; load average %s at the start, %s at the end\n",
		runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version(), r.loadStart, r.loadEnd)
	var kept []string
	for _, n := range l.nodes {
		if r.keep[n.name] {
			kept = append(kept, n.name)
		}
	}
	fmt.Fprintf(w, "- nodes a, b, c (`eidefs mount`), passthrough_writes=%v, [sync] periodic=%s retry=%s retry_cap=%s health=%s; never stopped: %s\n",
		cfg.passWrites, cfg.syncConf["periodic"], cfg.syncConf["retry"], cfg.syncConf["retry_cap"], cfg.syncConf["health"], strings.Join(kept, ","))
	fmt.Fprintf(w, "- load: %d writers and %d readers per node (mean pause %v / %v), stops every %v–%v (SIGTERM %.0f%%), down %v–%v, eidefs sync every %v–%v; seed %d\n\n",
		cfg.writers, cfg.readers, cfg.pace, cfg.readPace, cfg.killMin, cfg.killMax, 100*cfg.termRate, cfg.downMin, cfg.downMax, cfg.syncMin, cfg.syncMax, cfg.seed)

	st := l.stats
	st.mu.Lock()
	l.mu.Lock()
	fmt.Fprintln(w, "| figure | value |")
	fmt.Fprintln(w, "|---|---|")
	row := func(k, format string, args ...any) { fmt.Fprintf(w, "| %s | %s |\n", k, fmt.Sprintf(format, args...)) }
	row("load duration", "%v", r.loadTook.Round(time.Second))
	row("writes acknowledged", "%d (%s)", sum(st.acked), perKind(st.acked))
	row("writes failed while their node was being stopped (not acknowledged)", "%d (%s)", sum(st.failedStop), perKind(st.failedStop))
	row("write errors on a live node", "%d", sum(st.failedLive))
	row("reader operations", "%d (%s); unique keys not yet on another node: %d", sum(st.reads), perKind(st.reads), st.readMisses)
	sig := map[syscall.Signal]int{}
	var restarts []time.Duration
	hit := 0
	for _, k := range l.kills {
		sig[k.signal]++
		if k.inflight > 0 {
			hit++
		}
		if k.err == nil {
			restarts = append(restarts, k.restart)
		}
	}
	row("node stops / restarts", "%d (SIGKILL %d, SIGTERM %d; %d with writes under way) / %d, restart to live mount median %v, max %v",
		len(l.kills), sig[syscall.SIGKILL], sig[syscall.SIGTERM], hit, len(restarts), medianDur(restarts), maxDur(restarts))
	okSyncs, failedSyncs, failedAllUp := 0, 0, 0
	for _, s := range l.syncs {
		switch {
		case s.err == nil:
			okSyncs++
		case s.allUp:
			failedAllUp++
		default:
			failedSyncs++
		}
	}
	row("eidefs sync runs", "%d ok, %d failed with a node down, %d failed with all nodes up", okSyncs, failedSyncs, failedAllUp)
	st.mu.Unlock()
	l.mu.Unlock()
	if r.convergeErr == nil {
		row("convergence after the load stopped", "%v", r.converged.Round(time.Millisecond))
	} else {
		row("convergence after the load stopped", "NONE within %v", cfg.converge)
	}
	var ent []string
	for _, s := range r.idleEnd {
		ent = append(ent, fmt.Sprintf("%s %d", s.node, s.entries))
	}
	row("entries in the database", "%s", strings.Join(ent, ", "))
	if t, ok := r.trees["a"]; ok {
		files, dirs, size := 0, 0, int64(0)
		for _, f := range t {
			if f.dir {
				dirs++
			} else {
				files++
				size += f.size
			}
		}
		row("final tree (a)", "%d files, %d directories, %.1f MiB", files, dirs, float64(size)/(1<<20))
	}
	row("paths where the trees of b or c differ from a's", "%d", r.treeDiffs)
	var conf []string
	for _, n := range l.nodes {
		if c, ok := r.conflicts[n.name]; ok {
			conf = append(conf, fmt.Sprintf("%s %d/%d", n.name, c[0], c[1]))
		}
	}
	row("conflicts (unresolved/all)", "%s", strings.Join(conf, ", "))
	for _, n := range l.nodes {
		lr, ok := r.loss[n.name]
		if !ok {
			continue
		}
		row("keys checked on "+n.name, "%d with an acknowledged last operation, %d uncertain (%d of them ended absent), %d hot (%d hold a value whose write was not acknowledged)",
			lr.certain, lr.uncertain, lr.uncertainAbsent, lr.hot, lr.hotUnacked)
		row("lost on "+n.name, "**%d** (undone deletes %d, impossible states %d, wrong hot values %d, unknown files %d)",
			len(lr.lost), len(lr.resurrected), len(lr.invalid), len(lr.hotBad), len(lr.unexpected))
	}
	row("faults during the load", "%d", l.faults.total())
	fmt.Fprintln(w)

	fmt.Fprintln(w, "## Memory, goroutines, open files (per process lifetime)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Medians of the first and last fifth of the samples after the warm-up; slope: least-squares RSS trend.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| node | start # | samples | span | RSS MiB first → last | RSS slope MiB/min | peak RSS MiB | heap MiB first → last | goroutines | open files (not tables) | open table files | entries |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---|---:|---:|---|---|---|---|---|")
	for _, t := range r.trends {
		if t.used < 2 {
			fmt.Fprintf(w, "| %s | %d | %d | %v | — | — | %s | — | — | — | — | — |\n", t.node, t.lifetime, t.samples, t.span.Round(time.Second), mib(t.peakRSS))
			continue
		}
		fmt.Fprintf(w, "| %s | %d | %d | %v | %s → %s | %+.2f | %s | %s → %s | %.0f → %.0f | %.0f → %.0f | %.0f → %.0f | %d → %d |\n",
			t.node, t.lifetime, t.samples, t.span.Round(time.Second), mib(t.first.rss), mib(t.last.rss), t.rssSlope, mib(t.peakRSS),
			mib(t.first.heap), mib(t.last.heap), t.first.goroutines, t.last.goroutines, t.first.fds, t.last.fds, t.first.tables, t.last.tables,
			t.first.entries, t.last.entries)
	}
	fmt.Fprintln(w)
	for _, v := range r.verdicts {
		fmt.Fprintf(w, "- %s\n", v)
	}
	fmt.Fprintln(w)

	l.mu.Lock()
	if len(l.kills) > 0 {
		fmt.Fprintln(w, "## Stops")
		fmt.Fprintln(w)
		for _, k := range l.kills {
			line := fmt.Sprintf("- +%v %s %v (%d writes under way): exited in %v, down %v, restarted in %v",
				k.at.Sub(r.started).Round(time.Second), k.node, k.signal, k.inflight, k.stop.took.Round(time.Millisecond),
				k.down.Round(100*time.Millisecond), k.restart.Round(time.Millisecond))
			if k.signal == syscall.SIGTERM && k.stop.exitErr != nil {
				line += fmt.Sprintf(" (exit: %v)", k.stop.exitErr)
			}
			if k.stop.hung {
				line += " — HUNG after SIGKILL until its FUSE connection was aborted"
			}
			if k.err != nil {
				line += fmt.Sprintf(" RESTART FAILED: %v", k.err)
			}
			fmt.Fprintln(w, line)
		}
		fmt.Fprintln(w)
	}
	var syncErrs []string
	for _, s := range l.syncs {
		if s.err != nil && len(syncErrs) < 5 {
			msg := strings.ReplaceAll(s.err.Error(), "\n", "; ")
			syncErrs = append(syncErrs, fmt.Sprintf("- +%v on %s (all nodes up: %v): %s", s.at.Sub(r.started).Round(time.Second), s.node, s.allUp, msg))
		}
	}
	l.mu.Unlock()
	if len(syncErrs) > 0 {
		fmt.Fprintln(w, "## Failed eidefs sync runs (first 5)")
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.Join(syncErrs, "\n"))
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "## Node logs (level warn)")
	fmt.Fprintln(w)
	for _, n := range l.nodes {
		s := r.logs[n.name]
		fmt.Fprintf(w, "- %s: %d warnings (%s), %d errors, %d panics\n", n.name, s.warn, perKind(s.warnKinds), s.errors, len(s.panics))
		for _, e := range s.errLines {
			fmt.Fprintf(w, "  - `%s`\n", truncate(e, 300))
		}
	}
	fmt.Fprintln(w)

	f := l.faults
	f.mu.Lock()
	if len(f.counts) > 0 {
		fmt.Fprintln(w, "## Faults")
		fmt.Fprintln(w)
		for _, kind := range sortedKeys(f.counts) {
			fmt.Fprintf(w, "- %s: %d\n", kind, f.counts[kind])
			for _, m := range f.msgs[kind] {
				fmt.Fprintf(w, "  - %s\n", strings.ReplaceAll(truncate(m, 1500), "\n", "\n    "))
			}
		}
		fmt.Fprintln(w)
	}
	f.mu.Unlock()
	if len(r.diffLines) > 0 || len(r.diag) > 0 {
		fmt.Fprintln(w, "## Differences")
		fmt.Fprintln(w)
		for _, d := range r.diffLines {
			fmt.Fprintf(w, "- %s\n", d)
		}
		for _, d := range r.diag {
			fmt.Fprintf(w, "\n```\n%s\n```\n", d)
		}
		fmt.Fprintln(w)
	}
	if len(r.failures) == 0 {
		fmt.Fprintln(w, "RESULT: PASS")
		return
	}
	fmt.Fprintln(w, "## Failures")
	fmt.Fprintln(w)
	for _, m := range r.failures {
		fmt.Fprintf(w, "- %s\n", truncate(m, 2000))
	}
	fmt.Fprintf(w, "\nRESULT: FAIL (%d)\n", len(r.failures))
}

func sortedKeys(m map[string]int) []string {
	k := make([]string, 0, len(m))
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

// perKind is "k1 n1, k2 n2" in key order.
func perKind(m map[string]int) string {
	var s []string
	for _, k := range sortedKeys(m) {
		s = append(s, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func medianDur(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

func maxDur(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return slices.Max(d).Round(time.Millisecond)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
