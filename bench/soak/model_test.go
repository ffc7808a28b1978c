package main

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestCheckTree checks that the final-state check finds each kind of wrong
// outcome and accepts the right ones: a soak whose checker cannot fail proves
// nothing.
func TestCheckTree(t *testing.T) {
	m := newModel()
	v1, v2, v3 := hash([]byte("one")), hash([]byte("two")), hash([]byte("three"))
	m.acked("b", "new", "s/b1/u/000001", v1, true) // present, right content
	m.acked("b", "new", "s/b1/u/000002", v1, true) // missing
	m.acked("b", "new", "s/b1/u/000003", v1, true) // other content
	m.acked("b", "create", "s/b1/del/000004", v1, false)
	m.acked("b", "delete", "s/b1/del/000004", absent, false) // deleted, yet present
	m.acked("b", "create", "s/b1/del/000005", v1, false)
	m.failed("b", "s/b1/del/000005", absent) // uncertain delete: either is fine
	m.failed("b", "s/b1/u/000006", v2)       // uncertain write: absent or v2
	m.failed("b", "s/b1/u/000007", v2)       // uncertain write, holding v3: impossible
	m.expectAbsent("b", "s/b1/ren/sed000008")
	m.hotAttempt("s/hot/h00", v1, []byte("one"))
	m.hotAcked("a", "s/hot/h00", v1)
	m.hotAttempt("s/hot/h00", v2, []byte("two")) // never acknowledged
	m.hotAttempt("s/hot/h01", v1, []byte("one"))
	m.hotAcked("c", "s/hot/h01", v1)

	file := func(h string) fileRec { return fileRec{size: 3, hash: h} }
	tree := map[string]fileRec{
		"s":               {dir: true},
		"s/b1/u/000001":   file(v1),
		"s/b1/u/000003":   file(v2),
		"s/b1/del/000004": file(v1),
		"s/b1/del/000005": file(v1),
		"s/b1/u/000007":   file(v3),
		"s/hot/h00":       file(v2),
		"s/hot/h01":       file(v3),
		"s/b1/u/stray":    file(v1),
	}
	kills := []killEvent{{at: time.Now().Add(time.Second), node: "b"}}
	r := m.checkTree("c", tree, kills)

	if r.certain != 5 || r.uncertain != 3 || r.hot != 2 {
		t.Errorf("certain %d, uncertain %d, hot %d; want 5, 3, 2", r.certain, r.uncertain, r.hot)
	}
	expectPaths(t, "lost", r.lost, "s/b1/u/000002", "s/b1/u/000003")
	expectPaths(t, "resurrected", r.resurrected, "s/b1/del/000004")
	expectPaths(t, "invalid", r.invalid, "s/b1/u/000007")
	expectPaths(t, "hotBad", r.hotBad, "s/hot/h01")
	expectPaths(t, "unexpected", r.unexpected, "s/b1/u/stray")
	if r.hotUnacked != 1 {
		t.Errorf("hotUnacked = %d, want 1 (h00 holds a value whose write was not acknowledged)", r.hotUnacked)
	}
	if r.uncertainAbsent != 1 {
		t.Errorf("uncertainAbsent = %d, want 1 (000006)", r.uncertainAbsent)
	}
	if !strings.Contains(r.lost[0], "b was stopped") {
		t.Errorf("lost entry %q does not name the stop of b that followed the write", r.lost[0])
	}
}

func expectPaths(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d entries %q, want %d (%q)", what, len(got), got, len(want), want)
		return
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w+" ") && !strings.HasPrefix(got[i], w+":") {
			t.Errorf("%s[%d] = %q, want it about %s", what, i, got[i], w)
		}
	}
}

// TestExplainHot checks the description of a torn read: a value cut short to the
// length of another.
func TestExplainHot(t *testing.T) {
	m := newModel()
	short := []byte("a1 s/hot/h00 1 0\nxx")
	long := []byte("b2 s/hot/h00 2 0\n" + strings.Repeat("y", 40))
	m.hotAttempt("s/hot/h00", hash(short), short)
	m.hotAttempt("s/hot/h00", hash(long), long)
	got := m.explainHot("s/hot/h00", long[:len(short)])
	for _, want := range []string{"the read is that value cut short", "has exactly the length read", hash(short)} {
		if !strings.Contains(got, want) {
			t.Errorf("explainHot = %q, want it to contain %q", got, want)
		}
	}
}

// TestTrends checks the per-lifetime summary: warm-up skipped, medians of the
// first and last fifth, lifetimes apart.
func TestTrends(t *testing.T) {
	t0 := time.Now()
	var ss []sample
	for i := range 30 {
		ss = append(ss, sample{at: t0.Add(time.Duration(i) * 10 * time.Second), node: "a", lifetime: 1,
			rss: float64(100+i) * (1 << 20), goroutines: 40, fds: 20, entries: i})
	}
	ss = append(ss, sample{at: t0, node: "b", lifetime: 2, rss: 1 << 20})
	tr := trends(ss, time.Minute, 10)
	if len(tr) != 2 || tr[0].node != "a" || tr[1].node != "b" {
		t.Fatalf("trends: %+v, want a/1 and b/2", tr)
	}
	a := tr[0]
	// Samples 6..29 remain (24); a fifth is 4: medians of 6..9 and 26..29.
	if a.used != 24 || !a.enough {
		t.Errorf("used %d, enough %v; want 24, true", a.used, a.enough)
	}
	if got := a.first.rss / (1 << 20); got != 107.5 {
		t.Errorf("first RSS median %.1f MiB, want 107.5", got)
	}
	if got := a.last.rss / (1 << 20); got != 127.5 {
		t.Errorf("last RSS median %.1f MiB, want 127.5", got)
	}
	if a.rssSlope < 5.9 || a.rssSlope > 6.1 {
		t.Errorf("RSS slope %.2f MiB/min, want 6 (1 MiB per 10 s)", a.rssSlope)
	}
	if tr[1].enough {
		t.Errorf("b with 1 sample: enough = true")
	}
}

// TestDiffTrees checks that a missing file and a different content are both found.
func TestDiffTrees(t *testing.T) {
	a := map[string]fileRec{"x": {size: 1, hash: "h1"}, "y": {size: 1, hash: "h1"}, "d": {dir: true}}
	b := map[string]fileRec{"x": {size: 1, hash: "h2"}, "d": {dir: true}, "z": {size: 2, hash: "h3"}}
	n, lines := diffTrees("a", a, "b", b, 10)
	if n != 3 || len(lines) != 3 {
		t.Fatalf("diffTrees: %d differences %q, want 3 (x differs, y and z missing on one side)", n, lines)
	}
	if n, _ := diffTrees("a", a, "a2", a, 10); n != 0 {
		t.Errorf("a tree differs from itself in %d paths", n)
	}
}

// TestStuckStacks checks the description of a process's threads that stop
// records when a node outlives SIGKILL.
func TestStuckStacks(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	got := stuckStacks(cmd.Process.Pid)
	if want := fmt.Sprintf("node thread %d (", cmd.Process.Pid); !strings.Contains(got, want) {
		t.Errorf("stuckStacks = %q, want a line for %s…", got, want)
	}
}
