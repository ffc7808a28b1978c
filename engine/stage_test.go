package engine

import (
	"bytes"
	"testing"

	"github.com/eidefs/eidefs/kv"
)

// TestStagePendingRecords: path records kept decoded in a group's stage are what
// every read sees, however it reads, and what the write stores.
func TestStagePendingRecords(t *testing.T) {
	db, _ := kv.OpenMemory()
	defer db.Close()
	var id ID
	k := pathKey(pPath, id, "s", []string{"a"})
	s := newStage(db)
	if rec, err := getPathRec(s, k); err != nil || rec != nil {
		t.Fatalf("empty store: %v %v", rec, err)
	}
	putPathRec(s, k, &pathRec{K: OpValue, N: 1, V: []byte("x")})
	want := marshal(&pathRec{K: OpValue, N: 1, V: []byte("x")})

	var seen []byte
	s.Iterate(storePrefix(pPath, id, "s"), false, func(_, v []byte) bool { seen = v; return false })
	if !bytes.Equal(seen, want) {
		t.Fatalf("Iterate sees %x, want %x", seen, want)
	}
	putPathRec(s, k, &pathRec{K: OpValue, N: 1, V: []byte("y")})
	if v, err := s.Get(k); err != nil || !bytes.Equal(v, marshal(&pathRec{K: OpValue, N: 1, V: []byte("y")})) {
		t.Fatalf("Get after a second put: %x %v", v, err)
	}

	// A plain write of the key replaces the decoded record.
	s.Put(k, marshal(&pathRec{K: OpValue, N: 1, V: []byte("z")}))
	if rec, _ := getPathRec(s, k); rec == nil || string(rec.V) != "z" {
		t.Fatalf("after Put: %+v", rec)
	}
	putPathRec(s, k, &pathRec{K: OpValue, N: 1, V: []byte("w")})
	if err := db.Write(s.Batch(), false); err != nil {
		t.Fatal(err)
	}
	if rec, _ := getPathRec(db, k); rec == nil || string(rec.V) != "w" {
		t.Fatalf("written: %+v", rec)
	}

	s = newStage(db)
	getPathRec(s, k)
	s.Delete(k)
	if rec, err := getPathRec(s, k); err != nil || rec != nil {
		t.Fatalf("after Delete: %+v %v", rec, err)
	}
}
