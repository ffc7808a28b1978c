package netsync

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// pipeStream is one end of an in-memory stream.
type pipeStream struct {
	r *io.PipeReader
	w *io.PipeWriter
}

func (p *pipeStream) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *pipeStream) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p *pipeStream) CloseWrite() error           { return p.w.Close() }
func (p *pipeStream) Close() error                { p.w.Close(); return p.r.Close() }

func pipePair() (*pipeStream, *pipeStream) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return &pipeStream{r: ar, w: aw}, &pipeStream{r: br, w: bw}
}

type testNode struct {
	inst  *engine.Instance
	state *State
	p     *proto
}

func newTestNode(t *testing.T) *testNode {
	store, err := kv.OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	inst, err := engine.Open(store, engine.Options{Identity: engine.NewIdentity()})
	if err != nil {
		t.Fatal(err)
	}
	st, err := openState(store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close(); store.Close() })
	return &testNode{inst: inst, state: st, p: &proto{inst: inst, name: "n", addrs: func() []string { return nil }, redeem: st.redeem}}
}

func (n *testNode) key() engine.PublicKey { return n.inst.Identity().Public() }

// roundTrip runs client against server over an in-memory stream.
func roundTrip(t *testing.T, client, server *testNode, fn func(s Stream) Result) Result {
	t.Helper()
	a, b := pipePair()
	done := make(chan error, 1)
	go func() { done <- server.p.serve(b, client.key()); b.Close() }()
	res := fn(a)
	a.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server did not finish")
	}
	return res
}

func write(t *testing.T, db *engine.Database, key, value string) engine.ID {
	t.Helper()
	tx := db.Begin()
	tx.Store("s").Set(key, []byte(value))
	id, err := tx.Commit(engine.Journal)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestSyncBothWays(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	da, _ := a.inst.CreateDatabase("notes", "")
	da.Grant(b.key().String(), "b", engine.PermWrite)
	write(t, da, "x", "from a")

	res := roundTrip(t, b, a, func(s Stream) Result { return b.p.sync(s, a.key(), da.ID(), nil, nil) })
	if res.Err != nil || res.Received != int(da.Count()) || res.Sent != 0 {
		t.Fatalf("first sync: %+v", res)
	}
	db, ok := b.inst.DatabaseByID(da.ID())
	if !ok {
		t.Fatal("database not cloned")
	}
	write(t, db, "y", "from b")
	write(t, da, "z", "from a again")
	res = roundTrip(t, b, a, func(s Stream) Result { return b.p.sync(s, a.key(), da.ID(), nil, nil) })
	if res.Err != nil || res.Received != 1 || res.Sent != 1 {
		t.Fatalf("incremental sync moved %d/%d entries (want 1/1): %v", res.Received, res.Sent, res.Err)
	}
	for _, d := range []*engine.Database{da, db} {
		for _, k := range []string{"x", "y", "z"} {
			if _, err := d.Get("s", []string{k}); err != nil {
				t.Fatalf("%s missing: %v", k, err)
			}
		}
	}
	if ta, tb := da.Tips(), db.Tips(); len(ta) != 2 || ta[0] != tb[0] || ta[1] != tb[1] {
		t.Fatalf("tips differ: %v %v", ta, tb)
	}
	// Nothing new: nothing moves.
	res = roundTrip(t, b, a, func(s Stream) Result { return b.p.sync(s, a.key(), da.ID(), nil, nil) })
	if res.Err != nil || res.Received+res.Sent != 0 {
		t.Fatalf("idle sync: %+v", res)
	}
}

func TestUnauthorizedGetsNothing(t *testing.T) {
	a, c := newTestNode(t), newTestNode(t)
	da, _ := a.inst.CreateDatabase("secret", "")
	write(t, da, "x", "hidden")
	res := roundTrip(t, c, a, func(s Stream) Result { return c.p.sync(s, a.key(), da.ID(), nil, nil) })
	if !errors.Is(res.Err, ErrNotAuthorized) || res.Received != 0 {
		t.Fatalf("stranger sync: %+v", res)
	}
	var unknown engine.ID
	unknown[0] = 1
	res = roundTrip(t, c, a, func(s Stream) Result { return c.p.sync(s, a.key(), unknown, nil, nil) })
	if !errors.Is(res.Err, ErrUnknownDatabase) {
		t.Fatalf("sync of a database a does not have: %v", res.Err)
	}
	var offers []Offer
	roundTrip(t, c, a, func(s Stream) Result {
		var err error
		offers, err = c.p.discover(s)
		return Result{Err: err}
	})
	if len(offers) != 0 {
		t.Fatalf("stranger discovers %v", offers)
	}
	if _, ok := c.inst.DatabaseByID(da.ID()); ok {
		t.Fatal("stranger got the database")
	}
}

func TestInviteGrantsOnce(t *testing.T) {
	a, b, c := newTestNode(t), newTestNode(t), newTestNode(t)
	da, _ := a.inst.CreateDatabase("notes", "")
	write(t, da, "x", "1")
	token, err := a.state.newInvite(da.ID(), engine.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	var seen []int
	res := roundTrip(t, b, a, func(s Stream) Result {
		return b.p.sync(s, a.key(), da.ID(), token, func(done, total int) { seen = append(seen, done, total) })
	})
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if len(seen) == 0 || seen[len(seen)-2] != seen[len(seen)-1] {
		t.Fatalf("progress %v does not end at its total", seen)
	}
	db, ok := b.inst.DatabaseByID(da.ID())
	if !ok || !db.CanWrite() {
		t.Fatal("joiner cannot write after the invite")
	}
	res = roundTrip(t, c, a, func(s Stream) Result { return c.p.sync(s, a.key(), da.ID(), token, nil) })
	if !errors.Is(res.Err, ErrBadInvite) {
		t.Fatalf("second use of the invite: %v", res.Err)
	}
}

func TestVersionMismatchIsNamed(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	s, srv := pipePair()
	go func() { a.p.serve(srv, b.key()); srv.Close() }()
	defer s.Close()
	if err := writeFrame(s, &request{Op: "hello", Version: ProtocolVersion + 1}); err != nil {
		t.Fatal(err)
	}
	var resp response
	if _, err := readFrame(s, &resp); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(resp.err(), ErrVersionMismatch) {
		t.Fatalf("got %v", resp.err())
	}
}

func TestForgedPushRejected(t *testing.T) {
	a, b := newTestNode(t), newTestNode(t)
	da, _ := a.inst.CreateDatabase("notes", "")
	da.Grant(b.key().String(), "b", engine.PermRead) // b may read, not write
	roundTrip(t, b, a, func(s Stream) Result { return b.p.sync(s, a.key(), da.ID(), nil, nil) })
	db, _ := b.inst.DatabaseByID(da.ID())
	tx := db.Begin()
	tx.Store("s").Set("x", []byte("forged"))
	if _, err := tx.Commit(engine.Journal); !errors.Is(err, engine.ErrNotAuthorized) {
		t.Fatalf("reader committed: %v", err)
	}
	// Even a well-formed entry signed by b is refused by a.
	var raws [][]byte
	db.Entries(0, func(_ engine.ID, raw []byte) bool { raws = append(raws, raw); return true })
	var a2 ack
	roundTrip(t, b, a, func(s Stream) Result {
		var err error
		a2, err = b.p.push(s, da.ID(), [][]byte{append([]byte{0xa5}, raws[0][1:]...)})
		return Result{Err: err}
	})
	if a2.Rejected != 1 || a2.Applied != 0 {
		t.Fatalf("push of a tampered entry: %+v", a2)
	}
}
