package netsync

import (
	"context"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// TestSyncAfterPeerRestart: a peer restarted on the same address answers the
// connection to its old process with a stateless reset; the next sync still
// succeeds, on a fresh connection, at the first attempt.
func TestSyncAfterPeerRestart(t *testing.T) {
	a := startNode(t, "a")
	da, _ := a.inst.CreateDatabase("notes", "")
	write(t, da, "k", "1")

	id := engine.NewIdentity()
	store, err := kv.OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	inst, err := engine.Open(store, engine.Options{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	addr := freeAddr(t)
	start := func() *Node {
		n, err := Start(Options{Instance: inst, KV: store, Name: "b", Listen: []string{addr},
			Periodic: time.Hour, Retry: time.Hour, RetryCap: time.Hour, Health: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	b := start()
	ctx := context.Background()
	tk, err := a.node.Share(da, engine.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Join(ctx, tk, nil); err != nil {
		t.Fatal(err)
	}
	if r := a.node.SyncDB(ctx, id.Public(), da.ID()); r.Err != nil {
		t.Fatalf("first sync: %v", r.Err)
	}

	// As kill -9 does: the process goes without telling its peers.
	for _, sock := range b.tr.sockets {
		sock.udp.Close()
	}
	b.Close()
	b = start()
	t.Cleanup(func() { b.Close() })
	write(t, da, "k", "2")
	if r := a.node.SyncDB(ctx, id.Public(), da.ID()); r.Err != nil {
		t.Fatalf("sync after the peer restarted: %v", r.Err)
	}
	if !has(inst, da.ID(), "k", "2") {
		t.Error("the restarted peer did not get the new value")
	}
}
