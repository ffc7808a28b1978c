package engine

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/eidefs/eidefs/kv"
)

func TestValuesSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	id := NewIdentity()
	open := func() (*kv.DB, *Instance) {
		store, err := kv.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		in, err := Open(store, Options{Identity: id})
		if err != nil {
			t.Fatal(err)
		}
		return store, in
	}
	store, in := open()
	db, _ := in.CreateDatabase("notes", "")
	tx := db.Begin()
	tx.Store("todo").Set("milk", []byte("2 litres"))
	first := mustCommit(t, tx)
	if _, err := kv.Open(dir); !errors.Is(err, kv.ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
	in.Close()
	store.Close()

	store, in = open()
	defer store.Close()
	defer in.Close()
	db, err := in.Database("notes")
	if err != nil {
		t.Fatal(err)
	}
	if got := getString(t, db, "todo", "milk"); got != "2 litres" {
		t.Fatalf("after reopen: %q", got)
	}
	if tips := db.Tips(); !slices.Equal(tips, []ID{first}) {
		t.Fatalf("tips %v, want [%s]", tips, first.Short())
	}
	tx = db.Begin()
	tx.Store("todo").Set("eggs", []byte("6"))
	mustCommit(t, tx)
	if got := names(t, db, "todo"); !slices.Equal(got, []string{"eggs", "milk"}) {
		t.Fatalf("ls = %v", got)
	}
}

func TestConcurrentCommitsAreGrouped(t *testing.T) {
	in := newInstance(t, nil)
	db, _ := in.CreateDatabase("d", "")
	before := in.Stats()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				tx := db.Begin()
				tx.Store("s").Set(string(rune('a'+w)), []byte{byte(i)})
				if _, err := tx.Commit(Sync); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	st := in.Stats()
	commits, groups := st.Commits-before.Commits, st.Groups-before.Groups
	if commits != 400 {
		t.Fatalf("commits = %d", commits)
	}
	if groups >= commits {
		t.Fatalf("%d commits took %d kv writes; want grouping", commits, groups)
	}
	// One chain: every commit has the previous ones as ancestors.
	if tips := db.Tips(); len(tips) != 1 {
		t.Fatalf("tips = %d, want 1", len(tips))
	}
	t.Logf("%d commits in %d kv writes", commits, groups)
}

func TestIndependentStoreRootsMerge(t *testing.T) {
	a, b := newInstance(t, nil), newInstance(t, nil)
	da, _ := a.CreateDatabase("d", "")
	da.Grant(WildcardKey, "", PermWrite)
	syncAll(t, a, b)
	db, _ := b.DatabaseByID(da.ID())
	// Both sides create store "s" without knowing of the other.
	tx := da.Begin()
	tx.Store("s").Set("from-a", []byte("1"))
	mustCommit(t, tx)
	tx = db.Begin()
	tx.Store("s").Set("from-b", []byte("2"))
	mustCommit(t, tx)
	syncAll(t, a, b)
	syncAll(t, b, a)
	for _, d := range []*Database{da, db} {
		if got := names(t, d, "s"); !slices.Equal(got, []string{"from-a", "from-b"}) {
			t.Fatalf("ls s = %v", got)
		}
	}
}

func TestRecreatedMapStaysEmptyOnReplicas(t *testing.T) {
	a, b := newInstance(t, nil), newInstance(t, nil)
	da, _ := a.CreateDatabase("d", "")
	da.Grant(WildcardKey, "", PermWrite)
	tx := da.Begin()
	tx.Store("s").SetPath([]string{"dir", "old"}, []byte("1"))
	mustCommit(t, tx)
	syncAll(t, a, b)
	db, _ := b.DatabaseByID(da.ID())
	tx = db.Begin()
	tx.Store("s").Clear([]string{"dir"}) // rm -r dir; mkdir dir
	mustCommit(t, tx)
	syncAll(t, b, a)
	for _, d := range []*Database{da, db} {
		if got := names(t, d, "s", "dir"); len(got) != 0 {
			t.Fatalf("dir = %v, want empty", got)
		}
	}
}

func TestEntriesAfterSendsOnlyWhatIsMissing(t *testing.T) {
	a, b := newInstance(t, nil), newInstance(t, nil)
	da, _ := a.CreateDatabase("d", "")
	da.Grant(WildcardKey, "", PermWrite)
	for i := 0; i < 50; i++ {
		tx := da.Begin()
		tx.Store("s").Set("k", []byte{byte(i)})
		mustCommit(t, tx)
	}
	var all [][]byte
	if err := da.EntriesAfter(VersionVector{}, func(_ ID, raw []byte) bool { all = append(all, raw); return true }); err != nil {
		t.Fatal(err)
	}
	if len(all) != int(da.Count()) {
		t.Fatalf("from empty: %d entries, want %d", len(all), da.Count())
	}
	if res, _ := b.Apply("a", all...); len(res.Applied) != len(all) {
		t.Fatalf("applied %d of %d (parents first?)", len(res.Applied), len(all))
	}
	db, _ := b.DatabaseByID(da.ID())
	tx := da.Begin()
	tx.Store("s").Set("new", []byte("x"))
	newID := mustCommit(t, tx)
	var got []ID
	da.EntriesAfter(db.VersionVector(), func(id ID, _ []byte) bool { got = append(got, id); return true })
	if len(got) != 1 || got[0] != newID {
		t.Fatalf("after sync: %v, want just the new entry", got)
	}
	// And b, which has everything a had before, lacks nothing b could send.
	got = nil
	db.EntriesAfter(da.VersionVector(), func(id ID, _ []byte) bool { got = append(got, id); return true })
	if len(got) != 0 {
		t.Fatalf("b would send %d entries a already has", len(got))
	}
	vv := da.VersionVector()
	back, err := DecodeVersionVector(EncodeVersionVector(vv))
	if err != nil || len(back) != len(vv) || back[a.Identity().Public()] != vv[a.Identity().Public()] {
		t.Fatalf("version vector round trip: %v %v", back, err)
	}
}

func TestSnapshotAt(t *testing.T) {
	in := newInstance(t, nil)
	db, _ := in.CreateDatabase("d", "")
	tx := db.Begin()
	tx.Store("s").Set("k", []byte("one")).SetPath([]string{"dir", "x"}, []byte(strings.Repeat("big", 1000)))
	first := mustCommit(t, tx)
	tx = db.Begin()
	tx.Store("s").Set("k", []byte("two")).Delete([]string{"dir"})
	tx.Store("t").Set("new", []byte("3"))
	mustCommit(t, tx)

	snap, err := db.At(first)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := snap.Get("s", []string{"k"}); err != nil || string(n.Value) != "one" {
		t.Fatalf("k at first = %q %v", n.Value, err)
	}
	if n, err := snap.Get("s", []string{"dir", "x"}); err != nil || len(n.Value) != 3000 {
		t.Fatalf("dir/x at first: %d bytes %v", len(n.Value), err)
	}
	if got := snap.Stores(); !slices.Equal(got, []string{"s"}) {
		t.Fatalf("stores at first = %v", got)
	}
	if got := getString(t, db, "s", "k"); got != "two" {
		t.Fatalf("current k = %q", got)
	}
	id, err := db.FindEntry(first.String()[:10])
	if err != nil || id != first {
		t.Fatalf("FindEntry: %v %v", id, err)
	}
}
