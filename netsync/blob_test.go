package netsync

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/eidefs/eidefs/engine"
)

func bigBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13) + seed
	}
	return b
}

func hasBytes(inst *engine.Instance, db engine.ID, key string, want []byte) bool {
	d, ok := inst.DatabaseByID(db)
	if !ok {
		return false
	}
	n, err := d.Get("s", []string{key})
	return err == nil && bytes.Equal(n.Value, want)
}

// TestBlobsTravelWithEntries: values kept as blobs (over engine.BlobMin) reach a
// joining node (full sync), a live peer (push) and, relayed, a third node, over
// QUIC, in batches that hold several blobs and in one of 20 MiB.
func TestBlobsTravelWithEntries(t *testing.T) {
	a, b, c := startNode(t, "a"), startNode(t, "b"), startNode(t, "c")
	da, _ := a.inst.CreateDatabase("notes", "")
	old := map[string][]byte{}
	tx := da.Begin()
	for i, k := range []string{"p", "q", "r"} {
		old[k] = bigBytes(engine.BlobMin+1+i*100_000, byte(i))
		tx.Store("s").Set(k, old[k])
	}
	if _, err := tx.Commit(engine.Journal); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tk, err := a.node.Share(da, engine.PermAdmin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.node.Join(ctx, tk, nil); err != nil {
		t.Fatal(err)
	}
	for k, v := range old {
		if !hasBytes(b.inst, da.ID(), k, v) {
			t.Fatalf("b's clone lacks %s", k)
		}
	}
	db, _ := b.inst.DatabaseByID(da.ID())
	tk2, err := b.node.Share(db, engine.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.node.Join(ctx, tk2, nil); err != nil {
		t.Fatal(err)
	}

	huge := bigBytes(20<<20, 7)
	tx = da.Begin()
	tx.Store("s").Set("huge", huge)
	if _, err := tx.Commit(engine.Journal); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a's 20 MiB value on c", func() bool { return hasBytes(c.inst, da.ID(), "huge", huge) })
	if r := a.inst.Stats().Rejected + b.inst.Stats().Rejected + c.inst.Stats().Rejected; r != 0 {
		t.Fatalf("%d entries rejected", r)
	}
}

// A blob the sender lost (a power cut before it was synced) costs only its entry
// and what descends from it: the peer refuses that entry with ErrMissingBlob (not
// as forged: the connection stays), receives everything before it, and says the
// sync is incomplete; the sender's other databases still sync.
func TestLostBlobDoesNotStopSync(t *testing.T) {
	blobs := t.TempDir()
	a, b := startNodeWith(t, "a", engine.Options{BlobDir: blobs}), startNode(t, "b")
	da, _ := a.inst.CreateDatabase("notes", "")
	write(t, da, "before", "here")
	lost := bigBytes(engine.BlobMin+10, 1)
	tx := da.Begin()
	tx.Store("s").Set("lost", lost)
	if _, err := tx.Commit(engine.Journal); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(blobs, "??", "*"))
	if len(files) != 1 {
		t.Fatalf("blob files: %v", files)
	}
	os.Chmod(files[0], 0o600)
	if err := os.Truncate(files[0], 3); err != nil { // damaged, as a power cut leaves it
		t.Fatal(err)
	}
	tk, err := a.node.Share(da, engine.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = b.node.Join(context.Background(), tk, nil); err == nil {
		t.Fatal("join reported no error for an entry that could not be applied")
	}
	if !has(b.inst, da.ID(), "before", "here") {
		t.Fatalf("b lacks the entries before the lost blob (join: %v)", err)
	}
	if hasBytes(b.inst, da.ID(), "lost", lost) {
		t.Fatal("b has the lost value")
	}
	other, _ := a.inst.CreateDatabase("other", "")
	write(t, other, "k", "v")
	tk2, err := a.node.Share(other, engine.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.node.Join(context.Background(), tk2, nil); err != nil || !has(b.inst, other.ID(), "k", "v") {
		t.Fatalf("another database of the same peer: %v", err)
	}
}
