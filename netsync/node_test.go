package netsync

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

func freeAddr(t *testing.T) string {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

type liveNode struct {
	inst *engine.Instance
	node *Node
	addr string
}

func startNode(t *testing.T, name string) *liveNode {
	store, err := kv.OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	inst, err := engine.Open(store, engine.Options{Identity: engine.NewIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	n, err := Start(Options{Instance: inst, KV: store, Name: name, Listen: []string{addr},
		Periodic: time.Hour, Retry: 50 * time.Millisecond, RetryCap: 200 * time.Millisecond, Health: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); inst.Close(); store.Close() })
	return &liveNode{inst: inst, node: n, addr: n.Addrs()[0]}
}

func (l *liveNode) key() engine.PublicKey { return l.inst.Identity().Public() }

// eventually polls cond for up to 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func has(inst *engine.Instance, db engine.ID, key, value string) bool {
	d, ok := inst.DatabaseByID(db)
	if !ok {
		return false
	}
	n, err := d.Get("s", []string{key})
	return err == nil && string(n.Value) == value
}

// TestShareJoinPushRelay: B joins A's database with a ticket, C joins through B
// (C never learns A). A write on A reaches C, relayed by B; a write on C reaches A.
func TestShareJoinPushRelay(t *testing.T) {
	a, b, c := startNode(t, "a"), startNode(t, "b"), startNode(t, "c")
	da, _ := a.inst.CreateDatabase("notes", "")
	write(t, da, "first", "1")
	ctx := context.Background()

	tk, err := a.node.Share(da, engine.PermAdmin)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ParseTicket(tk.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.node.Join(ctx, parsed, nil); err != nil {
		t.Fatal(err)
	}
	db, _ := b.inst.DatabaseByID(da.ID())
	tk2, err := b.node.Share(db, engine.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.node.Join(ctx, tk2, nil); err != nil {
		t.Fatal(err)
	}
	if !has(c.inst, da.ID(), "first", "1") {
		t.Fatal("c did not clone the database")
	}

	start := time.Now()
	write(t, da, "x", "from a")
	eventually(t, "a's write on c", func() bool { return has(c.inst, da.ID(), "x", "from a") })
	t.Logf("a → b → c in %v", time.Since(start))

	dc, _ := c.inst.DatabaseByID(da.ID())
	write(t, dc, "y", "from c")
	eventually(t, "c's write on a", func() bool { return has(a.inst, da.ID(), "y", "from c") })

	for _, p := range c.node.State().Peers() {
		if p.Key == a.key() {
			t.Fatal("c knows a: the write was not relayed")
		}
	}
	if _, err := c.node.Join(ctx, parsed, nil); err == nil {
		t.Fatal("a used ticket worked twice")
	}
}

// TestOfflinePeerCatchesUp: a peer that was down while the owner wrote catches up
// through retries, without anyone asking.
func TestOfflinePeerCatchesUp(t *testing.T) {
	a := startNode(t, "a")
	da, _ := a.inst.CreateDatabase("notes", "")
	// b's node lives in a store that outlives its first run.
	storeB, _ := kv.OpenMemory()
	idB := engine.NewIdentity()
	instB, _ := engine.Open(storeB, engine.Options{Identity: idB})
	t.Cleanup(func() { instB.Close(); storeB.Close() })
	addrB := freeAddr(t)
	nb, err := Start(Options{Instance: instB, KV: storeB, Name: "b", Listen: []string{addrB}, Periodic: time.Hour,
		Retry: 50 * time.Millisecond, RetryCap: 200 * time.Millisecond, Health: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tk, _ := a.node.Share(da, engine.PermWrite)
	if _, err := nb.Join(context.Background(), tk, nil); err != nil {
		t.Fatal(err)
	}
	nb.Close() // b goes down

	for i := 0; i < 200; i++ {
		write(t, da, "k"+string(rune('a'+i%26))+string(rune('a'+i/26)), "v")
	}
	// b comes back on the same address: a's retries (or b's start-up sync) bring it up to date.
	nb, err = Start(Options{Instance: instB, KV: storeB, Name: "b", Listen: []string{addrB}, Periodic: time.Hour,
		Retry: 50 * time.Millisecond, RetryCap: 200 * time.Millisecond, Health: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	eventually(t, "b to catch up", func() bool {
		d, ok := instB.DatabaseByID(da.ID())
		return ok && d.Count() == da.Count()
	})
	if p, _ := a.node.State().Peer(idB.Public()); p.Failures > 0 || p.Status != "active" {
		t.Logf("a's view of b after catch-up: %+v", p)
	}
}

func TestStrangerSeesNothing(t *testing.T) {
	a, x := startNode(t, "a"), startNode(t, "x")
	da, _ := a.inst.CreateDatabase("secret", "")
	write(t, da, "k", "v")
	key, name, offers, err := x.node.Discover(context.Background(), a.addr)
	if err != nil {
		t.Fatal(err)
	}
	if key != a.key() || name != "a" || len(offers) != 0 {
		t.Fatalf("discover: %s %q %v", key.Short(), name, offers)
	}
	x.node.AddPeer(a.key(), "a", []string{a.addr})
	res := x.node.SyncDB(context.Background(), a.key(), da.ID())
	if res.Err == nil || res.Received != 0 {
		t.Fatalf("stranger sync: %+v", res)
	}
	if _, ok := x.inst.DatabaseByID(da.ID()); ok {
		t.Fatal("stranger got the database")
	}
}

func TestUnreachablePeerIsNamed(t *testing.T) {
	a := startNode(t, "a")
	da, _ := a.inst.CreateDatabase("notes", "")
	ghost := engine.NewIdentity().Public()
	da.Grant(ghost.String(), "ghost", engine.PermWrite)
	a.node.AddPeer(ghost, "ghost", []string{freeAddr(t)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := a.node.SyncDB(ctx, ghost, da.ID())
	if res.Err == nil {
		t.Fatal("sync with nobody succeeded")
	}
	t.Logf("error: %v", res.Err)
	h := a.node.State().History(ghost)
	if len(h) == 0 || h[len(h)-1].OK {
		t.Fatalf("history does not record the failure: %+v", h)
	}
}
