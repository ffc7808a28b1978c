package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eidefs/eidefs/kv"
	"github.com/eidefs/eidefs/kv/kvtest"
)

// TestPowerCut pulls the plug while commits are running and checks the durability
// promise on what the disk keeps (kvtest.Disk): the store opens without repair,
// every commit acknowledged with Sync (or followed by a SyncJournal that returned)
// is there with its values, every other commit is whole or absent, the surviving
// entries form a consistent log whose state equals a replay of them, what a
// reopen showed survives the next cut, and the reopened instance commits again.
//
// Runs use the seeds base, base+1, … (EIDEFS_POWERCUT_SEED sets base, logged); each
// makes 1–3 cuts in a row on the same data, half of them torn. EIDEFS_POWERCUT_CUTS
// raises the number of cuts (default 200). The first run opens the store as eidefs
// does; the others with a 64 KiB memtable, which opens fast and makes goleveldb
// switch journals during the run.
func TestPowerCut(t *testing.T) {
	cuts := kvtest.EnvInt(t, "EIDEFS_POWERCUT_CUTS", 200)
	base := int64(kvtest.EnvInt(t, "EIDEFS_POWERCUT_SEED", 1))
	t.Logf("seeds from %d (EIDEFS_POWERCUT_SEED), %d cuts (EIDEFS_POWERCUT_CUTS)", base, cuts)
	var st powerCutStats
	start := time.Now()
	for seed := base; st.cuts < cuts; seed++ {
		o := kv.Options{Memtable: 64 << 10}
		if seed == base {
			o = kv.Options{}
		}
		r := newPowerCutRun(t, seed, o, &st)
		for rounds := 1 + r.rng.Intn(3); rounds > 0 && st.cuts < cuts; rounds-- {
			r.round()
		}
		r.close()
		r.closeReplica()
		if t.Failed() {
			return
		}
	}
	t.Logf("%d cuts (%d torn) in %v: %d commits checked, %d of them Sync-acknowledged or covered by SyncJournal; %d unpromised commits lost, %d kept (a later sync or a torn tail)",
		st.cuts, st.torn, time.Since(start).Round(time.Millisecond), st.checked, st.required, st.lost, st.unpromisedKept)
	if st.lost == 0 {
		t.Fatal("no cut lost an unsynced commit: the cuts do not drop what was not synced")
	}
}

type powerCutStats struct {
	cuts, torn                              int
	checked, required, lost, unpromisedKept int
}

// pcCommit is a commit as its worker made it: one unique key, maybe a hot key.
type pcCommit struct {
	id       ID
	db       ID
	unique   []string // store "s"; written by no other commit
	value    []byte   // of unique, and of hot unless hotDel
	hot      string   // a key many commits write, or ""
	hotDel   bool     // the commit deletes hot
	sync     bool     // committed with Sync
	ack      uint64   // order of Commit's return among the round's acknowledgements
	afterCut bool     // Commit was called after the cut was taken
}

// pcBarrier is a SyncJournal call: once it returned (at ack), the commits
// acknowledged up to covers before it started are durable.
type pcBarrier struct{ covers, ack uint64 }

// powerCutRun is one data directory through several cuts.
type powerCutRun struct {
	t        *testing.T
	seed     int64
	rng      *rand.Rand
	st       *powerCutStats
	id       *Identity
	disk     *kvtest.Disk
	store    *kv.DB
	in       *Instance
	dbs      []ID
	commits  map[ID]*pcCommit // every commit made, in every round
	mustHave map[ID]bool      // entries that must survive every later cut
	next     atomic.Int64     // unique key numbers
	cutNo    int
	kvOpts   kv.Options

	// replica receives, by Apply, the entries that survived each cut: exactly
	// those of the last cut, as no surviving entry is lost later (mustHave).
	replicaStore *kv.DB
	replica      *Instance
	replicated   map[ID]bool
}

func newPowerCutRun(t *testing.T, seed int64, o kv.Options, st *powerCutStats) *powerCutRun {
	r := &powerCutRun{t: t, seed: seed, rng: rand.New(rand.NewSource(seed)), st: st, id: NewIdentity(),
		disk: kvtest.NewDisk(), commits: map[ID]*pcCommit{}, mustHave: map[ID]bool{}, replicated: map[ID]bool{}, kvOpts: o}
	r.open(r.disk)
	var err error
	if r.replicaStore, err = kv.OpenStorage(kvtest.NewDisk(), o); err != nil {
		t.Fatal(err)
	}
	if r.replica, err = Open(r.replicaStore, Options{Identity: NewIdentity(), Now: fakeClock(1_700_000_000_000)}); err != nil {
		t.Fatal(err)
	}
	for i := range 1 + r.rng.Intn(3) {
		db, err := r.in.CreateDatabase(fmt.Sprintf("db%d", i), "")
		if err != nil {
			r.fatalf("creating a database: %v", err)
		}
		r.dbs = append(r.dbs, db.ID())
		r.mustHave[db.ID()] = true
	}
	if err := r.in.SyncJournal(); err != nil {
		r.fatalf("SyncJournal: %v", err)
	}
	return r
}

func (r *powerCutRun) fatalf(format string, args ...any) {
	r.t.Helper()
	r.t.Fatalf("seed %d, cut %d: %s", r.seed, r.cutNo, fmt.Sprintf(format, args...))
}

// open opens kv and engine on disk, as a restart does: no repair step.
func (r *powerCutRun) open(disk *kvtest.Disk) {
	r.t.Helper()
	store, err := kv.OpenStorage(disk, r.kvOpts)
	if err != nil {
		r.fatalf("opening the store: %v", err)
	}
	in, err := Open(store, Options{Identity: r.id, Now: fakeClock(1_700_000_000_000)})
	if err != nil {
		store.Close()
		r.fatalf("opening the instance: %v", err)
	}
	r.disk, r.store, r.in = disk, store, in
}

func (r *powerCutRun) close() {
	r.in.Close()
	r.store.Compact() // no compaction left running into Close
	r.store.Close()
}

func (r *powerCutRun) closeReplica() {
	r.replica.Close()
	r.replicaStore.Compact()
	r.replicaStore.Close()
}

// round runs workers, cuts the power while they commit, restarts on what the disk
// kept and checks it.
func (r *powerCutRun) round() {
	r.cutNo++
	var (
		ack      atomic.Uint64
		cutDone  atomic.Bool
		mu       sync.Mutex
		made     []*pcCommit
		barriers []pcBarrier
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	// The cut comes after target acknowledgements, while the workers go on.
	target := uint64(r.rng.Intn(40))
	reached := make(chan struct{})
	acked := func() uint64 {
		n := ack.Add(1)
		if n == target {
			close(reached)
		}
		return n
	}
	if target == 0 {
		close(reached)
	}
	for range 2 + r.rng.Intn(3) {
		wrng := rand.New(rand.NewSource(r.rng.Int63()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if wrng.Intn(10) == 0 {
					covers := ack.Load()
					if err := r.in.SyncJournal(); err != nil {
						r.t.Errorf("SyncJournal: %v", err)
						return
					}
					b := pcBarrier{covers: covers, ack: acked()}
					mu.Lock()
					barriers = append(barriers, b)
					mu.Unlock()
					continue
				}
				c, err := r.commit(wrng, &cutDone)
				if err != nil {
					r.t.Errorf("commit: %v", err)
					return
				}
				c.ack = acked()
				mu.Lock()
				made = append(made, c)
				mu.Unlock()
			}
		}()
	}
	select {
	case <-reached:
	case <-time.After(time.Minute):
		r.fatalf("%d of %d commits acknowledged in a minute", ack.Load(), target)
	}
	cutAt := ack.Load()
	var tear *rand.Rand
	if r.rng.Intn(2) == 0 {
		tear = rand.New(rand.NewSource(r.rng.Int63()))
		r.st.torn++
	}
	cut := r.disk.PowerCut(tear)
	cutDone.Store(true)
	close(stop)
	wg.Wait()
	r.st.cuts++
	if r.t.Failed() {
		r.t.FailNow()
	}
	r.close()
	for _, c := range made {
		r.commits[c.id] = c
	}

	r.open(cut)
	r.checkAcknowledged(made, barriers, cutAt)
	r.checkState()
	r.commitAfterRestart()
}

// commit makes one commit on a random database: a unique key, and sometimes a
// hot key set or deleted; with Sync half of the time.
func (r *powerCutRun) commit(rng *rand.Rand, cutDone *atomic.Bool) (*pcCommit, error) {
	n := r.next.Add(1)
	c := &pcCommit{
		db:     r.dbs[rng.Intn(len(r.dbs))],
		unique: []string{fmt.Sprintf("d%d", n%4), fmt.Sprintf("u%d", n)},
		value:  []byte(fmt.Sprintf("v%d-%d", n, rng.Int63())),
		sync:   rng.Intn(2) == 0,
	}
	db, _ := r.in.DatabaseByID(c.db)
	tx := db.Begin()
	s := tx.Store("s").SetPath(c.unique, c.value)
	if rng.Intn(2) == 0 {
		c.hot = fmt.Sprintf("hot%d", rng.Intn(3))
		c.hotDel = rng.Intn(5) == 0
		if c.hotDel {
			s.Delete([]string{c.hot})
		} else {
			s.Set(c.hot, c.value)
		}
	}
	d := Journal
	if c.sync {
		d = Sync
	}
	c.afterCut = cutDone.Load()
	var err error
	c.id, err = tx.Commit(d)
	return c, err
}

func (r *powerCutRun) present(id ID) bool {
	r.t.Helper()
	_, err := r.in.Entry(id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		r.fatalf("reading entry %s: %v", id.Short(), err)
	}
	return err == nil
}

// checkAcknowledged: what was promised durable before the cut is there; what
// started after it is not.
func (r *powerCutRun) checkAcknowledged(made []*pcCommit, barriers []pcBarrier, cutAt uint64) {
	r.t.Helper()
	var covered uint64 // commits acknowledged up to here are behind a SyncJournal that returned
	for _, b := range barriers {
		if b.ack <= cutAt {
			covered = max(covered, b.covers)
		}
	}
	for _, c := range made {
		required := c.ack <= cutAt && (c.sync || c.ack <= covered)
		ok := r.present(c.id)
		switch {
		case required && !ok:
			r.fatalf("commit %s acknowledged (sync=%v) before the cut is lost", c.id.Short(), c.sync)
		case c.afterCut && ok:
			r.fatalf("commit %s made after the cut is on the cut disk", c.id.Short())
		case !required && !ok && c.ack <= cutAt:
			r.st.lost++
		case !required && ok && c.ack <= cutAt:
			r.st.unpromisedKept++
		}
		r.st.checked++
		if required {
			r.st.required++
		}
	}
	for id := range r.mustHave {
		if !r.present(id) {
			r.fatalf("entry %s, durable before this cut, is lost", id.Short())
		}
	}
}

// checkState: every commit is whole or absent, hot keys hold the latest surviving
// write, each log is consistent, and the state equals a fresh replay.
func (r *powerCutRun) checkState() {
	r.t.Helper()
	heights := map[ID]uint64{}
	for _, dbID := range r.dbs {
		db, ok := r.in.DatabaseByID(dbID)
		if !ok {
			r.fatalf("database %s is lost", dbID.Short())
		}
		r.checkLog(db, heights)
	}
	latestHot := map[string]*pcCommit{} // db id + key -> latest surviving write
	for _, c := range r.commits {
		db, _ := r.in.DatabaseByID(c.db)
		n, err := db.Get("s", c.unique)
		_, ok := heights[c.id]
		switch {
		case ok && (err != nil || !bytes.Equal(n.Value, c.value)):
			r.fatalf("commit %s is stored but its key %v reads %q, %v; want %q", c.id.Short(), c.unique, n.Value, err, c.value)
		case !ok && !errors.Is(err, ErrNotFound):
			r.fatalf("commit %s is absent but its key %v reads %q, %v", c.id.Short(), c.unique, n.Value, err)
		}
		if ok {
			r.mustHave[c.id] = true
			k := c.db.String() + c.hot
			if l := latestHot[k]; c.hot != "" && (l == nil || heights[c.id] > heights[l.id]) {
				latestHot[k] = c
			}
		}
	}
	for _, c := range latestHot {
		db, _ := r.in.DatabaseByID(c.db)
		n, err := db.Get("s", []string{c.hot})
		if c.hotDel && !errors.Is(err, ErrNotFound) || !c.hotDel && (err != nil || !bytes.Equal(n.Value, c.value)) {
			r.fatalf("%s reads %q, %v; the latest surviving write (%s, delete=%v) set %q", c.hot, n.Value, err, c.id.Short(), c.hotDel, c.value)
		}
	}
	r.checkReplay()
}

// checkLog: every parent of a stored entry is stored, and the tips, height and
// count follow from the log. It records each entry's height.
func (r *powerCutRun) checkLog(db *Database, heights map[ID]uint64) {
	r.t.Helper()
	var log []LogEntry
	if err := db.Log(func(e LogEntry) bool { log = append(log, e); return true }); err != nil {
		r.fatalf("log of %s: %v", db.Name(), err)
	}
	isParent := map[ID]bool{}
	var maxH uint64
	for _, e := range log {
		heights[e.ID] = e.Height
		maxH = max(maxH, e.Height)
		for _, p := range e.Parents {
			isParent[p] = true
			if !r.present(p) {
				r.fatalf("entry %s is stored without its parent %s", e.ID.Short(), p.Short())
			}
		}
	}
	var tips []ID
	for _, e := range log {
		if !isParent[e.ID] {
			tips = append(tips, e.ID)
		}
	}
	info := db.Info()
	if !slices.Equal(info.Tips, sortIDs(tips)) || info.Height != maxH || info.Entries != uint64(len(log)) {
		r.fatalf("database %s: tips %v, height %d, %d entries; its log of %d entries gives tips %v, height %d",
			db.Name(), info.Tips, info.Height, info.Entries, len(log), tips, maxH)
	}
}

// checkReplay applies the entries that survived to the replica and compares the
// materialised state (path records, history, conflicts) byte for byte: the state
// after a restart is what a replay of its entries gives.
func (r *powerCutRun) checkReplay() {
	r.t.Helper()
	for _, dbID := range r.dbs {
		db, _ := r.in.DatabaseByID(dbID)
		var raws [][]byte
		err := db.Entries(0, func(id ID, raw []byte) bool {
			if !r.replicated[id] {
				r.replicated[id] = true
				raws = append(raws, bytes.Clone(raw))
			}
			return true
		})
		if err != nil {
			r.fatalf("listing the entries of %s: %v", db.Name(), err)
		}
		res, err := r.replica.Apply("replay", raws...)
		if err != nil || len(res.Rejected) > 0 || len(res.Applied) != len(raws) {
			r.fatalf("replaying %d entries of %s: applied %d, rejected %v, %v", len(raws), db.Name(), len(res.Applied), res.Rejected, err)
		}
		replayed, _ := r.replica.DatabaseByID(dbID)
		if !bytes.Equal(kvDump(r.in, dbID), kvDump(r.replica, dbID)) {
			r.fatalf("%s differs from a replay of its entries:\n got %v\nwant %v", db.Name(), engineDump(r.t, db), engineDump(r.t, replayed))
		}
		if got, want := db.Info(), replayed.Info(); !slices.Equal(got.Tips, want.Tips) || got.Height != want.Height || got.Entries != want.Entries {
			r.fatalf("%s: tips, height or count differ from a replay of its entries: %+v, want %+v", db.Name(), got, want)
		}
	}
}

// commitAfterRestart: the reopened instance takes a commit on every database,
// which the next cut must keep.
func (r *powerCutRun) commitAfterRestart() {
	r.t.Helper()
	for _, dbID := range r.dbs {
		n := r.next.Add(1)
		c := &pcCommit{db: dbID, unique: []string{"restart", fmt.Sprintf("u%d", n)}, value: []byte(fmt.Sprintf("after cut %d", r.cutNo)), sync: true}
		db, _ := r.in.DatabaseByID(dbID)
		tx := db.Begin()
		tx.Store("s").SetPath(c.unique, c.value)
		id, err := tx.Commit(Sync)
		if err != nil {
			r.fatalf("committing after the restart: %v", err)
		}
		c.id = id
		if got := getString(r.t, db, "s", c.unique...); got != string(c.value) {
			r.fatalf("after the restart %v reads %q, want %q", c.unique, got, c.value)
		}
		r.commits[id] = c
		r.mustHave[id] = true
	}
}

// TestSyncJournalCallsShareFsyncs: concurrent SyncJournal calls on a data
// directory go through the group commit, so they share fsyncs.
func TestSyncJournalCallsShareFsyncs(t *testing.T) {
	store, err := kv.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	in, err := Open(store, Options{Identity: NewIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	before := in.Stats()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := in.SyncJournal(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	syncs := in.Stats().Syncs - before.Syncs
	if syncs == 0 || syncs >= 400 {
		t.Fatalf("400 SyncJournal calls made %d syncs; want grouping", syncs)
	}
	t.Logf("400 SyncJournal calls, %d syncs", syncs)
}
