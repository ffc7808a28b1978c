package integration

// Abuse: several processes hammer one mount with random file operations on a small
// set of names while a peer writes and deletes the same keys, then every view of
// the database must agree.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Environment of a TestAbuseWorker process. Without abuseEnvRoot the worker test
// does nothing, so it passes in an ordinary `go test` run.
const (
	abuseEnvRoot     = "EIDEFS_ABUSE_ROOT"     // directory (a store in a mount) the worker works in
	abuseEnvRole     = "EIDEFS_ABUSE_ROLE"     // "local" or "peer"
	abuseEnvWorker   = "EIDEFS_ABUSE_WORKER"   // worker number, part of its random stream and data
	abuseEnvSeed     = "EIDEFS_ABUSE_SEED"     // the run's seed (also how a user overrides it)
	abuseEnvDuration = "EIDEFS_ABUSE_DURATION" // how long the workers run (a Go duration)
	abuseEnvData     = "EIDEFS_ABUSE_DATA"     // peer role: the node's data directory, for eidefs set/rm
)

const (
	abuseDefaultSeed     = 1
	abuseDefaultDuration = 12 * time.Second
	abuseLocalWorkers    = 4                // processes on A's mount
	abuseStall           = 20 * time.Second // a worker silent this long is stuck: a deadlock
	abuseMaxBad          = 40               // unexpected outcomes a worker lists in full
)

// The key space: few names, so that operations of different processes collide all
// the time, and directories that are made, removed and renamed under the files.
var (
	abuseDirs  = []string{"d0", "d1", "d2", "d1/e"}
	abuseNames = []string{"f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"}
)

// abuseReport is what a worker prints at its end (one line "report JSON").
type abuseReport struct {
	Ops     int            `json:"ops"`
	Results map[string]int `json:"results"` // "op outcome" (ok or an errno name) → count
	Bad     []string       `json:"bad"`     // unexpected outcomes, the first abuseMaxBad
	BadN    int            `json:"bad_count"`
	Dead    bool           `json:"dead"` // the mount stopped answering (ENOTCONN)
}

// TestAbuse promises that the filesystem survives abuse: abuseLocalWorkers
// processes run random operations (create, overwrite, append, truncate, read,
// stat, readdir, rename of files and directories, unlink, mkdir, rmdir, rm -r,
// fsync, sed -i, descriptors held while the file is renamed or unlinked) on one
// store of A's mount while a process on B's mount writes, deletes and renames the
// same keys, partly through the CLI, so remote changes invalidate A's kernel
// caches in the middle of local operations. Errnos that concurrent namespace
// changes explain (ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR) are fine; EIO, any
// error on a descriptor a worker holds, a dead mount, a crash or a worker making
// no progress for abuseStall (a deadlock: the nodes' goroutines are dumped) fail.
// Afterwards, once A and B have the same tips, A's mount, B's mount and both
// engines (read through the CLI, without a mount) must hold the same tree, both
// nodes must list the same conflicts, and A's tree must survive a remount. The
// kernel caches of both mounts last a minute, so a missed invalidation shows as
// a difference instead of healing after the default second.
//
// The seed (logged) fixes every worker's operations; the interleaving still
// varies between runs. Reproduce with EIDEFS_ABUSE_SEED=N, and run longer with
// EIDEFS_ABUSE_DURATION=1m.
func TestAbuse(t *testing.T) {
	requireTools(t, "sed")
	seed, dur := abuseSettings(t)
	t.Logf("seed %d, workers run %v (reproduce: EIDEFS_ABUSE_SEED=%d go test ./integration -run 'TestAbuse$' -v)", seed, dur, seed)
	start := time.Now()

	a := newSyncNode(t, "a", syncOpts{Periodic: "2s"})
	b := newSyncNode(t, "b", syncOpts{Periodic: "2s"})
	// Kernel caches that outlive the test: a missed invalidation then shows as a
	// mount that differs from its engine, instead of healing after a second.
	setKernelCache(t, a, "1m")
	setKernelCache(t, b, "1m")
	rootA := newStore(t, a.Mount, "abuse", "s")
	for _, d := range abuseDirs {
		if err := os.Mkdir(filepath.Join(rootA, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(rootA, "f0"), "a first file\n")
	join(t, b, share(t, a, "abuse", "--write"))
	rootB := b.Path("abuse", "s")
	expectContent(t, filepath.Join(rootB, "f0"), "a first file\n")
	setup := time.Since(start)

	var procs []*abuseProc
	for i := 1; i <= abuseLocalWorkers; i++ {
		procs = append(procs, startAbuseWorker(t, fmt.Sprintf("a%d", i), i, seed, dur, "local", rootA, ""))
	}
	procs = append(procs, startAbuseWorker(t, "b", abuseLocalWorkers+1, seed, dur, "peer", rootB, b.Data))
	abuseMonitor(t, procs, []*syncNode{a, b})
	abuseTime := time.Since(start) - setup

	total := expectGoodReports(t, procs)
	for _, n := range []*syncNode{a, b} {
		if !expectAlive(t, n) {
			t.FailNow()
		}
	}

	// Still responsive both ways.
	writeFile(t, filepath.Join(rootA, "alive-a"), "from a\n")
	writeFile(t, filepath.Join(rootB, "alive-b"), "from b\n")
	waitContent(t, 10*time.Second, filepath.Join(rootB, "alive-a"), "from a\n")
	waitContent(t, 10*time.Second, filepath.Join(rootA, "alive-b"), "from b\n")

	converge := waitSameTips(t, 30*time.Second, "abuse", a, b)
	engineA := engineTree(t, a.Data, "abuse", "s")
	engineB := engineTree(t, b.Data, "abuse", "s")
	expectSameTree(t, engineA, engineB, "engine of A (want) and engine of B (got), at the same tips")
	settleA := expectMountShows(t, a, rootA, engineA)
	settleB := expectMountShows(t, b, rootB, engineB)
	conflicts := expectSameConflicts(t, a, b, "abuse")
	entries := dbEntries(t, a.Data, "abuse")
	tipsBefore := tips(t, a, "abuse")

	a.stop(t)
	a.start(t)
	if got := tips(t, a, "abuse"); !slices.Equal(got, tipsBefore) {
		t.Errorf("A's tips changed across the remount: %s, then %s", shortIDs(tipsBefore), shortIDs(got))
	}
	got, err := readTree(rootA)
	if err != nil {
		t.Fatalf("reading A's tree after the remount: %v", err)
	}
	expectSameTree(t, engineA, withoutLocalOnly(got), "engine of A (want) and A's mount after a remount (got)")

	files, dirs := 0, 0
	for _, fi := range engineA {
		if fi.Dir {
			dirs++
		} else {
			files++
		}
	}
	t.Logf("%d operations by %d processes in %v (setup %v); converged %v later; mounts showed the engines' trees after %v (A) and %v (B); %d entries, %d conflicts; final tree %d files, %d directories; total %v",
		total.Ops, len(procs), abuseTime.Round(time.Millisecond), setup.Round(time.Millisecond), converge.Round(time.Millisecond),
		settleA.Round(time.Millisecond), settleB.Round(time.Millisecond), entries, conflicts, files, dirs, time.Since(start).Round(time.Millisecond))
	t.Logf("outcomes: %s", formatResults(total.Results))
}

// setKernelCache restarts n with [cache] entry_timeout and attr_timeout set to d.
func setKernelCache(t *testing.T, n *syncNode, d string) {
	t.Helper()
	n.stop(t)
	path := filepath.Join(n.Data, "eidefs.toml")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fmt.Fprintf(f, "\n[cache]\nentry_timeout = %q\nattr_timeout = %q\n", d, d)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("writing %s: %v", path, err)
	}
	n.start(t)
}

// abuseSettings reads the seed and duration from the environment (defaults
// otherwise).
func abuseSettings(t *testing.T) (uint64, time.Duration) {
	t.Helper()
	seed, dur := uint64(abuseDefaultSeed), abuseDefaultDuration
	if s := os.Getenv(abuseEnvSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", abuseEnvSeed, s, err)
		}
		seed = v
	}
	if s := os.Getenv(abuseEnvDuration); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s=%q: %v", abuseEnvDuration, s, err)
		}
		dur = v
	}
	return seed, dur
}

// abuseProc is a running TestAbuseWorker process, watched through its output: one
// line per operation before it starts, and the report at the end.
type abuseProc struct {
	name     string
	cmd      *exec.Cmd
	lastSeen atomic.Int64 // unix nanoseconds of the last line
	mu       sync.Mutex
	lastOp   string       // guarded by mu
	report   *abuseReport // guarded by mu; nil until the report line
	other    lockedBuffer // stderr and stdout lines that are neither
	done     chan struct{}
	err      error // exit status, set before done is closed
}

// startAbuseWorker re-runs this test binary as TestAbuseWorker in its own process
// group; it is killed in t.Cleanup if still running.
func startAbuseWorker(t *testing.T, name string, id int, seed uint64, dur time.Duration, role, root, data string) *abuseProc {
	t.Helper()
	p := &abuseProc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^TestAbuseWorker$", "-test.count=1", "-test.timeout="+(dur+2*abuseStall).String())
	p.cmd.Env = testEnv(
		abuseEnvRoot+"="+root, abuseEnvRole+"="+role, abuseEnvWorker+"="+strconv.Itoa(id),
		abuseEnvSeed+"="+strconv.FormatUint(seed, 10), abuseEnvDuration+"="+dur.String(), abuseEnvData+"="+data,
		"EIDEFS_TEST_BINARY="+eidefsBin, // the worker's TestMain must not build eidefs again
	)
	p.cmd.Stderr = &p.other
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting abuse worker %s: %v", name, err)
	}
	p.lastSeen.Store(time.Now().UnixNano())
	go func() {
		p.read(stdout)
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	return p
}

// read consumes the worker's stdout until it closes.
func (p *abuseProc) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		p.lastSeen.Store(time.Now().UnixNano())
		switch {
		case strings.HasPrefix(line, "op "):
			p.mu.Lock()
			p.lastOp = line[len("op "):]
			p.mu.Unlock()
		case strings.HasPrefix(line, "report "):
			var rep abuseReport
			if err := json.Unmarshal([]byte(line[len("report "):]), &rep); err != nil {
				fmt.Fprintf(&p.other, "bad report line %q: %v\n", line, err)
				continue
			}
			p.mu.Lock()
			p.report = &rep
			p.mu.Unlock()
		default:
			fmt.Fprintln(&p.other, line)
		}
	}
	io.Copy(io.Discard, r)
}

func (p *abuseProc) last() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastOp
}

// abuseMonitor waits for every worker to exit. A worker that prints nothing for
// abuseStall is stuck in the filesystem: the test then dumps the goroutines of
// the eidefs processes (SIGQUIT; the harness logs their output on failure) and
// the kernel stacks of the workers, and fails.
func abuseMonitor(t *testing.T, procs []*abuseProc, nodes []*syncNode) {
	t.Helper()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		running := 0
		var stuck []*abuseProc
		for _, p := range procs {
			select {
			case <-p.done:
				continue
			default:
			}
			running++
			if time.Since(time.Unix(0, p.lastSeen.Load())) > abuseStall {
				stuck = append(stuck, p)
			}
		}
		if running == 0 {
			return
		}
		if len(stuck) > 0 {
			for _, p := range stuck {
				t.Errorf("worker %s (pid %d): no progress for %v, stuck in %q (deadlock?); kernel stacks:\n%s",
					p.name, p.cmd.Process.Pid, abuseStall, p.last(), kernelStacks(p.cmd.Process.Pid))
			}
			for _, n := range nodes {
				dumpGoroutines(t, n)
			}
			for _, p := range procs {
				syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			}
			t.FailNow()
		}
		<-tick.C
	}
}

// kernelStacks shows where the threads of pid wait in the kernel (root only),
// leaving out the Go runtime's idle ones (futex, epoll).
func kernelStacks(pid int) string {
	var b strings.Builder
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, task := range tasks {
		st, err := os.ReadFile(filepath.Join(task, "stack"))
		if err != nil {
			continue
		}
		if s := strings.TrimSpace(string(st)); s != "" && !strings.Contains(s, "futex_wait") && !strings.Contains(s, "ep_poll") {
			fmt.Fprintf(&b, "  thread %s:\n    %s\n", filepath.Base(task), strings.ReplaceAll(s, "\n", "\n    "))
		}
	}
	if b.Len() == 0 {
		return "  (none outside futex and epoll waits, or not readable)"
	}
	return b.String()
}

// dumpGoroutines makes n's eidefs process print all its goroutines and exit
// (SIGQUIT), waiting a little for the dump to be written.
func dumpGoroutines(t *testing.T, n *syncNode) {
	t.Helper()
	if n.Mount == nil {
		return
	}
	t.Logf("sending SIGQUIT to eidefs %s (pid %d) for a goroutine dump; it follows in the node's output", n.Name, n.cmd.Process.Pid)
	syscall.Kill(n.cmd.Process.Pid, syscall.SIGQUIT)
	select {
	case <-n.exited:
	case <-time.After(5 * time.Second):
	}
}

// expectGoodReports checks every worker's exit and report, and sums the reports.
func expectGoodReports(t *testing.T, procs []*abuseProc) abuseReport {
	t.Helper()
	total := abuseReport{Results: map[string]int{}}
	for _, p := range procs {
		p.mu.Lock()
		rep := p.report
		p.mu.Unlock()
		if p.err != nil || rep == nil {
			t.Errorf("worker %s: exit %v, report %v; last op %q; output:\n%s", p.name, p.err, rep != nil, p.last(), &p.other)
			continue
		}
		if rep.Dead {
			t.Errorf("worker %s: the mount stopped answering (ENOTCONN)", p.name)
		}
		if rep.BadN > 0 {
			t.Errorf("worker %s: %d unexpected outcomes of %d operations:\n  %s", p.name, rep.BadN, rep.Ops, strings.Join(rep.Bad, "\n  "))
		}
		t.Logf("worker %s: %d operations: %s", p.name, rep.Ops, formatResults(rep.Results))
		total.Ops += rep.Ops
		for k, v := range rep.Results {
			total.Results[k] += v
		}
	}
	return total
}

func formatResults(results map[string]int) string {
	keys := make([]string, 0, len(results))
	for k := range results {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var s []string
	for _, k := range keys {
		s = append(s, fmt.Sprintf("%s %d", k, results[k]))
	}
	return strings.Join(s, ", ")
}

// expectAlive checks that n's process runs, its mount is mounted and answers.
func expectAlive(t *testing.T, n *syncNode) bool {
	t.Helper()
	select {
	case <-n.exited:
		t.Errorf("eidefs %s exited during the abuse: %v", n.Name, n.exitErr)
		return false
	default:
	}
	if !isMounted(n.Dir) {
		t.Errorf("eidefs %s: %s is no longer mounted", n.Name, n.Dir)
		return false
	}
	if _, err := os.ReadFile(n.Path(".sync", "status")); err != nil {
		t.Errorf("eidefs %s: reading .sync/status: %v", n.Name, err)
		return false
	}
	return true
}

// engineTree reads store of db from the engine through the CLI (eidefs ls and
// get), not through a mount: path → directory, or file with its content.
func engineTree(t *testing.T, data, db, store string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	var walk func(rel []string)
	walk = func(rel []string) {
		args := append([]string{"ls", "--json", db, store}, rel...)
		var es []struct {
			Name string `json:"name"`
			Kind string `json:"kind"`
			Size int64  `json:"size"`
		}
		if err := json.Unmarshal([]byte(mustCLI(t, data, args...)), &es); err != nil {
			t.Fatalf("eidefs %s: %v", strings.Join(args, " "), err)
		}
		for _, e := range es {
			p := append(slices.Clone(rel), e.Name)
			key := filepath.Join(p...)
			switch e.Kind {
			case "map":
				out[key] = fileInfo{Dir: true, Perm: 0o755}
				walk(p)
			case "value":
				v := mustCLI(t, data, append([]string{"get", db, store}, p...)...)
				if int64(len(v)) != e.Size {
					t.Errorf("eidefs ls says %s has %d bytes, eidefs get prints %d", key, e.Size, len(v))
				}
				out[key] = fileInfo{Perm: 0o644, Size: int64(len(v)), Data: v}
			default:
				t.Errorf("eidefs ls: %s is a %q; the workers make only files and directories", key, e.Kind)
			}
		}
	}
	walk(nil)
	return out
}

// expectMountShows checks that the store at root in n's mount shows want, and
// returns how long it took to do so. Paths are first looked up by name, without
// listing a directory before: a listing (READDIRPLUS) refreshes the kernel's
// entries and attributes, and would hide a missed invalidation. It waits briefly,
// since remote changes invalidate the kernel's caches from a goroutine of their
// own. Then the whole tree is read. Local-only scratch files (sed's) are left
// out: they never replicate.
func expectMountShows(t *testing.T, n *syncNode, root string, want map[string]fileInfo) time.Duration {
	t.Helper()
	const timeout = 3 * time.Second
	start := time.Now()
	diffs := lookUpKeys(root, want)
	first := diffs
	for len(diffs) > 0 && time.Since(start) < timeout {
		time.Sleep(50 * time.Millisecond)
		diffs = lookUpKeys(root, want)
	}
	took := time.Since(start)
	if len(diffs) > 0 {
		t.Errorf("%s's mount, paths looked up by name %v after the tips were equal, differs from the engine:\n  %s", n.Name, timeout, strings.Join(diffs, "\n  "))
	} else if len(first) > 0 {
		t.Logf("%s's mount showed the engine's tree only after %v; at first:\n  %s", n.Name, took.Round(time.Millisecond), strings.Join(first, "\n  "))
	}
	got, err := readTree(root)
	if err != nil {
		t.Errorf("reading %s's mount: %v", n.Name, err)
		return took
	}
	expectSameTree(t, want, withoutLocalOnly(got), fmt.Sprintf("engine (want) and %s's mount (got)", n.Name))
	return took
}

// lookUpKeys stats, and reads, every path of want and of the workers' key space
// below root by name, and lists how they differ from want.
func lookUpKeys(root string, want map[string]fileInfo) []string {
	paths := map[string]bool{}
	for p := range want {
		paths[p] = true
	}
	for _, d := range append([]string{""}, abuseDirs...) {
		for _, name := range append([]string{""}, abuseNames...) {
			if p := filepath.Join(d, name); p != "" {
				paths[p] = true
			}
		}
	}
	var diffs []string
	for p := range paths {
		fi, err := os.Lstat(filepath.Join(root, p))
		w, ok := want[p]
		switch {
		case !ok:
			if err == nil {
				diffs = append(diffs, fmt.Sprintf("%s: exists (%v), the engine has no such key", p, fi.Mode()))
			} else if e := errno(err); e != syscall.ENOENT && e != syscall.ENOTDIR {
				diffs = append(diffs, fmt.Sprintf("%s: %v, want ENOENT", p, err))
			}
		case err != nil:
			diffs = append(diffs, fmt.Sprintf("%s: %v, want %v", p, err, w))
		case fi.IsDir() != w.Dir:
			diffs = append(diffs, fmt.Sprintf("%s: mode %v, want %v", p, fi.Mode(), w))
		case !w.Dir:
			b, err := os.ReadFile(filepath.Join(root, p))
			if fi.Size() != w.Size || err != nil || string(b) != w.Data {
				diffs = append(diffs, fmt.Sprintf("%s: size %d, read %s (%v), want %v", p, fi.Size(), trunc(b), err, w))
			}
		}
	}
	slices.Sort(diffs)
	return diffs
}

// sedScratch is the name of sed -i's temporary files (local-only by default).
var sedScratch = regexp.MustCompile(`^sed[A-Za-z0-9]{6}$`)

func withoutLocalOnly(tree map[string]fileInfo) map[string]fileInfo {
	out := map[string]fileInfo{}
	for p, fi := range tree {
		if !sedScratch.MatchString(filepath.Base(p)) {
			out[p] = fi
		}
	}
	return out
}

// expectSameConflicts checks that both nodes list the same conflicts of db (the
// list is a function of the set of entries) and returns how many there are.
func expectSameConflicts(t *testing.T, a, b *syncNode, db string) int {
	t.Helper()
	list := func(n *syncNode) []string {
		var cs []map[string]any
		out := mustCLI(t, n.Data, "conflicts", db, "--all", "--json")
		if err := json.Unmarshal([]byte(out), &cs); err != nil {
			t.Fatalf("eidefs conflicts on %s: %v\n%s", n.Name, err, out)
		}
		var s []string
		for _, c := range cs {
			j, _ := json.Marshal(c)
			s = append(s, string(j))
		}
		slices.Sort(s)
		return s
	}
	la, lb := list(a), list(b)
	if !slices.Equal(la, lb) {
		t.Errorf("conflicts differ: A lists %d, B lists %d\nA: %s\nB: %s", len(la), len(lb), strings.Join(la, "\n   "), strings.Join(lb, "\n   "))
	}
	return len(la)
}

// dbEntries is the number of entries of db.
func dbEntries(t *testing.T, data, db string) uint64 {
	t.Helper()
	for _, d := range dbList(t, data) {
		if d.Name == db {
			return d.Entries
		}
	}
	t.Fatalf("eidefs db list: no database %s", db)
	return 0
}

// TestAbuseWorker is one abusing process of TestAbuse; it does nothing unless
// started by TestAbuse (the environment names its directory).
func TestAbuseWorker(t *testing.T) {
	root := os.Getenv(abuseEnvRoot)
	if root == "" {
		return
	}
	seed, dur := abuseSettings(t)
	id, err := strconv.Atoi(os.Getenv(abuseEnvWorker))
	if err != nil {
		t.Fatalf("%s: %v", abuseEnvWorker, err)
	}
	w := &abuseWorker{
		root: root,
		id:   id,
		peer: os.Getenv(abuseEnvRole) == "peer",
		data: os.Getenv(abuseEnvData),
		rnd:  rand.New(rand.NewPCG(seed, uint64(id))),
		rep:  abuseReport{Results: map[string]int{}},
	}
	ops := abuseLocalOps
	if w.peer {
		ops = abusePeerOps
	}
	end := time.Now().Add(dur)
	for time.Now().Before(end) && !w.rep.Dead {
		w.step(ops)
	}
	b, err := json.Marshal(w.rep)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("report %s\n", b)
}

// abuseWorker runs random operations on the key space below root.
type abuseWorker struct {
	root string
	id   int
	peer bool   // the peer's process: writes, deletes and renames, some through the CLI
	data string // the node's data directory (peer)
	rnd  *rand.Rand
	rep  abuseReport
}

// abuseOp is an operation and its weight in the random mix.
type abuseOp struct {
	name   string
	weight int
	run    func(w *abuseWorker, what string)
}

var abuseLocalOps = []abuseOp{
	{"write", 14, (*abuseWorker).write},
	{"append", 10, (*abuseWorker).appendTo},
	{"truncate", 5, (*abuseWorker).truncate},
	{"read", 12, (*abuseWorker).read},
	{"stat", 8, (*abuseWorker).stat},
	{"readdir", 6, (*abuseWorker).readdir},
	{"rename", 10, (*abuseWorker).rename},
	{"unlink", 7, (*abuseWorker).unlink},
	{"mkdir", 7, (*abuseWorker).mkdir},
	{"rmdir", 4, (*abuseWorker).rmdir},
	{"rmtree", 1, (*abuseWorker).rmtree},
	{"fsync", 4, (*abuseWorker).write},
	{"hold", 6, (*abuseWorker).hold},
	{"sed", 2, (*abuseWorker).sed},
}

var abusePeerOps = []abuseOp{
	{"write", 30, (*abuseWorker).write},
	{"append", 5, (*abuseWorker).appendTo},
	{"unlink", 15, (*abuseWorker).unlink},
	{"mkdir", 8, (*abuseWorker).mkdir},
	{"rmdir", 4, (*abuseWorker).rmdir},
	{"rename", 8, (*abuseWorker).rename},
	{"rmtree", 1, (*abuseWorker).rmtree},
	{"cli-set", 5, (*abuseWorker).cliSet},
	{"cli-rm", 3, (*abuseWorker).cliRm},
}

// step picks and runs one operation, announcing it first on stdout so that the
// test sees progress (and, if it hangs, where).
func (w *abuseWorker) step(ops []abuseOp) {
	sum := 0
	for _, o := range ops {
		sum += o.weight
	}
	r := w.rnd.IntN(sum)
	for _, o := range ops {
		if r -= o.weight; r < 0 {
			w.rep.Ops++
			fmt.Printf("op %d %s\n", w.rep.Ops, o.name)
			o.run(w, o.name)
			return
		}
	}
}

// filePath is a random key, now and then a directory's name (so types collide).
func (w *abuseWorker) filePath() string {
	if w.rnd.IntN(12) == 0 {
		return w.dirPath()
	}
	dir := ""
	if i := w.rnd.IntN(len(abuseDirs) + 1); i < len(abuseDirs) {
		dir = abuseDirs[i]
	}
	return filepath.Join(w.root, dir, abuseNames[w.rnd.IntN(len(abuseNames))])
}

// dirPath is a random directory name, now and then a key's.
func (w *abuseWorker) dirPath() string {
	if w.rnd.IntN(8) == 0 {
		return w.filePath()
	}
	return filepath.Join(w.root, abuseDirs[w.rnd.IntN(len(abuseDirs))])
}

// anyPath is a file or a directory name.
func (w *abuseWorker) anyPath() string {
	if w.rnd.IntN(4) == 0 {
		return w.dirPath()
	}
	return w.filePath()
}

// content is text (with a's for sed to change) naming its writer: mostly small,
// some over the 1 KiB kept inline in the path record, a few of tens of KiB.
func (w *abuseWorker) content() []byte {
	var size int
	switch r := w.rnd.IntN(100); {
	case r < 70:
		size = 1 + w.rnd.IntN(200)
	case r < 95:
		size = 1024 + w.rnd.IntN(7*1024)
	default:
		size = 20*1024 + w.rnd.IntN(80*1024)
	}
	b := fmt.Appendf(nil, "w%d.%d ", w.id, w.rep.Ops)
	for len(b) < size {
		if w.rnd.IntN(60) == 0 {
			b = append(b, '\n')
		} else {
			b = append(b, byte('a'+w.rnd.IntN(26)))
		}
	}
	return b[:size]
}

// rel is path relative to the worker's root, for messages.
func (w *abuseWorker) rel(path string) string {
	r, err := filepath.Rel(w.root, path)
	if err != nil {
		return path
	}
	return r
}

// note records the outcome of a path operation: errnos that concurrent changes
// of the namespace explain are expected, anything else is not. It reports success.
func (w *abuseWorker) note(op, detail string, err error, alsoFine ...syscall.Errno) bool {
	e := errno(err)
	switch {
	case e == 0:
		w.rep.Results[op+" ok"]++
		return true
	case e == syscall.ENOENT, e == syscall.EEXIST, e == syscall.ENOTEMPTY, e == syscall.ENOTDIR, e == syscall.EISDIR, slices.Contains(alsoFine, e):
		w.rep.Results[op+" "+errName(e)]++
		return false
	}
	w.bad(op, detail, err)
	return false
}

// noteFD records the outcome of an operation on a descriptor the worker holds:
// any error is unexpected (the name the descriptor was opened by may be gone, the
// descriptor is not).
func (w *abuseWorker) noteFD(op, detail string, err error, alsoFine ...syscall.Errno) bool {
	if err == nil || errors.Is(err, io.EOF) {
		return true
	}
	if e := errno(err); slices.Contains(alsoFine, e) {
		w.rep.Results[op+" "+errName(e)]++
		return false
	}
	w.bad(op, detail, err)
	return false
}

func (w *abuseWorker) bad(op, detail string, err error) {
	e := errno(err)
	w.rep.Results[op+" "+errName(e)]++
	w.rep.BadN++
	if len(w.rep.Bad) < abuseMaxBad {
		w.rep.Bad = append(w.rep.Bad, fmt.Sprintf("op %d %s %s: %v (%s)", w.rep.Ops, op, detail, err, errName(e)))
	}
	if e == syscall.ENOTCONN {
		w.rep.Dead = true
	}
}

// writeVia writes content through a fresh descriptor opened with flags, fsyncing
// first when asked.
func (w *abuseWorker) writeVia(op, path string, flags int, data []byte, fsync bool) {
	detail := w.rel(path)
	f, err := os.OpenFile(path, flags, 0o644)
	if !w.note(op, detail, err) {
		return
	}
	_, err = f.Write(data)
	ok := w.noteFD(op+"/write", detail, err)
	if ok && fsync {
		w.noteFD(op+"/fsync", detail, f.Sync())
	}
	if w.noteFD(op+"/close", detail, f.Close()) && ok {
		w.rep.Results[op+" ok"]++
	}
}

// write creates or overwrites a file (op "fsync": and fsyncs it before closing).
func (w *abuseWorker) write(op string) {
	w.writeVia(op, w.filePath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, w.content(), op == "fsync")
}

func (w *abuseWorker) appendTo(op string) {
	w.writeVia(op, w.filePath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, fmt.Appendf(nil, "w%d.%d appended\n", w.id, w.rep.Ops), false)
}

func (w *abuseWorker) truncate(op string) {
	path := w.filePath()
	w.note(op, w.rel(path), syscall.Truncate(path, int64(w.rnd.IntN(300))))
}

func (w *abuseWorker) read(op string) {
	path := w.filePath()
	f, err := os.Open(path)
	if !w.note(op, w.rel(path), err) {
		return
	}
	_, err = io.ReadAll(f)
	ok := w.noteFD(op+"/read", w.rel(path), err, syscall.EISDIR)
	if w.noteFD(op+"/close", w.rel(path), f.Close()) && ok {
		w.rep.Results[op+" ok"]++
	}
}

func (w *abuseWorker) stat(op string) {
	path := w.anyPath()
	var st syscall.Stat_t
	w.note(op, w.rel(path), syscall.Lstat(path, &st))
}

// readdir lists a directory. Reading a directory removed after it was opened
// fails with ENOENT on any Linux filesystem.
func (w *abuseWorker) readdir(op string) {
	path := w.dirPath()
	if w.rnd.IntN(4) == 0 {
		path = w.root
	}
	f, err := os.Open(path)
	if !w.note(op, w.rel(path), err) {
		return
	}
	_, err = f.Readdirnames(-1)
	ok := w.noteFD(op+"/getdents", w.rel(path), err, syscall.ENOENT, syscall.ENOTDIR)
	if w.noteFD(op+"/close", w.rel(path), f.Close()) && ok {
		w.rep.Results[op+" ok"]++
	}
}

// rename is rename(2) itself (os.Rename refuses to replace a directory): EINVAL
// is moving a directory into itself.
func (w *abuseWorker) rename(op string) {
	from, to := w.anyPath(), w.anyPath()
	w.note(op, w.rel(from)+" → "+w.rel(to), syscall.Rename(from, to), syscall.EINVAL)
}

func (w *abuseWorker) unlink(op string) {
	path := w.filePath()
	w.note(op, w.rel(path), syscall.Unlink(path))
}

func (w *abuseWorker) mkdir(op string) {
	path := w.dirPath()
	w.note(op, w.rel(path), syscall.Mkdir(path, 0o755))
}

func (w *abuseWorker) rmdir(op string) {
	path := w.dirPath()
	w.note(op, w.rel(path), syscall.Rmdir(path))
}

// rmtree is rm -r of a directory.
func (w *abuseWorker) rmtree(op string) {
	path := filepath.Join(w.root, abuseDirs[w.rnd.IntN(len(abuseDirs))])
	w.note(op, w.rel(path), os.RemoveAll(path))
}

// hold opens a file, lets it be renamed or unlinked (by itself or by the others)
// while it sleeps, then uses the descriptor: read, write, stat, truncate, fsync,
// close must all work.
func (w *abuseWorker) hold(op string) {
	path := w.filePath()
	detail := w.rel(path)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if !w.note(op, detail, err) {
		return
	}
	buf := make([]byte, 512)
	_, err = f.ReadAt(buf, 0)
	ok := w.noteFD(op+"/read", detail, err)
	switch w.rnd.IntN(3) {
	case 0:
		to := w.filePath()
		w.note(op+"/rename", detail+" → "+w.rel(to), syscall.Rename(path, to))
	case 1:
		w.note(op+"/unlink", detail, syscall.Unlink(path))
	}
	time.Sleep(time.Duration(10+w.rnd.IntN(150)) * time.Millisecond)
	_, err = f.Write(fmt.Appendf(nil, "w%d.%d held\n", w.id, w.rep.Ops))
	ok = w.noteFD(op+"/write", detail, err) && ok
	_, err = f.Stat()
	ok = w.noteFD(op+"/fstat", detail, err) && ok
	if w.rnd.IntN(3) == 0 {
		ok = w.noteFD(op+"/ftruncate", detail, f.Truncate(int64(w.rnd.IntN(100)))) && ok
	}
	if w.rnd.IntN(3) == 0 {
		ok = w.noteFD(op+"/fsync", detail, f.Sync()) && ok
	}
	_, err = f.ReadAt(buf, 0)
	ok = w.noteFD(op+"/reread", detail, err) && ok
	if w.noteFD(op+"/close", detail, f.Close()) && ok {
		w.rep.Results[op+" ok"]++
	}
}

// sedExpected are sed's complaints that a concurrent rename or unlink explains.
var sedExpected = regexp.MustCompile(`No such file or directory|Not a directory|Is a directory|not a regular file|File exists|Directory not empty`)

// sed runs sed -i on a file: its scratch file lives in the local-only overlay and
// is renamed over the key.
func (w *abuseWorker) sed(op string) {
	path := w.filePath()
	out, err := exec.Command("sed", "-i", "-e", "s/a/A/g", path).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		w.rep.Results[op+" ok"]++
	case errors.As(err, &ee) && sedExpected.Match(out):
		w.rep.Results[op+" failed: "+sedExpected.FindString(string(out))]++
	default:
		w.bad(op, w.rel(path), fmt.Errorf("%v: %s", err, out))
	}
}

// cliExpected are the CLI's complaints that concurrent changes explain.
var cliExpected = regexp.MustCompile(`not found|not a directory|is a directory|already exists`)

// eidefs runs the CLI on the peer's data directory (through its control socket).
func (w *abuseWorker) eidefs(op string, args ...string) {
	cmd := exec.Command("eidefs", append([]string{"--data", w.data}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		w.rep.Results[op+" ok"]++
	case errors.As(err, &ee) && cliExpected.Match(out):
		w.rep.Results[op+" failed: "+cliExpected.FindString(string(out))]++
	default:
		w.bad(op, strings.Join(args, " "), fmt.Errorf("%v: %s", err, out))
	}
}

// keyArgs are the database, store and key names of path (below the root, a store
// in a mount) for eidefs set and rm.
func (w *abuseWorker) keyArgs(path string) []string {
	db, store := filepath.Base(filepath.Dir(w.root)), filepath.Base(w.root)
	return append([]string{db, store}, strings.Split(w.rel(path), "/")...)
}

func (w *abuseWorker) cliSet(op string) {
	data := w.content()
	args := append([]string{"set"}, w.keyArgs(w.filePath())...)
	w.eidefs(op, append(args, string(data[:min(100, len(data))]))...)
}

func (w *abuseWorker) cliRm(op string) {
	w.eidefs(op, append([]string{"rm", "-r"}, w.keyArgs(w.anyPath())...)...)
}

// TestDescriptorOutlivesRemoteChange: a descriptor opened before a change from
// elsewhere (here the CLI through the control socket, as a peer's entry arrives)
// keeps reading, stat-ing and writing the version it opened, even when it had
// read nothing yet: its content is read on first use, after the key is gone.
// TestAbuse found read(2), write(2) and fstat(2) failing with ENOENT there.
func TestDescriptorOutlivesRemoteChange(t *testing.T) {
	m := mount(t, mountOpts{})
	dir := newStore(t, m, "notes", "todo")
	for _, name := range []string{"deleted", "rewritten", "unlinked", "appended"} {
		writeFile(t, filepath.Join(dir, name), "v1\n")
	}
	open := func(name string, flags int) *os.File {
		f, err := os.OpenFile(filepath.Join(dir, name), flags, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	deleted, rewritten, unlinked := open("deleted", os.O_RDONLY), open("rewritten", os.O_RDONLY), open("unlinked", os.O_RDONLY)
	appended := open("appended", os.O_WRONLY|os.O_APPEND)

	mustCLI(t, m.Data, "rm", "notes", "todo", "deleted")
	mustCLI(t, m.Data, "set", "notes", "todo", "rewritten", "version 2\n")
	mustCLI(t, m.Data, "set", "notes", "todo", "unlinked", "version 2\n")
	mustCLI(t, m.Data, "rm", "notes", "todo", "appended")
	waitFor(t, 5*time.Second, "the CLI's changes in the mount", func() (bool, string) {
		_, err := os.Stat(filepath.Join(dir, "deleted"))
		b, _ := os.ReadFile(filepath.Join(dir, "unlinked"))
		return os.IsNotExist(err) && string(b) == "version 2\n", fmt.Sprintf("stat deleted: %v; unlinked holds %q", err, b)
	})
	if err := os.Remove(filepath.Join(dir, "unlinked")); err != nil {
		t.Fatal(err)
	}

	// Every descriptor shows the size of what it reads: a key changed elsewhere is
	// a new file under the old name (a new inode), as after `mv new name`.
	for _, f := range []*os.File{deleted, rewritten, unlinked} {
		fi, err := f.Stat()
		if err != nil {
			t.Errorf("fstat of %s opened before the change: %v", f.Name(), err)
		} else if fi.Size() != 3 {
			t.Errorf("fstat of %s opened before the change: size %d, want 3", f.Name(), fi.Size())
		}
		if f == rewritten && err == nil {
			now, err := os.Stat(f.Name())
			if err != nil || now.Size() != int64(len("version 2\n")) || os.SameFile(now, fi) {
				t.Errorf("stat of %s after the change: %v, %v; want the new version's size as another inode", f.Name(), now, err)
			}
		}
		if b, err := io.ReadAll(f); err != nil || string(b) != "v1\n" {
			t.Errorf("reading %s opened before the change: %q, %v; want the version it opened, \"v1\\n\"", f.Name(), b, err)
		}
	}
	if _, err := appended.Write([]byte("more\n")); err != nil {
		t.Errorf("appending to %s, deleted elsewhere after the open: %v", appended.Name(), err)
	}
	if err := appended.Close(); err != nil {
		t.Errorf("closing %s: %v", appended.Name(), err)
	}
}

// TestWriterMeetsSameRemoteValue: a file open for writing keeps its inode when a
// peer (here the CLI) changes the key; if the writer then writes exactly the bytes
// the key already holds, nothing is committed and the file reads those bytes,
// also after it is closed and opened again.
func TestWriterMeetsSameRemoteValue(t *testing.T) {
	m := mount(t, mountOpts{})
	dir := newStore(t, m, "notes", "todo")
	key := filepath.Join(dir, "k")
	writeFile(t, key, "v1\n")
	f, err := os.OpenFile(key, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustCLI(t, m.Data, "set", "notes", "todo", "k", "same\n")
	time.Sleep(200 * time.Millisecond) // the change reaches the kernel
	if _, err := f.WriteAt([]byte("same\n"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if got := readFile(t, key); got != "same\n" {
			t.Errorf("read %d after the close: %q, want %q", i+1, got, "same\n")
		}
	}
	if got := mustCLI(t, m.Data, "get", "notes", "todo", "k"); got != "same\n" {
		t.Errorf("stored: %q", got)
	}
}
