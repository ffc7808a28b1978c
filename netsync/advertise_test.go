package netsync

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// TestAdvertise: a node behind a forwarded port tells peers the advertised address,
// in its tickets and its hello, not the one it listens on.
func TestAdvertise(t *testing.T) {
	store, err := kv.OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	inst, err := engine.Open(store, engine.Options{Identity: engine.NewIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	public := "192.0.2.7:7400"
	n, err := Start(Options{Instance: inst, KV: store, Name: "nat", Listen: []string{freeAddr(t)},
		Advertise: []string{public}, Periodic: time.Hour, Health: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); inst.Close(); store.Close() })

	db, _ := inst.CreateDatabase("notes", "")
	tk, err := n.Share(db, engine.PermRead)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tk.Addrs, []string{public}) {
		t.Errorf("ticket addresses %v, want [%s]", tk.Addrs, public)
	}

	b := startNode(t, "b")
	c, err := b.node.tr.Dial(context.Background(), n.Addrs()[0], inst.Identity().Public())
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := b.node.p.hello(s)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resp.Addrs, []string{public}) {
		t.Errorf("hello addresses %v, want [%s]", resp.Addrs, public)
	}
}
