package netsync

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// Hostile peers: what a key that is not authorized, or a member that misbehaves,
// can make a node do. Every attack runs over real QUIC on 127.0.0.1 while a
// well-behaved peer keeps syncing, and the tests assert that it still does.

// startNodeWith is startNode with engine options (a small pending buffer).
func startNodeWith(t *testing.T, name string, eo engine.Options) *liveNode {
	store, err := kv.OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	eo.Identity = engine.NewIdentity()
	inst, err := engine.Open(store, eo)
	if err != nil {
		t.Fatal(err)
	}
	n, err := Start(Options{Instance: inst, KV: store, Name: name, Listen: []string{"127.0.0.1:0"},
		Periodic: time.Hour, Retry: 50 * time.Millisecond, RetryCap: 200 * time.Millisecond, Health: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); inst.Close(); store.Close() })
	return &liveNode{inst: inst, node: n, addr: n.Addrs()[0]}
}

// pair starts a node a with a database and a peer b that joined it as a writer.
func pair(t *testing.T, eo engine.Options) (a, b *liveNode, da *engine.Database) {
	a, b = startNodeWith(t, "a", eo), startNode(t, "b")
	da, err := a.inst.CreateDatabase("notes", "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, da, "first", "1")
	tk, err := a.node.Share(da, engine.PermWrite)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.node.Join(context.Background(), tk, nil); err != nil {
		t.Fatal(err)
	}
	return a, b, da
}

// intruder is a bare QUIC endpoint with a key of its own choosing, to send what
// no eidefs node would.
type intruder struct {
	tr *Transport
	id *engine.Identity
}

func newIntruder(t *testing.T, id *engine.Identity) *intruder {
	t.Helper()
	if id == nil {
		id = engine.NewIdentity()
	}
	tr, err := NewTransport(Config{Identity: id, HandshakeTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return &intruder{tr: tr, id: id}
}

func (x *intruder) dial(t *testing.T, n *liveNode) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := x.tr.Dial(ctx, n.addr, n.key())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dialRetry is dial that retries a refused handshake for up to d.
func (x *intruder) dialRetry(t *testing.T, n *liveNode, d time.Duration) *Conn {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := x.tr.Dial(ctx, n.addr, n.key())
		cancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func openStream(t *testing.T, c *Conn) Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := c.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rawCall makes one well-formed request on a new stream of c.
func rawCall(t *testing.T, c *Conn, req *request) (*response, error) {
	s := openStream(t, c)
	defer s.Close()
	return (&proto{}).call(s, req)
}

// closedBy waits for the node to close c and returns the application error code
// it gave.
func closedBy(t *testing.T, c *Conn, within time.Duration) quic.ApplicationErrorCode {
	t.Helper()
	select {
	case <-c.Done():
	case <-time.After(within):
		t.Fatalf("connection still open after %v", within)
	}
	var ae *quic.ApplicationError
	if err := context.Cause(c.qc.Context()); !errors.As(err, &ae) || !ae.Remote {
		t.Fatalf("connection ended by %v, not closed by the node", err)
	}
	return ae.ErrorCode
}

func stillOpen(t *testing.T, c *Conn) {
	t.Helper()
	select {
	case <-c.Done():
		t.Fatalf("connection closed: %v", context.Cause(c.qc.Context()))
	case <-time.After(100 * time.Millisecond):
	}
}

// syncer keeps a well-behaved peer syncing with a node while attacks run: a write
// on a, then b syncs it, over and over. It records each sync's latency.
type syncer struct {
	stop  chan struct{}
	done  chan struct{}
	took  []time.Duration
	fails []error
}

func keepSyncing(a, b *liveNode, da *engine.Database) *syncer {
	s := &syncer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			key := fmt.Sprintf("legit-%d", i)
			tx := da.Begin()
			tx.Store("s").Set(key, []byte("v"))
			if _, err := tx.Commit(engine.Journal); err != nil {
				s.fails = append(s.fails, err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			res := b.node.SyncDB(ctx, a.key(), da.ID())
			cancel()
			s.took = append(s.took, time.Since(start))
			if res.Err == nil && !has(b.inst, da.ID(), key, "v") {
				res.Err = fmt.Errorf("%s missing after the sync", key)
			}
			if res.Err != nil {
				s.fails = append(s.fails, res.Err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return s
}

// finish stops the syncer, asserts every sync succeeded within bound, and logs
// the latencies.
func (s *syncer) finish(t *testing.T, bound time.Duration) {
	t.Helper()
	close(s.stop)
	<-s.done
	if len(s.fails) > 0 {
		t.Fatalf("the well-behaved peer's syncs failed: %v", s.fails)
	}
	if len(s.took) == 0 {
		t.Fatal("the well-behaved peer made no sync")
	}
	sorted := slices.Sorted(slices.Values(s.took))
	if worst := sorted[len(sorted)-1]; worst > bound {
		t.Fatalf("a sync of the well-behaved peer took %v (bound %v)", worst, bound)
	}
	t.Logf("well-behaved peer: %d syncs, median %v, worst %v", len(sorted), sorted[len(sorted)/2], sorted[len(sorted)-1])
}

// frame is a length prefix announcing n bytes, followed by body.
func frame(n uint32, body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, n), body...)
}

func encode(t *testing.T, v any) []byte {
	b, err := encMode.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return frame(uint32(len(b)), b)
}

// TestStrangerGetsNothing: a key with no permission, over QUIC, sees no database
// names and gets named errors, no entries, and leaves no state behind.
func TestStrangerGetsNothing(t *testing.T) {
	a := startNode(t, "a")
	da, _ := a.inst.CreateDatabase("secret", "")
	write(t, da, "k", "v")
	raws := entriesOf(da)
	x := newIntruder(t, nil)
	c := x.dial(t, a)

	resp, err := rawCall(t, c, &request{Op: "discover"})
	if err != nil || len(resp.DBs) != 0 {
		t.Fatalf("discover: %+v, %v", resp, err)
	}
	for _, op := range []string{"sync", "get", "push"} {
		if _, err := rawCall(t, c, &request{Op: op, DB: da.ID(), IDs: da.Tips()}); !errors.Is(err, ErrNotAuthorized) {
			t.Errorf("%s of a database it may not read: %v, want ErrNotAuthorized", op, err)
		}
		if _, err := rawCall(t, c, &request{Op: op, DB: engine.ID{1}}); !errors.Is(err, ErrUnknownDatabase) {
			t.Errorf("%s of an unknown database: %v, want ErrUnknownDatabase", op, err)
		}
	}
	// A push of valid entries goes no further than the request.
	s := openStream(t, c)
	if _, err := (&proto{}).push(s, da.ID(), raws); !errors.Is(err, ErrNotAuthorized) {
		t.Errorf("push: %v", err)
	}
	s.Close()
	if _, err := rawCall(t, c, &request{Op: "bootstrap", DB: da.ID(), Invite: make([]byte, 16)}); !errors.Is(err, ErrBadInvite) {
		t.Errorf("bootstrap with a made-up invite: %v", err)
	}
	if _, err := rawCall(t, c, &request{Op: "hello", Name: "x", Addrs: []string{"127.0.0.1:9"}}); err != nil {
		t.Errorf("hello: %v", err)
	}
	stillOpen(t, c) // refusals are answers, not violations
	if len(a.node.State().Peers()) != 0 {
		t.Fatalf("the node keeps state for a stranger: %+v", a.node.State().Peers())
	}
	if da.Count() != uint64(len(raws)) {
		t.Fatalf("count changed: %d", da.Count())
	}
	if ab := a.node.Abuse(); ab.ProtocolErrors != 0 || ab.ForgedUploads != 0 {
		t.Fatalf("counters: %+v", ab)
	}
}

func entriesOf(db *engine.Database) [][]byte {
	var raws [][]byte
	db.Entries(0, func(_ engine.ID, raw []byte) bool { raws = append(raws, raw); return true })
	return raws
}

// TestProtocolViolationsCloseTheConnection sends malformed, oversized, truncated
// and stalled messages and unknown requests, from a stranger and from a known
// peer's key: each closes that connection with codeProtocol and is counted, a 1 GiB
// length prefix allocates nothing, a wrong version is only answered, and the
// well-behaved peer's syncs go on meanwhile.
func TestProtocolViolationsCloseTheConnection(t *testing.T) {
	idle := frameIdle
	t.Cleanup(func() { frameIdle = idle })
	frameIdle = 300 * time.Millisecond

	a, b, da := pair(t, engine.Options{})
	bKey := b.inst.Identity()
	stranger, asB := newIntruder(t, nil), newIntruder(t, bKey)
	sy := keepSyncing(a, b, da)

	pushReq := encode(t, &request{Op: "push", Version: ProtocolVersion, DB: da.ID()})
	cases := []struct {
		name  string
		x     *intruder
		send  []byte
		close bool // half-close after sending
	}{
		{"undecodable", stranger, frame(8, slices.Repeat([]byte{0xff}, 8)), false},
		{"1 GiB length prefix", stranger, frame(1<<30, nil), false},
		{"request over 1 MiB", stranger, frame(maxRequest+1, nil), false},
		{"truncated frame", stranger, frame(100, make([]byte, 50)), true},
		{"truncated length prefix", stranger, []byte{0, 0}, true},
		{"unknown request", stranger, encode(t, &request{Op: "nuke", Version: ProtocolVersion}), false},
		{"stalled mid-frame", stranger, frame(100, make([]byte, 10)), false},
		{"not a map", asB, encode(t, []int{1, 2, 3}), false},
		{"garbage after a valid request", asB, append(pushReq, frame(4, []byte{0xbf, 0xff, 0x00, 0x01})...), false},
		{"stalled upload", asB, pushReq, false},
		{"oversized batch", asB, append(pushReq, frame(maxFrame+1, nil)...), false},
	}
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	fromB := 0
	for _, tc := range cases {
		c := tc.x.dial(t, a)
		s := openStream(t, c)
		if _, err := s.Write(tc.send); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.close {
			s.CloseWrite()
		}
		if code := closedBy(t, c, 5*time.Second); code != codeProtocol {
			t.Errorf("%s: closed with code %d, want %d", tc.name, code, codeProtocol)
		}
		if tc.x == asB {
			fromB++
		}
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<20 {
		t.Errorf("the attacks made the node allocate %d MiB", grew>>20)
	}

	// A wrong version is answered with a named error; the connection stays.
	c := stranger.dial(t, a)
	s := openStream(t, c)
	s.Write(encode(t, &request{Op: "hello", Version: ProtocolVersion + 1}))
	var resp response
	if _, err := readFrame(s, &resp); !errors.Is(resp.err(), ErrVersionMismatch) {
		t.Fatalf("wrong version: %v %v", resp.err(), err)
	}
	stillOpen(t, c)

	ab := a.node.Abuse()
	peer, _ := a.node.State().Peer(bKey.Public())
	t.Logf("%d bad inputs sent; node counts %+v; b's record: %d protocol errors", len(cases), ab, peer.ProtocolErrors)
	if ab.ProtocolErrors != uint64(len(cases)) || ab.StrangerErrors != uint64(len(cases)-fromB) || peer.ProtocolErrors != uint64(fromB) {
		t.Fatalf("counted %+v and %d for b, want %d violations, %d by b", ab, peer.ProtocolErrors, len(cases), fromB)
	}
	for _, p := range a.node.State().Peers() {
		if p.Key != bKey.Public() {
			t.Fatalf("state kept for a stranger: %+v", p)
		}
	}
	sy.finish(t, 5*time.Second)
}

// forge signs an entry as who, however unauthorized, encoded as the engine does
// (deterministic CBOR, strings as byte strings, the signature last).
func forge(t *testing.T, e *engine.Entry, who *engine.Identity) []byte {
	t.Helper()
	eo := cbor.CoreDetEncOptions()
	eo.String = cbor.StringToByteString
	em, err := eo.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	e.Author, e.Sig = who.Public(), nil
	unsigned, err := em.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(append([]byte("eidefs entry v1\x00"), unsigned...))
	raw := append([]byte{unsigned[0] + 1}, unsigned[1:]...)
	raw = append(append(raw, 0x08, 0x58, 0x40), who.Sign(digest[:])...)
	if _, _, err := engine.DecodeEntry(raw); err != nil {
		t.Fatalf("forged entry does not decode: %v", err)
	}
	return raw
}

func setOp(key, value string) []engine.StoreNode {
	return []engine.StoreNode{{Name: "s", Ops: []engine.Op{{Path: []string{key}, Kind: engine.OpValue, Value: []byte(value)}}}}
}

// TestForgedEntriesRejected: a member allowed to read pushes entries it signed
// without permission, tampered ones, entries of another database, and orphans
// with made-up parents in bulk. Orphans are bounded (the node's share for one
// peer) and refused beyond it; every other kind closes the member's connections
// and drops its orphans. Nothing is stored, and the writers' pushes still land.
func TestForgedEntriesRejected(t *testing.T) {
	a, b, da := pair(t, engine.Options{MaxPending: 1000}) // one peer may leave 100 orphans
	m := startNode(t, "m")
	tk, _ := a.node.Share(da, engine.PermRead)
	if _, err := m.node.Join(context.Background(), tk, nil); err != nil {
		t.Fatal(err)
	}
	mID := m.inst.Identity()
	ctx := context.Background()
	push := func(raws [][]byte) (ack, *Conn, error) {
		t.Helper()
		c, err := m.node.conn(ctx, a.key())
		if err != nil {
			t.Fatal(err)
		}
		s := openStream(t, c)
		defer s.Close()
		ak, err := m.node.p.push(s, da.ID(), raws)
		return ak, c, err
	}
	count, dbs := da.Count(), len(a.inst.Databases())
	tip := da.Info()

	// Orphans: well signed, parents nobody has. 100 wait, 200 are refused.
	var orphans [][]byte
	for i := range 300 {
		orphans = append(orphans, forge(t, &engine.Entry{Root: da.ID(), Parents: []engine.ID{sha256.Sum256(fmt.Appendf(nil, "nowhere %d", i))},
			Height: tip.Height + 1, Time: 1, Stores: setOp("orphan", "x")}, mID))
	}
	ak, c, err := push(orphans)
	if err != nil || ak.Pending != 100 || ak.Rejected != 200 {
		t.Fatalf("orphans: %+v %v", ak, err)
	}
	stillOpen(t, c) // a full buffer is no proof of malice
	if n := len(a.inst.Missing()); n != 100 {
		t.Fatalf("%d missing parents, want 100", n)
	}

	// b writes an entry; its tampered copy is one of the forgeries.
	db, _ := b.inst.DatabaseByID(da.ID())
	tx := db.Begin()
	tx.Store("s").Set("tampered", []byte("honest"))
	bid, _ := tx.Commit(engine.Journal)
	braw, _ := b.inst.Entry(bid)
	tampered := slices.Clone(braw)
	tampered[len(tampered)-70] ^= 1 // inside the value, before the signature

	own, _ := m.inst.CreateDatabase("elsewhere", "")
	write(t, own, "k", "v")

	forgeries := []struct {
		name string
		raws [][]byte
	}{
		{"signed by a reader", [][]byte{forge(t, &engine.Entry{Root: da.ID(), Parents: tip.Tips, Height: tip.Height + 1, Time: 1, Stores: setOp("evil", "x")}, mID)}},
		{"signed by a key never granted", [][]byte{forge(t, &engine.Entry{Root: da.ID(), Parents: tip.Tips, Height: tip.Height + 1, Time: 1, Stores: setOp("evil", "x")}, engine.NewIdentity())}},
		{"tampered", [][]byte{tampered}},
		{"another database", entriesOf(own)},
		{"a valid entry, then a bad signature", [][]byte{braw, append(slices.Clone(braw[:len(braw)-1]), braw[len(braw)-1]^1)}},
	}
	for i, f := range forgeries {
		ak, c, err := push(f.raws)
		if err == nil && ak.Rejected == 0 {
			t.Errorf("%s: accepted: %+v", f.name, ak)
		}
		if code := closedBy(t, c, 5*time.Second); code != codeForged {
			t.Errorf("%s: closed with code %d, want %d", f.name, code, codeForged)
		}
		if got := a.node.Abuse().ForgedUploads; got != uint64(i+1) {
			t.Errorf("%s: %d forged uploads counted, want %d", f.name, got, i+1)
		}
		if i == 0 {
			if n := len(a.inst.Missing()); n != 0 {
				t.Errorf("the forger's orphans still wait: %d missing parents", n)
			}
		}
	}
	// b's honest entry is stored (pushed by b, or in m's last batch).
	if !has(a.inst, da.ID(), "tampered", "honest") {
		t.Error("b's honest entry was lost")
	}
	if got := da.Count(); got != count+1 || len(a.inst.Databases()) != dbs {
		t.Fatalf("stored: %d entries (want %d), %d databases (want %d)", got, count+1, len(a.inst.Databases()), dbs)
	}
	if has(a.inst, da.ID(), "evil", "x") || has(a.inst, da.ID(), "orphan", "x") {
		t.Fatal("a forged value is stored")
	}
	if _, ok := a.inst.DatabaseByID(own.ID()); ok {
		t.Fatal("a database slipped in")
	}
	p, _ := a.node.State().Peer(mID.Public())
	t.Logf("m's record: %d rejected entries; node counts %+v", p.Rejected, a.node.Abuse())
	if p.Rejected < 200+uint64(len(forgeries)) {
		t.Fatalf("%d rejected entries counted for m", p.Rejected)
	}

	// The writer is unaffected.
	write(t, db, "after", "ok")
	eventually(t, "b's push after the attacks", func() bool { return has(a.inst, da.ID(), "after", "ok") })
}

// TestFloodsDoNotStarvePeers: one key opens 50 connections at once, then a member
// makes 2,000 requests on many streams; the node keeps the key to its caps, and a
// well-behaved peer syncing all along is served promptly.
func TestFloodsDoNotStarvePeers(t *testing.T) {
	a, b, da := pair(t, engine.Options{})
	// The member floods later; it joins first, as every node here dials from
	// 127.0.0.1 and the connection flood spends that address's handshake budget.
	m := startNode(t, "m")
	tk, _ := a.node.Share(da, engine.PermRead)
	if _, err := m.node.Join(context.Background(), tk, nil); err != nil {
		t.Fatal(err)
	}
	sy := keepSyncing(a, b, da)

	// Connection flood from one stranger key.
	x := newIntruder(t, nil)
	var wg sync.WaitGroup
	var dialed, failed atomic.Int64
	start := time.Now()
	for range 50 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := x.tr.Dial(ctx, a.addr, a.key()); err != nil {
				failed.Add(1)
			} else {
				dialed.Add(1)
			}
		})
	}
	wg.Wait()
	eventually(t, "the flood to be refused", func() bool {
		ab := a.node.Abuse()
		return ab.ConnsRefused+ab.HandshakesRefused >= 50-maxConnsPerPeer
	})
	a.node.mu.Lock()
	live := len(a.node.liveLocked(x.id.Public()))
	a.node.mu.Unlock()
	ab := a.node.Abuse()
	t.Logf("connection flood: 50 dials in %v, %d handshakes completed, %d refused at the handshake, %d closed over the cap, %d kept",
		time.Since(start), dialed.Load(), ab.HandshakesRefused, ab.ConnsRefused, live)
	if live > maxConnsPerPeer {
		t.Fatalf("%d connections kept for one key", live)
	}

	// Request flood from the member, on 5 more connections of its key with 48
	// requests under way on each: more than the node lets wait for its rate.
	const total, conns, perConn = 2000, 5, 48
	mx := newIntruder(t, m.inst.Identity())
	var flood []*Conn
	var next, ok, busy atomic.Int64
	var other atomic.Value
	start = time.Now()
	for i := range conns * perConn {
		if i%perConn == 0 {
			// The connection flood above emptied 127.0.0.1's handshake budget (20 a
			// second): like a node's retry, wait for the next token.
			c := mx.dialRetry(t, a, 3*time.Second)
			stillOpen(t, c) // within the key's connection cap
			flood = append(flood, c)
		}
		c := flood[len(flood)-1]
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for i := next.Add(1); i <= total; i = next.Add(1) {
				s, err := c.OpenStream(ctx)
				if err != nil {
					other.Store(err)
					return
				}
				switch i % 3 {
				case 0:
					_, err = m.node.p.discover(s)
				case 1:
					err = m.node.p.sync(s, a.key(), da.ID(), nil, nil).Err
				default:
					_, err = m.node.p.call(s, &request{Op: "get", DB: da.ID(), IDs: da.Tips()})
				}
				s.Close()
				switch {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, ErrBusy):
					busy.Add(1)
				default:
					other.Store(err)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	ab = a.node.Abuse()
	t.Logf("request flood: %d requests in %v: %d served, %d refused as busy; node counts %+v", total, took, ok.Load(), busy.Load(), ab)
	if err := other.Load(); err != nil {
		t.Fatalf("flood request failed otherwise: %v", err)
	}
	if busy.Load() == 0 || ab.RequestsLimited == 0 {
		t.Fatal("no request was limited")
	}
	if served := float64(ok.Load()); served > requestBurst+requestRate*took.Seconds()*1.5+10 {
		t.Fatalf("%v requests served in %v: over the rate", served, took)
	}
	sy.finish(t, 5*time.Second)
}

// TestHandshakeLimits: handshakes beyond the node-wide cap, or beyond a source
// address's rate, are refused before any signature; freed slots are reused, and a
// busy listener asks for address validation.
func TestHandshakeLimits(t *testing.T) {
	g := &handshakeGuard{max: 4, rate: 1000, burst: 1000, sources: map[netip.Addr]*rate.Limiter{}}
	addr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	var cancels []context.CancelFunc
	for i := range 5 {
		ctx, cancel := context.WithCancel(context.Background())
		_, err := g.connContext(ctx, &quic.ClientInfo{RemoteAddr: addr})
		if (err == nil) != (i < 4) {
			t.Fatalf("handshake %d: %v", i, err)
		}
		cancels = append(cancels, cancel)
	}
	if !g.verifySource(addr) {
		t.Fatal("a full listener does not ask for address validation")
	}
	cancels[0]() // that handshake failed: its slot is free again
	eventually(t, "the slot to be freed", func() bool { return g.active.Load() == 3 })
	if _, err := g.connContext(context.Background(), &quic.ClientInfo{RemoteAddr: addr}); err != nil {
		t.Fatalf("after a slot was freed: %v", err)
	}
	for _, c := range cancels {
		c()
	}

	// Over QUIC: a source address gets its burst, then is refused.
	srv, err := NewTransport(Config{Identity: engine.NewIdentity(), ListenAddrs: []string{"127.0.0.1:0"}, HandshakeRate: 0.01, HandshakeBurst: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		for {
			c, err := srv.Accept(context.Background())
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cl, _ := trTransport(t, false)
	refused := 0
	for range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		if _, err := cl.Dial(ctx, srv.Addrs()[0], engine.PublicKey{}); err != nil {
			refused++
		}
		cancel()
	}
	// Each Initial packet of a refused attempt is refused (and counted) anew.
	if refused != 2 || srv.HandshakesRefused() < 2 {
		t.Fatalf("%d dials refused, %d refusals counted; want 2 and at least 2", refused, srv.HandshakesRefused())
	}
}
