package engine

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eidefs/eidefs/kv"
)

// fakeClock returns a clock that advances 1 ms per reading, starting at start.
func fakeClock(start int64) func() time.Time {
	var t atomic.Int64
	t.Store(start)
	return func() time.Time { return time.UnixMilli(t.Add(1)) }
}

func newInstance(t testing.TB, id *Identity) *Instance {
	t.Helper()
	store, err := kv.OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	if id == nil {
		id = NewIdentity()
	}
	in, err := Open(store, Options{Identity: id, Now: fakeClock(1_700_000_000_000)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); store.Close() })
	return in
}

func mustCommit(t testing.TB, tx *Tx) ID {
	t.Helper()
	id, err := tx.Commit(Journal)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func getString(t testing.TB, db *Database, store string, path ...string) string {
	t.Helper()
	n, err := db.Get(store, path)
	if err != nil {
		t.Fatalf("get %s/%s: %v", store, strings.Join(path, "/"), err)
	}
	return string(n.Value)
}

func names(t testing.TB, db *Database, store string, path ...string) []string {
	t.Helper()
	var out []string
	err := db.List(store, path, func(d DirEntry) bool {
		n := d.Name
		if d.Kind == OpMap {
			n += "/"
		}
		out = append(out, n)
		return true
	})
	if err != nil {
		t.Fatalf("list %s/%s: %v", store, strings.Join(path, "/"), err)
	}
	return out
}

func TestSetGetListDelete(t *testing.T) {
	in := newInstance(t, nil)
	db, err := in.CreateDatabase("notes", "")
	if err != nil {
		t.Fatal(err)
	}
	tx := db.Begin()
	tx.Store("todo").Set("milk", []byte("2 litres")).SetPath([]string{"shop", "fruit", "apples"}, []byte("3"))
	mustCommit(t, tx)

	if got := getString(t, db, "todo", "milk"); got != "2 litres" {
		t.Fatalf("milk = %q", got)
	}
	if got := names(t, db, "todo"); !slices.Equal(got, []string{"milk", "shop/"}) {
		t.Fatalf("ls todo = %v", got)
	}
	if got := names(t, db, "todo", "shop", "fruit"); !slices.Equal(got, []string{"apples"}) {
		t.Fatalf("ls todo/shop/fruit = %v", got)
	}
	if _, err := db.Get("todo", []string{"milk", "x"}); !errors.Is(err, ErrNotDir) {
		t.Fatalf("get under a value: %v, want ErrNotDir", err)
	}
	if got := db.Stores(); !slices.Equal(got, []string{"todo"}) {
		t.Fatalf("stores = %v", got)
	}

	tx = db.Begin()
	tx.Store("todo").Delete([]string{"milk"})
	mustCommit(t, tx)
	if _, err := db.Get("todo", []string{"milk"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted key: %v", err)
	}
	if got := db.Info().Entries; got != 3 {
		t.Fatalf("entries = %d, want 3 (root + 2)", got)
	}
}

func TestDeleteAndRecreateMapIsEmpty(t *testing.T) {
	in := newInstance(t, nil)
	db, _ := in.CreateDatabase("d", "")
	tx := db.Begin()
	tx.Store("s").SetPath([]string{"dir", "a"}, []byte("1")).SetPath([]string{"dir", "b"}, []byte("2"))
	mustCommit(t, tx)
	tx = db.Begin()
	tx.Store("s").Clear([]string{"dir"})
	mustCommit(t, tx)
	if got := names(t, db, "s", "dir"); len(got) != 0 {
		t.Fatalf("recreated dir lists %v, want empty", got)
	}
	tx = db.Begin()
	tx.Store("s").SetPath([]string{"dir", "c"}, []byte("3"))
	mustCommit(t, tx)
	if got := names(t, db, "s", "dir"); !slices.Equal(got, []string{"c"}) {
		t.Fatalf("dir lists %v, want [c]", got)
	}
}

func TestLargeValue(t *testing.T) {
	in := newInstance(t, nil)
	db, _ := in.CreateDatabase("d", "")
	big := []byte(strings.Repeat("x", 100_000))
	tx := db.Begin()
	tx.Store("s").Set("big", big)
	mustCommit(t, tx)
	if got := getString(t, db, "s", "big"); got != string(big) {
		t.Fatalf("big value: got %d bytes", len(got))
	}
	n, _ := db.Stat("s", []string{"big"})
	if n.Size != int64(len(big)) || n.Value != nil {
		t.Fatalf("stat: size %d value %d bytes", n.Size, len(n.Value))
	}
	tx = db.Begin()
	tx.Store("s").Set("big", []byte("small"))
	mustCommit(t, tx)
	if got := getString(t, db, "s", "big"); got != "small" {
		t.Fatalf("after shrink: %q", got)
	}
}

// sync copies every entry of src's databases to dst.
func syncAll(t testing.TB, src, dst *Instance) {
	t.Helper()
	for _, info := range src.Databases() {
		db, _ := src.DatabaseByID(info.ID)
		var raws, blobs [][]byte
		db.Entries(0, func(_ ID, raw []byte) bool {
			raws = append(raws, raw)
			bs, err := src.Blobs(raw)
			if err != nil {
				t.Fatal(err)
			}
			blobs = append(blobs, bs...)
			return true
		})
		res, err := dst.ApplyVerified("peer", Verify(raws...).WithBlobs(blobs))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Rejected) > 0 {
			t.Fatalf("rejected: %v", res.Rejected[0].Err)
		}
	}
}

func TestConcurrentWritesConvergeWithConflict(t *testing.T) {
	a, b := newInstance(t, nil), newInstance(t, nil)
	da, _ := a.CreateDatabase("notes", "")
	if _, err := da.Grant(b.Identity().Public().String(), "b", PermWrite); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, b)
	db, err := b.Database("notes")
	if err != nil {
		t.Fatal(err)
	}
	ta := da.Begin()
	ta.Store("s").Set("k", []byte("from a"))
	mustCommit(t, ta)
	tb := db.Begin()
	tb.Store("s").Set("k", []byte("from b"))
	mustCommit(t, tb)
	syncAll(t, a, b)
	syncAll(t, b, a)
	va, vb := getString(t, da, "s", "k"), getString(t, db, "s", "k")
	if va != vb {
		t.Fatalf("diverged: a=%q b=%q", va, vb)
	}
	for _, d := range []*Database{da, db} {
		var cs []Conflict
		d.Conflicts(func(c Conflict) bool { cs = append(cs, c); return true })
		if len(cs) != 1 || cs[0].Store != "s" || !slices.Equal(cs[0].Path, []string{"k"}) || string(cs[0].Value) == va {
			t.Fatalf("conflicts = %+v", cs)
		}
	}
	// Writing the key again after seeing both resolves the conflict.
	tx := da.Begin()
	tx.Store("s").Set("k", []byte("merged"))
	mustCommit(t, tx)
	da.Conflicts(func(c Conflict) bool {
		if !c.Resolved {
			t.Errorf("conflict not resolved after a new write: %+v", c)
		}
		return true
	})
}
