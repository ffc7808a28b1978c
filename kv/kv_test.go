package kv

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"
)

func TestOpenInUse(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := Open(dir); !errors.Is(err, ErrInUse) {
		t.Fatalf("second open: %v, want ErrInUse", err)
	}
}

func TestWriteSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	db, _ := Open(dir)
	var b Batch
	b.Put([]byte("a"), []byte("1"))
	if err := db.Write(&b, true); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, err := db.Get([]byte("a")); err != nil || string(v) != "1" {
		t.Fatalf("get = %q, %v", v, err)
	}
	if _, err := db.Get([]byte("b")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
}

// TestStagingMatchesWritten: reads through a Staging equal reads of the store after
// the staged batch is written, for random puts and deletes.
func TestStagingMatchesWritten(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		db, _ := OpenMemory()
		defer db.Close()
		keys := rapid.SampledFrom([]string{"pa", "pb", "pc", "pd", "q"})
		var base Batch
		for _, k := range rapid.SliceOf(keys).Draw(rt, "base") {
			base.Put([]byte(k), []byte("base-"+k))
		}
		db.Write(&base, false)
		s := NewStaging(db)
		for i, n := 0, rapid.IntRange(0, 10).Draw(rt, "n"); i < n; i++ {
			k := []byte(keys.Draw(rt, "k"))
			if rapid.Bool().Draw(rt, "del") {
				s.Delete(k)
			} else {
				s.Put(k, []byte(fmt.Sprint("v", i)))
			}
		}
		type view struct {
			all  []string
			seek []string
		}
		read := func(r Reader) view {
			var v view
			for _, rev := range []bool{false, true} {
				r.Iterate([]byte("p"), rev, func(k, val []byte) bool {
					v.all = append(v.all, string(k)+"="+string(val))
					return true
				})
			}
			for _, k := range []string{"p", "pa", "pb", "pbb", "pc", "pd", "pz"} {
				for _, rev := range []bool{false, true} {
					kk, vv, err := r.Seek([]byte("p"), []byte(k), rev)
					v.seek = append(v.seek, fmt.Sprint(string(kk), string(vv), err))
				}
				g, err := r.Get([]byte(k))
				v.seek = append(v.seek, fmt.Sprint(string(g), err))
			}
			return v
		}
		staged := read(s)
		if err := db.Write(s.Batch(), false); err != nil {
			rt.Fatal(err)
		}
		written := read(db)
		if !slices.Equal(staged.all, written.all) || !slices.Equal(staged.seek, written.seek) {
			rt.Fatalf("staging view differs:\n%v\n%v", staged, written)
		}
	})
}
