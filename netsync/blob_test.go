package netsync

import (
	"bytes"
	"context"
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
