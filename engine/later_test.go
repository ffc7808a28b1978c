package engine

import (
	"errors"
	"slices"
	"testing"

	"github.com/eidefs/eidefs/kv"
)

func version(t *testing.T, db *Database, store string, path ...string) ID {
	t.Helper()
	n, err := db.Stat(store, path)
	if err != nil {
		t.Fatal(err)
	}
	return n.Entry
}

func logOps(t *testing.T, db *Database) []int {
	t.Helper()
	var ops []int
	db.Log(func(e LogEntry) bool { ops = append(ops, e.Ops); return true })
	return ops
}

// TestDeleteLaterIsOneEntry: deferred deletes read as before until flushed, then
// are one entry.
func TestDeleteLaterIsOneEntry(t *testing.T) {
	in := newInstance(t, nil)
	db, _ := in.CreateDatabase("notes", "")
	tx := db.Begin()
	for _, k := range []string{"a", "b", "c", "d"} {
		tx.Store("s").SetPath([]string{"dir", k}, []byte(k))
	}
	mustCommit(t, tx)
	count := db.Count()
	for _, k := range []string{"a", "b", "c"} {
		if err := db.DeleteLater("s", []string{"dir", k}, version(t, db, "s", "dir", k), "test"); err != nil {
			t.Fatal(err)
		}
	}
	if got := names(t, db, "s", "dir"); !slices.Equal(got, []string{"a", "b", "c", "d"}) {
		t.Fatalf("before the flush: %v", got)
	}
	sub := in.Subscribe()
	defer sub.Close()
	if err := db.FlushDeletes(Journal); err != nil {
		t.Fatal(err)
	}
	if got := names(t, db, "s", "dir"); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("after the flush: %v", got)
	}
	if db.Count() != count+1 || logOps(t, db)[0] != 3 {
		t.Fatalf("entries %d -> %d, newest has %d ops; want one entry of 3", count, db.Count(), logOps(t, db)[0])
	}
	if ev := <-sub.C; !ev.Local || ev.Origin != "test" || len(ev.Changes) != 3 {
		t.Fatalf("event %+v", ev)
	}
	if err := db.FlushDeletes(Journal); err != nil || db.Count() != count+1 {
		t.Fatalf("a second flush: %v, %d entries", err, db.Count())
	}
	if err := db.DeleteLater("s", nil, ID{}, ""); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("a store root: %v", err)
	}
}

// TestDeleteLaterComesBeforeTheNextCommit: a commit to the database commits the
// pending deletes first, in the same write.
func TestDeleteLaterComesBeforeTheNextCommit(t *testing.T) {
	in := newInstance(t, nil)
	db, _ := in.CreateDatabase("notes", "")
	tx := db.Begin()
	tx.Store("s").Set("a", []byte("1")).Set("b", []byte("2"))
	mustCommit(t, tx)
	if err := db.DeleteLater("s", []string{"a"}, version(t, db, "s", "a"), ""); err != nil {
		t.Fatal(err)
	}
	groups := in.Stats().Groups
	tx = db.Begin()
	tx.Store("s").Set("a", []byte("again")) // the delete is older: this wins
	last := mustCommit(t, tx)
	if got := getString(t, db, "s", "a"); got != "again" {
		t.Fatalf("a = %q", got)
	}
	if ops := logOps(t, db); len(ops) != 4 || ops[0] != 1 || ops[1] != 1 {
		t.Fatalf("log ops %v: want the set, the delete, the first commit, the root", ops)
	}
	if g := in.Stats().Groups - groups; g != 1 {
		t.Fatalf("%d writes, want 1", g)
	}
	if tips := db.Tips(); !slices.Equal(tips, []ID{last}) {
		t.Fatalf("tips %v", tips)
	}
}

// TestDeleteLaterLeavesAChangedKey: a key changed since the delete was asked
// for (here by a peer) stays.
func TestDeleteLaterLeavesAChangedKey(t *testing.T) {
	a, b := newInstance(t, nil), newInstance(t, nil)
	dba, _ := a.CreateDatabase("notes", "")
	tx := dba.Begin()
	tx.Store("s").Set("k", []byte("1")).Set("gone", []byte("x"))
	mustCommit(t, tx)
	if _, err := dba.Grant(b.Identity().Public().String(), "b", PermWrite); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, b)
	dbb, _ := b.DatabaseByID(dba.ID())
	if err := dba.DeleteLater("s", []string{"k"}, version(t, dba, "s", "k"), ""); err != nil {
		t.Fatal(err)
	}
	if err := dba.DeleteLater("s", []string{"gone"}, version(t, dba, "s", "gone"), ""); err != nil {
		t.Fatal(err)
	}
	tx = dbb.Begin()
	tx.Store("s").Set("k", []byte("2"))
	mustCommit(t, tx)
	syncAll(t, b, a)
	if err := dba.FlushDeletes(Journal); err != nil {
		t.Fatal(err)
	}
	if got := getString(t, dba, "s", "k"); got != "2" {
		t.Fatalf("k = %q, want the peer's 2", got)
	}
	if _, err := dba.Get("s", []string{"gone"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("gone: %v", err)
	}
}

// TestDeleteLaterSurvivesAKill: a pending delete of a process that dies is
// committed when the store opens again; its record is gone then.
func TestDeleteLaterSurvivesAKill(t *testing.T) {
	dir := t.TempDir()
	id := NewIdentity()
	store, err := kv.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := Open(store, Options{Identity: id})
	db, _ := in.CreateDatabase("notes", "")
	tx := db.Begin()
	tx.Store("s").Set("a", []byte("1")).Set("b", []byte("2")).Set("c", []byte("3"))
	mustCommit(t, tx)
	for _, k := range []string{"a", "c"} {
		if err := db.DeleteLater("s", []string{k}, version(t, db, "s", k), ""); err != nil {
			t.Fatal(err)
		}
	}
	store.Close() // no in.Close: as after kill -9

	store, err = kv.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	in, err = Open(store, Options{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	db, _ = in.Database("notes")
	if got := names(t, db, "s"); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("after reopening: %v", got)
	}
	left := 0
	store.Iterate([]byte{pLater}, false, func(k, v []byte) bool { left++; return true })
	if left != 0 {
		t.Fatalf("%d records left", left)
	}
}
