package kv

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eidefs/eidefs/kv/kvtest"
)

// TestPowerCutAcrossJournalSwitches cuts the power while writers fill a store
// whose memtable is small, so goleveldb switches journals, flushes tables and
// compacts all the time, and checks after each restart: every write acknowledged
// with sync, or followed by an empty sync write (a barrier) that returned, is
// there; each writer's batches survive whole and as a prefix of what it wrote, with
// no gap. Runs use the seeds base, base+1, … (EIDEFS_POWERCUT_SEED sets base,
// logged); EIDEFS_POWERCUT_CUTS raises the number of cuts (default 200; this test
// makes half as many).
func TestPowerCutAcrossJournalSwitches(t *testing.T) {
	cuts := kvtest.EnvInt(t, "EIDEFS_POWERCUT_CUTS", 200) / 2
	base := int64(kvtest.EnvInt(t, "EIDEFS_POWERCUT_SEED", 1))
	t.Logf("seeds from %d (EIDEFS_POWERCUT_SEED), %d cuts", base, cuts)
	o := Options{Memtable: 4 << 10}
	start := time.Now()
	done, checked, lost := 0, 0, 0
	for seed := base; done < cuts; seed++ {
		rng := rand.New(rand.NewSource(seed))
		disk := kvtest.NewDisk()
		next := make([]int, 2+rng.Intn(3)) // per writer, the next batch number
		for rounds := 1 + rng.Intn(3); rounds > 0 && done < cuts; rounds-- {
			db, err := OpenStorage(disk, o)
			if err != nil {
				t.Fatalf("seed %d: opening: %v", seed, err)
			}
			var tear *rand.Rand
			if rng.Intn(2) == 0 {
				tear = rand.New(rand.NewSource(rng.Int63()))
			}
			acked, barriers, cutAt := writeUntilCut(t, db, rng, next, func() { disk = disk.PowerCut(tear) })
			db.Compact() // no compaction left running into Close
			db.Close()
			done++
			db, err = OpenStorage(disk, o)
			if err != nil {
				t.Fatalf("seed %d: opening after the cut: %v", seed, err)
			}
			var covered uint64 // batches acknowledged up to here are behind a barrier that returned
			for _, b := range barriers {
				if b.ack <= cutAt {
					covered = max(covered, b.covers)
				}
			}
			for w := range next {
				kept := survivingPrefix(t, db, seed, w, next[w], acked[w])
				if kept < next[w] {
					t.Fatalf("seed %d: writer %d: batch %d, there after the last restart, is lost", seed, w, kept)
				}
				for _, a := range acked[w] {
					if a.n >= kept && a.ack <= cutAt && (a.sync || a.ack <= covered) {
						t.Fatalf("seed %d: writer %d batch %d (sync=%v) acknowledged before the cut is lost; %d kept", seed, w, a.n, a.sync, kept)
					}
					if a.n >= kept && a.ack <= cutAt {
						lost++
					}
					checked++
				}
				next[w] = kept
			}
			db.Compact() // no compaction left running into Close
			db.Close()
		}
	}
	t.Logf("%d cuts, %d batches checked, %d unpromised lost, in %v", done, checked, lost, time.Since(start).Round(time.Millisecond))
}

type ackedBatch struct {
	n    int    // the writer's batch number
	ack  uint64 // order of acknowledgement
	sync bool
}

// barrier is an empty sync write: once it returned (at ack), the batches
// acknowledged up to covers before it started are durable.
type barrier struct{ covers, ack uint64 }

// writeUntilCut runs one writer per element of next, each writing batches
// next[w], next[w]+1, …, until cut (called after a random number of
// acknowledgements) has run. It returns each writer's acknowledged batches, the
// barriers and the acknowledgement count at the cut.
func writeUntilCut(t *testing.T, db *DB, rng *rand.Rand, next []int, cut func()) ([][]ackedBatch, []barrier, uint64) {
	var (
		ack      atomic.Uint64
		wg       sync.WaitGroup
		mu       sync.Mutex
		barriers []barrier
	)
	stop := make(chan struct{})
	acked := make([][]ackedBatch, len(next))
	for w := range next {
		wrng := rand.New(rand.NewSource(rng.Int63()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := next[w]; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if wrng.Intn(10) == 0 {
					covers := ack.Load()
					if err := db.Write(&Batch{}, true); err != nil {
						t.Errorf("barrier: %v", err)
						return
					}
					b := barrier{covers: covers, ack: ack.Add(1)}
					mu.Lock()
					barriers = append(barriers, b)
					mu.Unlock()
				}
				var b Batch
				for j := 0; j < batchLen(w, n); j++ {
					b.Put(batchKey(w, n, j), batchValue(w, n, j))
				}
				b.Put([]byte(fmt.Sprintf("w%d/last", w)), []byte(strconv.Itoa(n)))
				s := wrng.Intn(3) == 0
				if err := db.Write(&b, s); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				acked[w] = append(acked[w], ackedBatch{n: n, ack: ack.Add(1), sync: s})
			}
		}()
	}
	for target := uint64(rng.Intn(120)); ack.Load() < target && !t.Failed(); {
		time.Sleep(50 * time.Microsecond)
	}
	at := ack.Load()
	cut()
	close(stop)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return acked, barriers, at
}

// survivingPrefix checks that writer w's batches, up to the last it wrote after
// first, survive whole and as a prefix, and that w's last key names the
// prefix's end; it returns that end.
func survivingPrefix(t *testing.T, db *DB, seed int64, w, first int, acked []ackedBatch) int {
	t.Helper()
	end := first
	if len(acked) > 0 {
		end = acked[len(acked)-1].n + 1
	}
	kept := 0
	for n := 0; n < end; n++ {
		whole, none := true, true
		for j := 0; j < batchLen(w, n); j++ {
			v, err := db.Get(batchKey(w, n, j))
			switch {
			case errors.Is(err, ErrNotFound):
				whole = false
			case err != nil:
				t.Fatalf("seed %d: reading: %v", seed, err)
			case !bytes.Equal(v, batchValue(w, n, j)):
				t.Fatalf("seed %d: writer %d batch %d key %d holds the wrong bytes", seed, w, n, j)
			default:
				none = false
			}
		}
		switch {
		case whole && kept == n:
			kept = n + 1
		case whole:
			t.Fatalf("seed %d: writer %d: batch %d survived but batch %d before it did not", seed, w, n, kept)
		case !none:
			t.Fatalf("seed %d: writer %d: batch %d survived in part", seed, w, n)
		}
	}
	last, err := db.Get([]byte(fmt.Sprintf("w%d/last", w)))
	switch {
	case kept == 0 && !errors.Is(err, ErrNotFound):
		t.Fatalf("seed %d: writer %d: nothing survived but its last key reads %q, %v", seed, w, last, err)
	case kept > 0 && (err != nil || string(last) != strconv.Itoa(kept-1)):
		t.Fatalf("seed %d: writer %d: batches up to %d survived but its last key reads %q, %v", seed, w, kept-1, last, err)
	}
	return kept
}

// batchLen is how many keys writer w's batch n puts (besides its last key).
func batchLen(w, n int) int { return 1 + (7*n+w)%4 }

func batchKey(w, n, j int) []byte { return []byte(fmt.Sprintf("w%d/%08d/%d", w, n, j)) }

// batchValue is 20 to 519 bytes that depend on the key, so a read checks them.
func batchValue(w, n, j int) []byte {
	r := rand.New(rand.NewSource(int64(w)<<40 | int64(n)<<8 | int64(j)))
	v := make([]byte, 20+r.Intn(500))
	r.Read(v)
	return v
}
