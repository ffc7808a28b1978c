package engine

import (
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/eidefs/eidefs/kv"
)

func diskInstance(b *testing.B) *Instance {
	b.Helper()
	dir := b.TempDir()
	store, err := kv.Open(filepath.Join(dir, "db"))
	if err != nil {
		b.Fatal(err)
	}
	in, err := Open(store, Options{Identity: NewIdentity(), BlobDir: filepath.Join(dir, "blobs")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close(); store.Close() })
	return in
}

// BenchmarkCommit: commits/s of one small key each, on disk, by 1 or 8 concurrent
// committers, journaled (survives kill -9) or fsynced (survives power loss).
func BenchmarkCommit(b *testing.B) {
	for _, d := range []struct {
		name string
		d    Durability
	}{{"journal", Journal}, {"sync", Sync}} {
		for _, workers := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/committers=%d", d.name, workers), func(b *testing.B) {
				in := diskInstance(b)
				db, _ := in.CreateDatabase("bench", "")
				before := in.Stats()
				var wg sync.WaitGroup
				per := b.N / workers
				b.ResetTimer()
				for w := 0; w < workers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < per; i++ {
							tx := db.Begin()
							tx.Store("s").Set("k"+strconv.Itoa(w)+"-"+strconv.Itoa(i%1000), []byte("some small value"))
							if _, err := tx.Commit(d.d); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				st := in.Stats()
				b.ReportMetric(float64(per*workers)/b.Elapsed().Seconds(), "commits/s")
				if g := st.Groups - before.Groups; g > 0 {
					b.ReportMetric(float64(st.Commits-before.Commits)/float64(g), "commits/write")
				}
			})
		}
	}
}

// BenchmarkGet: reading a key costs the same with 100 or 100,000 entries of history.
func BenchmarkGet(b *testing.B) {
	for _, history := range []int{100, 100_000} {
		b.Run(fmt.Sprintf("history=%d", history), func(b *testing.B) {
			in := diskInstance(b)
			db, _ := in.CreateDatabase("bench", "")
			for i := 0; i < history; i += 100 {
				tx := db.Begin()
				st := tx.Store("s")
				for j := 0; j < 100; j++ {
					st.SetPath([]string{"dir", "k" + strconv.Itoa((i+j)%5000)}, []byte("value "+strconv.Itoa(i+j)))
				}
				if _, err := tx.Commit(Journal); err != nil {
					b.Fatal(err)
				}
			}
			// Keep the op count equal to the history size: one entry per op above is
			// grouped 100 to an entry for setup speed; what matters is the ops.
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := db.Get("s", []string{"dir", "k" + strconv.Itoa(i%min(history, 5000))}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkApply: foreign entries applied per second (what bootstrap rests on).
// BenchmarkApply: foreign entries applied per second, 500 per call, as a sync
// receives them: "sequential" verifies a batch, then applies it; "pipelined"
// verifies the next batch while the previous one is applied (netsync's receive).
func BenchmarkApply(b *testing.B) {
	src := diskInstance(b)
	db, _ := src.CreateDatabase("bench", "")
	const n = 20_000
	for i := 0; i < n; i++ {
		tx := db.Begin()
		tx.Store("s").Set("k"+strconv.Itoa(i%2000), []byte("value "+strconv.Itoa(i)))
		if _, err := tx.Commit(Journal); err != nil {
			b.Fatal(err)
		}
	}
	var raws [][]byte
	db.Entries(0, func(_ ID, raw []byte) bool { raws = append(raws, raw); return true })
	for _, pipelined := range []bool{false, true} {
		b.Run(map[bool]string{false: "sequential", true: "pipelined"}[pipelined], func(b *testing.B) {
			applied := 0
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dst := diskInstance(b)
				b.StartTimer()
				batches := make(chan Verified, 2)
				go func() {
					defer close(batches)
					for j := 0; pipelined && j < len(raws); j += 500 {
						batches <- Verify(raws[j:min(j+500, len(raws))]...)
					}
				}()
				for j := 0; j < len(raws); j += 500 {
					var v Verified
					if pipelined {
						v = <-batches
					} else {
						v = Verify(raws[j:min(j+500, len(raws))]...)
					}
					res, err := dst.ApplyVerified("peer", v)
					if err != nil || len(res.Rejected) > 0 {
						b.Fatal(err, res.Rejected)
					}
					applied += len(res.Applied)
				}
			}
			b.ReportMetric(float64(applied)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}
