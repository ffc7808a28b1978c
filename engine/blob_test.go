package engine

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/eidefs/eidefs/kv"
)

// diskInstanceAt opens an instance over a kv store and blob directory in dir.
func diskInstanceAt(t *testing.T, dir string, id *Identity) (*Instance, func()) {
	t.Helper()
	store, err := kv.Open(filepath.Join(dir, "db"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := Open(store, Options{Identity: id, BlobDir: filepath.Join(dir, "blobs")})
	if err != nil {
		t.Fatal(err)
	}
	return in, func() { in.Close(); store.Close() }
}

func bigValue(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

// A value over BlobMin is kept once, in a read-only blob file named by its hash;
// the entry holds only the reference, reads and reopens return the bytes, and a
// value of BlobMin bytes stays in its entry.
func TestLargeValueIsABlob(t *testing.T) {
	dir, id := t.TempDir(), NewIdentity()
	in, closeIn := diskInstanceAt(t, dir, id)
	db, _ := in.CreateDatabase("d", "")
	big, edge := bigValue(3<<20, 1), bigValue(BlobMin, 2)
	tx := db.Begin()
	tx.Store("s").Set("big", big).Set("edge", edge)
	eid := mustCommit(t, tx)
	raw, _ := in.Entry(eid)
	if len(raw) > BlobMin+4096 {
		t.Fatalf("entry is %d bytes: the large value is inside it", len(raw))
	}
	h := BlobSum(big)
	n, err := db.Open("s", []string{"big"})
	if err != nil || !bytes.Equal(n.Blob, h[:]) || n.Value != nil || n.Size != int64(len(big)) {
		t.Fatalf("Open: blob %x value %d bytes size %d, %v", n.Blob, len(n.Value), n.Size, err)
	}
	p := in.BlobPath(n.Blob)
	fi, err := os.Stat(p)
	if err != nil || fi.Size() != int64(len(big)) || fi.Mode().Perm()&0o222 != 0 {
		t.Fatalf("blob file %s: %v, %v", p, fi, err)
	}
	if n, _ := db.Open("s", []string{"edge"}); n.Blob != nil {
		t.Fatalf("a %d-byte value became a blob", BlobMin)
	}
	if v, err := in.ValueIn(eid, "s", []string{"big"}); err != nil || !bytes.Equal(v, big) {
		t.Fatalf("ValueIn: %d bytes, %v", len(v), err)
	}
	closeIn()

	// A blob a crash left half-written is gone at the next open.
	if err := os.WriteFile(filepath.Join(dir, "blobs", "tmp", "blob-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	in, closeIn = diskInstanceAt(t, dir, id)
	defer closeIn()
	db, _ = in.Database("d")
	if left, _ := os.ReadDir(filepath.Join(dir, "blobs", "tmp")); len(left) != 0 {
		t.Fatalf("left in blobs/tmp after an open: %v", left)
	}
	if got := getString(t, db, "s", "big"); got != string(big) {
		t.Fatalf("after reopen: %d bytes", len(got))
	}
	if got := getString(t, db, "s", "edge"); got != string(edge) {
		t.Fatalf("edge value after reopen: %d bytes", len(got))
	}
	snap, err := db.At(eid)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := snap.Get("s", []string{"big"}); err != nil || !bytes.Equal(n.Value, big) {
		t.Fatalf("snapshot: %d bytes, %v", len(n.Value), err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "blobs", "tmp")); len(left) != 0 {
		t.Fatalf("temporary blob files left: %v", left)
	}
}

// An entry travels with its blobs. Without them, or with a blob whose bytes do
// not match the hash, the entry is rejected with ErrMissingBlob and nothing is
// stored; bytes that no entry refers to are not kept.
func TestEntryNeedsItsBlob(t *testing.T) {
	a := newInstance(t, nil)
	db, _ := a.CreateDatabase("d", "")
	big := bigValue(200_000, 3)
	tx := db.Begin()
	tx.Store("s").Set("big", big)
	eid := mustCommit(t, tx)
	var raws [][]byte
	db.Entries(0, func(_ ID, raw []byte) bool { raws = append(raws, raw); return true })
	blobs, err := a.Blobs(raws[len(raws)-1])
	if err != nil || len(blobs) != 1 || !bytes.Equal(blobs[0], big) {
		t.Fatalf("Blobs: %d, %v", len(blobs), err)
	}

	b := newInstance(t, nil)
	res, err := b.Apply("peer", raws...)
	if err != nil || len(res.Rejected) != 1 || !errors.Is(res.Rejected[0].Err, ErrMissingBlob) || res.Rejected[0].ID != eid {
		t.Fatalf("without its blob: %+v, %v", res, err)
	}
	bad := bytes.Clone(big)
	bad[1000] ^= 1
	stray := bigValue(100_000, 9)
	res, err = b.ApplyVerified("peer", Verify(raws[len(raws)-1]).WithBlobs([][]byte{bad, stray}))
	if err != nil || len(res.Rejected) != 1 || !errors.Is(res.Rejected[0].Err, ErrMissingBlob) {
		t.Fatalf("with a damaged blob: %+v, %v", res, err)
	}
	sh := BlobSum(stray)
	if b.blobs.has(sh, int64(len(stray))) {
		t.Fatal("a blob no entry refers to was stored")
	}
	res, err = b.ApplyVerified("peer", Verify(raws[len(raws)-1]).WithBlobs(blobs))
	if err != nil || len(res.Applied) != 1 {
		t.Fatalf("with its blob: %+v, %v", res, err)
	}
	bdb, _ := b.DatabaseByID(db.ID())
	if got := getString(t, bdb, "s", "big"); got != string(big) {
		t.Fatalf("replica reads %d bytes", len(got))
	}
}

// Concurrent large writes to one key: the loser's bytes are listed with the
// conflict, read from its blob.
func TestBlobConflict(t *testing.T) {
	a, b := newInstance(t, nil), newInstance(t, nil)
	db, _ := a.CreateDatabase("d", "")
	if _, err := db.Grant(b.Identity().Public().String(), "b", PermWrite); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, b)
	bdb, _ := b.DatabaseByID(db.ID())
	va, vb := bigValue(300_000, 4), bigValue(400_000, 5)
	tx := db.Begin()
	tx.Store("s").Set("k", va)
	mustCommit(t, tx)
	tx = bdb.Begin()
	tx.Store("s").Set("k", vb)
	mustCommit(t, tx)
	syncAll(t, a, b)
	syncAll(t, b, a)
	for _, d := range []*Database{db, bdb} {
		win := getString(t, d, "s", "k")
		var lost []byte
		n := 0
		d.Conflicts(func(c Conflict) bool { lost = c.Value; n++; return true })
		if n != 1 || !(win == string(va) && bytes.Equal(lost, vb) || win == string(vb) && bytes.Equal(lost, va)) {
			t.Fatalf("winner %d bytes, %d conflicts, loser %d bytes", len(win), n, len(lost))
		}
	}
}

// The shape rules for blob references.
func TestBlobShape(t *testing.T) {
	h := make([]byte, 32)
	for _, c := range []struct {
		name string
		op   Op
		ok   bool
	}{
		{"reference", Op{Path: []string{"k"}, Kind: OpValue, Blob: h, Size: BlobMin + 1}, true},
		{"short hash", Op{Path: []string{"k"}, Kind: OpValue, Blob: h[:31], Size: BlobMin + 1}, false},
		{"small size", Op{Path: []string{"k"}, Kind: OpValue, Blob: h, Size: BlobMin}, false},
		{"size only", Op{Path: []string{"k"}, Kind: OpValue, Size: BlobMin + 1}, false},
		{"with a value", Op{Path: []string{"k"}, Kind: OpValue, Value: []byte("x"), Blob: h, Size: BlobMin + 1}, false},
		{"on a link", Op{Path: []string{"k"}, Kind: OpLink, Value: []byte("x"), Blob: h, Size: BlobMin + 1}, false},
		{"on a delete", Op{Path: []string{"k"}, Kind: OpDelete, Blob: h, Size: BlobMin + 1}, false},
	} {
		e := &Entry{Root: ID{1}, Parents: []ID{{2}}, Height: 5, Stores: []StoreNode{{Name: "s", Ops: []Op{c.op}}}}
		raw, _ := e.sign(NewIdentity())
		_, _, err := DecodeEntry(raw)
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// BlobSum is BLAKE3-256 (known answers), and NewBlobHasher fed in pieces of any
// size gives the same sum.
func TestBlobSum(t *testing.T) {
	for in, want := range map[string]string{
		"":    "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
		"abc": "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85",
	} {
		if got := BlobSum([]byte(in)); hex.EncodeToString(got[:]) != want {
			t.Errorf("BlobSum(%q) = %x, want %s", in, got, want)
		}
	}
	v := bigValue(3<<20+12345, 9)
	h := NewBlobHasher()
	for off, step := 0, 1; off < len(v); off, step = off+step, step*3+1 {
		h.Write(v[off:min(len(v), off+step)])
	}
	want := BlobSum(v)
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		t.Fatalf("hashing in pieces: %x, want %x", got, want)
	}
}

// Stat names a value's blob, and SetNode moves a large value by its reference:
// no second blob, the same bytes under the new path.
func TestSetNodeMovesBlob(t *testing.T) {
	dir := t.TempDir()
	in, closeIn := diskInstanceAt(t, dir, NewIdentity())
	defer closeIn()
	db, _ := in.CreateDatabase("d", "")
	big := bigValue(2<<20, 6)
	tx := db.Begin()
	tx.Store("s").Set("a", big).Set("small", []byte("x"))
	mustCommit(t, tx)
	n, err := db.Stat("s", []string{"a"})
	h := BlobSum(big)
	if err != nil || !bytes.Equal(n.Blob, h[:]) {
		t.Fatalf("Stat: blob %x, %v", n.Blob, err)
	}
	small, _ := db.Get("s", []string{"small"})
	tx = db.Begin()
	tx.Store("s").Delete([]string{"a"}).SetNode([]string{"d", "b"}, n).Delete([]string{"small"}).SetNode([]string{"small2"}, small)
	mustCommit(t, tx)
	if got := getString(t, db, "s", "d", "b"); got != string(big) {
		t.Fatalf("moved value: %d bytes", len(got))
	}
	if got := getString(t, db, "s", "small2"); got != "x" {
		t.Fatalf("moved small value: %q", got)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "blobs", "??", "*")); len(files) != 1 {
		t.Fatalf("blob files: %v", files)
	}
	tx = db.Begin()
	tx.Store("s").SetNode([]string{"c"}, Node{Kind: OpValue, Blob: make([]byte, 32), Size: BlobMin + 1})
	if _, err := tx.Commit(Journal); !errors.Is(err, ErrMissingBlob) {
		t.Fatalf("SetNode of an unknown blob: %v", err)
	}
}

// A blob written by a journaled commit waits for the next sync; SyncJournal and a
// Sync commit make every such blob durable before the journal (syncBlobs), and
// leave none waiting.
func TestSyncMakesBlobsDurable(t *testing.T) {
	in, closeIn := diskInstanceAt(t, t.TempDir(), NewIdentity())
	defer closeIn()
	db, _ := in.CreateDatabase("d", "")
	waiting := func() int {
		in.blobMu.Lock()
		defer in.blobMu.Unlock()
		return len(in.unsynced)
	}
	tx := db.Begin()
	tx.Store("s").Set("a", bigValue(100_000, 1)).Set("b", bigValue(200_000, 2))
	mustCommit(t, tx)
	if n := waiting(); n != 2 {
		t.Fatalf("after a journaled commit: %d blobs wait for a sync, want 2", n)
	}
	if err := in.SyncJournal(); err != nil {
		t.Fatal(err)
	}
	if n := waiting(); n != 0 {
		t.Fatalf("after SyncJournal: %d blobs still wait", n)
	}
	tx = db.Begin()
	tx.Store("s").Set("c", bigValue(300_000, 3))
	if _, err := tx.Commit(Sync); err != nil {
		t.Fatal(err)
	}
	if n := waiting(); n != 0 {
		t.Fatalf("after a Sync commit: %d blobs still wait", n)
	}
}

// A key that may not write the database cannot leave blobs behind: its entry is
// refused and the bytes sent with it are not kept.
func TestUnauthorizedBlobNotKept(t *testing.T) {
	a := newInstance(t, nil)
	da, _ := a.CreateDatabase("d", "")
	mallory := NewIdentity()
	big := bigValue(BlobMin+1000, 7)
	h := BlobSum(big)
	e := &Entry{Root: da.ID(), Parents: da.Tips(), Height: da.Info().Height + 1, Time: 1,
		Stores: []StoreNode{{Name: "s", Ops: []Op{{Path: []string{"k"}, Kind: OpValue, Blob: h[:], Size: uint64(len(big))}}}}}
	raw, _ := e.sign(mallory)
	res, err := a.ApplyVerified("peer", Verify(raw).WithBlobs([][]byte{big}))
	if err != nil || len(res.Rejected) != 1 || len(res.Applied) != 0 {
		t.Fatalf("an unauthorized entry with a blob: %+v, %v", res, err)
	}
	if a.blobs.has(h, int64(len(big))) {
		t.Fatal("the unauthorized entry's blob was kept")
	}
}

// A writer granted in the same batch as its first large value: the blob is kept
// and the entry applies, as a joining node receives them.
func TestBlobOfWriterGrantedInTheSameBatch(t *testing.T) {
	a, b := newInstance(t, nil), newInstance(t, nil)
	da, _ := a.CreateDatabase("d", "")
	syncAll(t, a, b)
	w := newInstance(t, nil)
	if _, err := da.Grant(w.Identity().Public().String(), "w", PermWrite); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, w)
	dw, _ := w.DatabaseByID(da.ID())
	big := bigValue(BlobMin+5000, 8)
	tx := dw.Begin()
	tx.Store("s").Set("k", big)
	mustCommit(t, tx)
	syncAll(t, w, b) // the grant and the writer's entry, one batch
	db, _ := b.DatabaseByID(da.ID())
	if got := getString(t, db, "s", "k"); got != string(big) {
		t.Fatalf("b reads %d bytes", len(got))
	}
}
