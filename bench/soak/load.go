package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Layout of the soak database (paths relative to its directory in a mount):
//
//	s/hot/hNN          keys every writer on every node overwrites
//	s/<writer>/u/N     unique keys, written once (some with fsync), never touched again
//	s/<writer>/big/N   unique ~1 MiB keys
//	s/<writer>/app/N   keys appended to by one writer
//	s/<writer>/ren/N   keys written under a temporary name, then renamed onto N
//	s/<writer>/del/N   keys written, later deleted
const (
	store    = "s"
	hotKeys  = 16
	bigSize  = 1 << 20
	appendTo = 40 // lines per append key before the writer starts a new one
)

var writerDirs = []string{"u", "big", "app", "ren", "del"}

// sleepCtx sleeps d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// uniform is a random duration in [lo, hi].
func uniform(rnd *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rnd.Int64N(int64(hi-lo)+1))
}

// faults collects what should not happen: errors on a live node, wrong reads. It
// keeps the first few messages of each kind.
type faults struct {
	mu     sync.Mutex
	counts map[string]int
	msgs   map[string][]string
}

func newFaults() *faults { return &faults{counts: map[string]int{}, msgs: map[string][]string{}} }

func (f *faults) add(kind, format string, args ...any) {
	msg := time.Now().Format("15:04:05.000 ") + fmt.Sprintf(format, args...)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[kind]++
	if len(f.msgs[kind]) < 8 {
		f.msgs[kind] = append(f.msgs[kind], msg)
	}
	logf("FAULT %s: %s", kind, msg)
}

func (f *faults) total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.counts {
		n += c
	}
	return n
}

// opStats counts the writers' operations per kind and outcome.
type opStats struct {
	mu         sync.Mutex
	acked      map[string]int
	failedStop map[string]int // failed while the node was being stopped: expected
	failedLive map[string]int // failed on a live node: a fault
	reads      map[string]int // reader operations per kind
	readMisses int            // immutable keys not (yet) on a node that did not write them
}

func newOpStats() *opStats {
	return &opStats{acked: map[string]int{}, failedStop: map[string]int{}, failedLive: map[string]int{}, reads: map[string]int{}}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// load is the running mixed workload: writers, readers, syncs, kills, samples.
type load struct {
	cfg    *config
	db     string
	nodes  []*node
	model  *model
	stats  *opStats
	faults *faults

	mu      sync.Mutex
	kills   []killEvent
	syncs   []syncEvent
	samples []sample
}

// writer runs operations on one node, on its own keys plus the hot keys.
type writer struct {
	l   *load
	n   *node
	id  string // e.g. "b2"
	rnd *rand.Rand
	seq int
	app *appendKey // the key being appended to (nil: start a new one)
	del []string   // acknowledged keys of s/<id>/del not deleted yet
}

type appendKey struct {
	path    string
	content []byte
	lines   int
}

func (w *writer) run(ctx context.Context) {
	for sleepCtx(ctx, uniform(w.rnd, 0, 2*w.l.cfg.pace)) {
		if !w.n.up.Load() {
			continue
		}
		epoch := w.n.epoch.Load()
		w.n.inflight.Add(1)
		op, err := w.step()
		w.n.inflight.Add(-1)
		expected := err != nil && w.n.errExpected(epoch)
		st := w.l.stats
		st.mu.Lock()
		switch {
		case err == nil:
			st.acked[op]++
		case expected:
			st.failedStop[op]++
		default:
			st.failedLive[op]++
		}
		st.mu.Unlock()
		if err != nil && !expected {
			w.l.faults.add("write error on a live node", "%s (%s): %v", w.id, op, err)
		}
	}
}

// step picks and runs one operation; it returns the operation's name and error.
func (w *writer) step() (string, error) {
	w.seq++
	if w.rnd.Float64() < w.l.cfg.bigRate {
		return "big", w.unique("big", w.rnd.IntN(2) == 0)
	}
	switch r := w.rnd.IntN(100); {
	case r < 25:
		return "new", w.unique("u", false)
	case r < 32:
		return "new+fsync", w.unique("u", true)
	case r < 55:
		return "hot", w.hot()
	case r < 70:
		return "append", w.appendLine()
	case r < 80:
		return "rename", w.rename()
	case r < 90 || len(w.del) == 0:
		return "create", w.create()
	default:
		return "delete", w.remove()
	}
}

func (w *writer) rel(dir string, seq int) string {
	return path.Join(store, w.id, dir, fmt.Sprintf("%06d", seq))
}

func (w *writer) full(rel string) string { return w.n.path(w.l.db, rel) }

// content is a value for rel: a header naming it, then random letters; mostly
// small, sometimes up to 32 KiB.
func (w *writer) content(rel string) []byte {
	head := fmt.Sprintf("%s %s %d %d\n", w.id, rel, w.seq, time.Now().UnixNano())
	size := 40 + w.rnd.IntN(200)
	if w.rnd.IntN(5) == 0 {
		size = 1024 + w.rnd.IntN(31*1024)
	}
	b := make([]byte, max(size, len(head)))
	copy(b, head)
	for i := len(head); i < len(b); i++ {
		b[i] = 'a' + byte(w.rnd.IntN(26))
	}
	return b
}

// bigContent is about 1 MiB of pseudo-random bytes.
func (w *writer) bigContent(rel string) []byte {
	var seed [32]byte
	for i := range 4 {
		v := w.rnd.Uint64()
		for j := range 8 {
			seed[i*8+j] = byte(v >> (8 * j))
		}
	}
	b := make([]byte, bigSize-4096+w.rnd.IntN(8192))
	rand.NewChaCha8(seed).Read(b)
	copy(b, fmt.Sprintf("%s %s\n", w.id, rel))
	return b
}

// writeFile writes data to p (create or truncate). It is acknowledged when close
// returned without error or, with fsync, when fsync did.
func writeFile(p string, data []byte, fsync bool) (acked bool, err error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return false, err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return false, err
	}
	if fsync {
		if err := f.Sync(); err != nil {
			f.Close()
			return false, fmt.Errorf("fsync: %w", err)
		}
		if err := f.Close(); err != nil {
			return true, fmt.Errorf("close after a successful fsync: %w", err)
		}
		return true, nil
	}
	if err := f.Close(); err != nil {
		return false, fmt.Errorf("close: %w", err)
	}
	return true, nil
}

// unique writes a new key under dir (u or big) that is never touched again.
func (w *writer) unique(dir string, fsync bool) error {
	rel := w.rel(dir, w.seq)
	var data []byte
	if dir == "big" {
		data = w.bigContent(rel)
	} else {
		data = w.content(rel)
	}
	h := hash(data)
	acked, err := writeFile(w.full(rel), data, fsync)
	if acked {
		w.l.model.acked(w.n.name, dir, rel, h, true)
	} else {
		w.l.model.failed(w.n.name, rel, h)
	}
	return err
}

// hot overwrites one of the keys every writer shares.
// Writers on one node take turns on a hot key: two descriptors of one file
// writing at once interleave their bytes, on eidefs as on a local disk.
func (w *writer) hot() error {
	k := w.rnd.IntN(hotKeys)
	rel := hotKey(k)
	data := w.content(rel)
	h := hash(data)
	w.n.hotMu[k].Lock()
	defer w.n.hotMu[k].Unlock()
	w.l.model.hotAttempt(rel, h, data)
	acked, err := writeFile(w.full(rel), data, w.rnd.IntN(10) == 0)
	if acked {
		w.l.model.hotAcked(w.n.name, rel, h)
	}
	return err
}

// appendLine appends a line to the writer's current append key; after a failure
// the key's content is uncertain and the writer moves on to a new key.
func (w *writer) appendLine() error {
	if w.app == nil || w.app.lines >= appendTo {
		w.app = &appendKey{path: w.rel("app", w.seq)}
	}
	a := w.app
	line := fmt.Appendf(nil, "%s line %d seq %d %x\n", w.id, a.lines, w.seq, w.rnd.Uint64())
	next := append(append([]byte(nil), a.content...), line...)
	err := func() error {
		f, err := os.OpenFile(w.full(a.path), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.Write(line); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("close: %w", err)
		}
		return nil
	}()
	if err != nil {
		w.l.model.failed(w.n.name, a.path, hash(next))
		w.app = nil
		return err
	}
	a.content, a.lines = next, a.lines+1
	w.l.model.acked(w.n.name, "append", a.path, hash(next), false)
	return nil
}

// rename writes a key under a temporary name, then renames it onto its final name.
// Half of the temporary names are local-only (sed's sedXXXXXX, never replicated:
// the rename is what commits), the others ordinary keys (the rename is a delete
// plus a set).
func (w *writer) rename() error {
	final := w.rel("ren", w.seq)
	localTmp := w.rnd.IntN(2) == 0
	tmp := final + ".tmp"
	if localTmp {
		tmp = path.Join(path.Dir(final), fmt.Sprintf("sed%06d", w.seq%1_000_000))
	}
	data := w.content(final)
	h := hash(data)
	acked, err := writeFile(w.full(tmp), data, false)
	switch {
	case localTmp:
		// Never replicated and gone after a restart: absent at the end either way.
		w.l.model.expectAbsent(w.n.name, tmp)
	case acked:
		w.l.model.acked(w.n.name, "rename-tmp", tmp, h, false)
	default:
		w.l.model.failed(w.n.name, tmp, h)
	}
	if !acked {
		return fmt.Errorf("writing %s: %w", path.Base(tmp), err)
	}
	if err := os.Rename(w.full(tmp), w.full(final)); err != nil {
		if !localTmp {
			w.l.model.failed(w.n.name, tmp, absent)
		}
		w.l.model.failed(w.n.name, final, h)
		return fmt.Errorf("rename: %w", err)
	}
	if !localTmp {
		w.l.model.acked(w.n.name, "rename-from", tmp, absent, false)
	}
	w.l.model.acked(w.n.name, "rename", final, h, false)
	return nil
}

// create writes a key the writer deletes later.
func (w *writer) create() error {
	rel := w.rel("del", w.seq)
	data := w.content(rel)
	h := hash(data)
	acked, err := writeFile(w.full(rel), data, false)
	if !acked {
		w.l.model.failed(w.n.name, rel, h)
		return err
	}
	w.l.model.acked(w.n.name, "create", rel, h, false)
	w.del = append(w.del, rel)
	return err
}

// remove deletes one of the writer's created keys.
func (w *writer) remove() error {
	i := w.rnd.IntN(len(w.del))
	rel := w.del[i]
	w.del = append(w.del[:i], w.del[i+1:]...)
	if err := os.Remove(w.full(rel)); err != nil {
		w.l.model.failed(w.n.name, rel, absent)
		return err
	}
	w.l.model.acked(w.n.name, "delete", rel, absent, false)
	return nil
}

// reader reads through one node's mount: immutable keys (whose content must be
// exact), hot keys (which must hold a value some writer wrote), listings and the
// generated .sync files.
type reader struct {
	l       *load
	n       *node
	rnd     *rand.Rand
	writers []string
}

func (r *reader) run(ctx context.Context) {
	for sleepCtx(ctx, uniform(r.rnd, 0, 2*r.l.cfg.readPace)) {
		if !r.n.up.Load() {
			continue
		}
		epoch := r.n.epoch.Load()
		kind, err := r.step()
		r.l.stats.mu.Lock()
		r.l.stats.reads[kind]++
		r.l.stats.mu.Unlock()
		if err != nil && !r.n.errExpected(epoch) {
			r.l.faults.add("read error on a live node", "node %s (%s): %v", r.n.name, kind, err)
		}
	}
}

func (r *reader) step() (string, error) {
	switch x := r.rnd.IntN(100); {
	case x < 40:
		return "read", r.readImmutable()
	case x < 70:
		dir := path.Join(store, "hot")
		if r.rnd.IntN(3) > 0 {
			dir = path.Join(store, r.writers[r.rnd.IntN(len(r.writers))], writerDirs[r.rnd.IntN(len(writerDirs))])
		}
		_, err := os.ReadDir(r.n.path(r.l.db, dir))
		return "ls", err
	case x < 90:
		return r.readHot()
	default:
		if _, err := os.ReadFile(r.n.path(r.l.db, ".sync/tips")); err != nil {
			return ".sync", err
		}
		_, err := os.ReadFile(r.n.path("", ".sync/status"))
		return ".sync", err
	}
}

// readImmutable reads an acknowledged unique key: exact content, or ENOENT on a
// node it has not reached yet; never ENOENT on the node that wrote it, restarts
// included.
func (r *reader) readImmutable() error {
	k, ok := r.l.model.randomImmutable(r.rnd)
	if !ok {
		return nil
	}
	epoch := r.n.epoch.Load()
	b, err := os.ReadFile(r.n.path(r.l.db, k.path))
	switch {
	case err == nil:
		if got := hash(b); got != k.hash {
			r.l.faults.add("wrong content read", "node %s: %s (written on %s) reads %d bytes hashing %s, want %s", r.n.name, k.path, k.node, len(b), got, k.hash)
		}
	case isNotExist(err) && k.node == r.n.name && !r.n.errExpected(epoch):
		r.l.faults.add("acknowledged write missing on its own node", "node %s: %s: %v", r.n.name, k.path, err)
	case isNotExist(err):
		r.l.stats.mu.Lock()
		r.l.stats.readMisses++
		r.l.stats.mu.Unlock()
	default:
		return err
	}
	return nil
}

// readHot reads a hot key, which must hold a value some writer started to write.
//
// A read that overlaps a write of the key on this node may see that write under
// way (as on a local disk), so the reader holds the node's turn on the key while
// it reads, and only reads, without judging, when a local write has the turn.
func (r *reader) readHot() (string, error) {
	k := r.rnd.IntN(hotKeys)
	rel := hotKey(k)
	if !r.n.hotMu[k].TryLock() {
		_, err := os.ReadFile(r.n.path(r.l.db, rel))
		if isNotExist(err) {
			err = nil
		}
		return "read-hot during a local write", err
	}
	defer r.n.hotMu[k].Unlock()
	b, err := os.ReadFile(r.n.path(r.l.db, rel))
	if err != nil {
		if isNotExist(err) {
			return "read-hot", nil
		}
		return "read-hot", err
	}
	if !r.l.model.hotValid(rel, hash(b)) {
		r.l.faults.add("hot key read returned a value never written", "node %s: %s: %s; %s", r.n.name, rel,
			r.l.model.explainHot(rel, b), r.reread(rel))
	}
	return "read-hot", nil
}

// hotKey is the path of hot key k.
func hotKey(k int) string { return path.Join(store, "hot", fmt.Sprintf("h%02d", k)) }

// reread reads the hot key rel again, at once and after a second, to tell a
// passing inconsistency from a lasting one.
func (r *reader) reread(rel string) string {
	var out []string
	for _, wait := range []time.Duration{0, time.Second} {
		time.Sleep(wait)
		p := r.n.path(r.l.db, rel)
		fi, err := os.Stat(p)
		if err != nil {
			out = append(out, fmt.Sprintf("after %v: stat: %v", wait, err))
			continue
		}
		b, err := os.ReadFile(p)
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("after %v: %v", wait, err))
		case r.l.model.hotValid(rel, hash(b)):
			out = append(out, fmt.Sprintf("after %v: size %d, read %d bytes, a value written there", wait, fi.Size(), len(b)))
		default:
			out = append(out, fmt.Sprintf("after %v: size %d, read %d bytes, still no value written there: %s", wait, fi.Size(), len(b), r.l.model.explainHot(rel, b)))
		}
	}
	return "read again: " + strings.Join(out, "; ")
}

// syncEvent is one `eidefs sync` run by the load.
type syncEvent struct {
	at    time.Time
	node  string
	took  time.Duration
	allUp bool // every node was up before and after
	err   error
}

// syncer runs `eidefs sync` on a random live node now and then.
func (l *load) syncer(ctx context.Context, rnd *rand.Rand) {
	for sleepCtx(ctx, uniform(rnd, l.cfg.syncMin, l.cfg.syncMax)) {
		n := l.nodes[rnd.IntN(len(l.nodes))]
		if !n.up.Load() {
			continue
		}
		before := l.allUpEpochs()
		start := time.Now()
		_, err := n.cli(context.Background(), 2*time.Minute, "sync")
		after := l.allUpEpochs()
		ev := syncEvent{at: start, node: n.name, took: time.Since(start), allUp: before != "" && before == after, err: err}
		l.mu.Lock()
		l.syncs = append(l.syncs, ev)
		l.mu.Unlock()
		if err != nil {
			logf("eidefs sync on %s failed (all nodes up: %v): %v", n.name, ev.allUp, err)
		}
	}
}

// allUpEpochs is the nodes' stop epochs when all are up, "" otherwise.
func (l *load) allUpEpochs() string {
	var b strings.Builder
	for _, n := range l.nodes {
		if !n.up.Load() {
			return ""
		}
		b.WriteString(strconv.FormatInt(n.epoch.Load(), 10) + " ")
	}
	return b.String()
}

// killEvent is one stop and restart of a node.
type killEvent struct {
	at       time.Time
	node     string
	signal   syscall.Signal
	inflight int // writer operations under way on the node when it was signalled
	stop     stopResult
	down     time.Duration // from the signal to the restart's start
	restart  time.Duration // from start to a live mount
	err      error         // the restart failed
}

// killer stops a random killable node every killMin–killMax (SIGKILL, sometimes
// SIGTERM) and restarts it downMin–downMax later on the same data and mount. It
// returns an error when a restart fails; the run cannot go on then.
func (l *load) killer(ctx context.Context, rnd *rand.Rand, killable []*node) error {
	for sleepCtx(ctx, uniform(rnd, l.cfg.killMin, l.cfg.killMax)) {
		n := killable[rnd.IntN(len(killable))]
		sig := syscall.SIGKILL
		if rnd.Float64() < l.cfg.termRate {
			sig = syscall.SIGTERM
		}
		if sig == syscall.SIGKILL {
			// Aim at a write under way: that is where an acknowledgement could lie.
			for deadline := time.Now().Add(2 * time.Second); n.inflight.Load() == 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
		ev := killEvent{at: time.Now(), node: n.name, signal: sig, inflight: int(n.inflight.Load())}
		logf("stopping %s with %v (%d writes under way)", n.name, sig, ev.inflight)
		res, err := n.stop(sig, 30*time.Second)
		if err != nil {
			return err
		}
		ev.stop = res
		if res.hung {
			l.faults.add("node did not exit after SIGKILL", "node %s: still there %v after the signal, until its FUSE connection was aborted:\n%s",
				n.name, res.took.Round(time.Second), res.stacks)
		} else if sig == syscall.SIGTERM {
			if res.forced {
				l.faults.add("node did not stop on SIGTERM", "node %s: still running %v after SIGTERM; killed", n.name, res.took)
			} else if res.exitErr != nil {
				l.faults.add("node exited with an error on SIGTERM", "node %s: %v; log: %s", n.name, res.exitErr, tail(n.logPath, 5))
			}
		}
		// The restart happens even when the run is ending: the checks need every node.
		time.Sleep(uniform(rnd, l.cfg.downMin, l.cfg.downMax))
		ev.down = time.Since(ev.at)
		start := time.Now()
		ev.err = n.start(time.Minute)
		ev.restart = time.Since(start)
		l.mu.Lock()
		l.kills = append(l.kills, ev)
		l.mu.Unlock()
		if ev.err != nil {
			return fmt.Errorf("restarting %s: %w", n.name, ev.err)
		}
		logf("%s restarted (start #%d) in %v", n.name, n.lifetime, ev.restart.Round(time.Millisecond))
	}
	return nil
}

// sample is one reading of a node's process figures.
type sample struct {
	at         time.Time
	node       string
	lifetime   int
	rss        float64 // bytes
	heap       float64 // Go heap in use, bytes
	goroutines float64
	fds        float64 // open files other than goleveldb's tables
	tables     float64 // open goleveldb table files
	entries    int
}

var sampledMetrics = []string{"process_resident_memory_bytes", "go_memstats_heap_inuse_bytes", "go_goroutines"}

// sampleNode reads n's metrics and its database's entry count.
func (l *load) sampleNode(n *node) (sample, error) {
	n.mu.Lock()
	lifetime := n.lifetime
	n.mu.Unlock()
	m, err := n.scrape(sampledMetrics...)
	if err != nil {
		return sample{}, err
	}
	tables, fds, err := n.openFiles()
	if err != nil {
		return sample{}, err
	}
	b, err := os.ReadFile(n.path(l.db, ".sync/entries"))
	if err != nil {
		return sample{}, err
	}
	entries, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return sample{}, fmt.Errorf(".sync/entries: %w", err)
	}
	return sample{at: time.Now(), node: n.name, lifetime: lifetime, rss: m["process_resident_memory_bytes"],
		heap: m["go_memstats_heap_inuse_bytes"], goroutines: m["go_goroutines"], fds: float64(fds), tables: float64(tables), entries: entries}, nil
}

// sampler samples every live node every cfg.sample.
func (l *load) sampler(ctx context.Context) {
	for {
		for _, n := range l.nodes {
			if !n.up.Load() {
				continue
			}
			epoch := n.epoch.Load()
			if !n.running() {
				// A stop bumps the epoch before its signal: an exit without that is a crash.
				if !n.errExpected(epoch) {
					n.up.Store(false)
					n.epoch.Add(1)
					l.faults.add("node process exited on its own", "node %s: log: %s", n.name, tail(n.logPath, 10))
				}
				continue
			}
			s, err := l.sampleNode(n)
			if err != nil {
				if !n.errExpected(epoch) {
					l.faults.add("sampling a live node failed", "node %s: %v", n.name, err)
				}
				continue
			}
			l.mu.Lock()
			l.samples = append(l.samples, s)
			l.mu.Unlock()
		}
		if !sleepCtx(ctx, l.cfg.sample) {
			return
		}
	}
}

// writerIDs names the writers: node name plus index.
func writerIDs(nodes []*node, perNode int) []string {
	var ids []string
	for _, n := range nodes {
		for i := 1; i <= perNode; i++ {
			ids = append(ids, fmt.Sprintf("%s%d", n.name, i))
		}
	}
	sort.Strings(ids)
	return ids
}
