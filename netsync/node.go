package netsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// PeerConfig is a peer named in the configuration.
type PeerConfig struct {
	Key   engine.PublicKey
	Name  string
	Addrs []string
}

// Options configure a Node. Zero durations take the defaults in brackets.
type Options struct {
	Instance *engine.Instance
	KV       *kv.DB // the instance's store; sync state lives under its own prefix
	Name     string
	Listen   []string
	// Advertise are the addresses peers are told to reach this node at (hello,
	// tickets) when they differ from Listen: a port forwarded by a router, a
	// proxy in front of the node. Empty: the listening addresses.
	Advertise []string
	Peers     []PeerConfig
	Periodic  time.Duration // full sync with every peer [5m]
	Retry     time.Duration // first retry after a failure [30s], doubling
	RetryCap  time.Duration // longest wait between retries [5m]
	Health    time.Duration // peer health check [60s]
	Log       *slog.Logger
	// Passive nodes only answer and do what they are asked (a one-off CLI command):
	// no pushes, periodic syncs or health checks.
	Passive bool
	// Clock schedules retries, periodic syncs and health checks; nil is the real
	// one. Tests drive the scheduler with a fake.
	Clock Clock
}

// Clock is the time source of the background scheduler.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Node is the sync engine of one eidefs node.
type Node struct {
	o     Options
	inst  *engine.Instance
	state *State
	tr    *Transport
	p     *proto
	log   *slog.Logger
	sub   *engine.Subscription

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex                   // guards conns, guards, strangerConns, workers and listeners
	conns   map[engine.PublicKey][]*Conn // live connections per peer, oldest first
	workers map[engine.PublicKey]*worker
	// guards are the request budgets of the keys with live connections.
	guards        map[engine.PublicKey]*peerGuard
	strangerConns int // inbound connections of keys neither peers nor members
	abuse         abuseCounters
	// listeners get every sync record as it happens (.sync/history).
	listeners []func(HistoryRecord)
	tickets   map[engine.ID]Ticket // read-only tickets shown in .sync/ticket
	progress  func(peer engine.PublicKey, db engine.ID, done, total int)
}

// Start opens the transport and starts serving, pushing and syncing.
func Start(o Options) (*Node, error) {
	if o.Periodic == 0 {
		o.Periodic = 5 * time.Minute
	}
	if o.Retry == 0 {
		o.Retry = 30 * time.Second
	}
	if o.RetryCap == 0 {
		o.RetryCap = 5 * time.Minute
	}
	if o.Health == 0 {
		o.Health = time.Minute
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	st, err := openState(o.KV)
	if err != nil {
		return nil, fmt.Errorf("sync state: %w", err)
	}
	tr, err := NewTransport(Config{Identity: o.Instance.Identity(), ListenAddrs: o.Listen})
	if err != nil {
		return nil, err
	}
	n := &Node{o: o, inst: o.Instance, state: st, tr: tr, log: o.Log,
		conns: map[engine.PublicKey][]*Conn{}, workers: map[engine.PublicKey]*worker{}, guards: map[engine.PublicKey]*peerGuard{}}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.p = &proto{inst: n.inst, name: o.Name, addrs: n.Advertised, learned: n.learned, redeem: st.redeem,
		rejected: func(k engine.PublicKey, c int) {
			st.updatePeer(k, func(p *PeerInfo) { p.Rejected += uint64(c) })
		},
		admit: n.admitRequest}
	for _, pc := range o.Peers {
		n.AddPeer(pc.Key, pc.Name, pc.Addrs)
	}
	n.wg.Add(1)
	go n.acceptLoop()
	if !o.Passive {
		n.sub = n.inst.Subscribe()
		n.wg.Add(1)
		go n.eventLoop()
		for _, p := range st.Peers() {
			n.worker(p.Key).requestFull(nil)
		}
	}
	return n, nil
}

// Close stops everything and waits for it.
func (n *Node) Close() error {
	n.cancel()
	if n.sub != nil {
		n.sub.Close()
	}
	err := n.tr.Close()
	n.wg.Wait()
	return err
}

// Addrs are the addresses this node listens on.
func (n *Node) Addrs() []string { return n.tr.Addrs() }

// Advertised returns the addresses peers are told to reach this node at.
func (n *Node) Advertised() []string {
	if len(n.o.Advertise) > 0 {
		return slices.Clone(n.o.Advertise)
	}
	return n.tr.Addrs()
}

// State is the persistent sync state.
func (n *Node) State() *State { return n.state }

// OnHistory registers fn to be called with every sync record.
func (n *Node) OnHistory(fn func(HistoryRecord)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.listeners = append(n.listeners, fn)
}

// AddPeer adds (or updates) a peer and syncs with it soon.
func (n *Node) AddPeer(key engine.PublicKey, name string, addrs []string) error {
	err := n.state.updatePeer(key, func(p *PeerInfo) {
		if name != "" {
			p.Name = name
		}
		for _, a := range addrs {
			if !slices.Contains(p.Addrs, a) {
				p.Addrs = append(p.Addrs, a)
			}
		}
	})
	if err == nil && !n.o.Passive {
		n.worker(key).requestFull(nil)
	}
	return err
}

// RemovePeer forgets a peer, by key or name.
func (n *Node) RemovePeer(keyOrName string) error {
	p, err := n.findPeer(keyOrName)
	if err != nil {
		return err
	}
	n.mu.Lock()
	if w := n.workers[p.Key]; w != nil {
		w.stop()
		delete(n.workers, p.Key)
	}
	for _, c := range n.conns[p.Key] {
		c.Close()
	}
	delete(n.conns, p.Key)
	n.mu.Unlock()
	return n.state.removePeer(p.Key)
}

func (n *Node) findPeer(keyOrName string) (PeerInfo, error) {
	for _, p := range n.state.Peers() {
		if p.Name == keyOrName || p.Key.String() == keyOrName {
			return p, nil
		}
	}
	return PeerInfo{}, fmt.Errorf("%w: %q", ErrPeerNotFound, keyOrName)
}

// learned records what a peer said about itself. Strangers are remembered only
// once they are members of a database here.
func (n *Node) learned(key engine.PublicKey, name string, addrs []string) {
	if _, known := n.state.Peer(key); !known && !n.isMember(key) {
		return
	}
	n.state.updatePeer(key, func(p *PeerInfo) {
		if name != "" {
			p.Name = name
		}
		for _, a := range addrs {
			if !slices.Contains(p.Addrs, a) {
				p.Addrs = append(p.Addrs, a)
			}
		}
		p.LastSeen, p.Status = time.Now(), "active" // it just talked to us
	})
}

// isMember reports whether key may read any database here.
func (n *Node) isMember(key engine.PublicKey) bool {
	for _, info := range n.inst.Databases() {
		if n.memberOf(key, info.ID) {
			return true
		}
	}
	return false
}

func (n *Node) memberOf(key engine.PublicKey, db engine.ID) bool {
	d, ok := n.inst.DatabaseByID(db)
	if !ok {
		return false
	}
	s, err := d.Settings()
	return err == nil && s.Permission(key) >= engine.PermRead
}

// sharedWith lists the databases here that peer may read.
func (n *Node) sharedWith(key engine.PublicKey) []engine.ID {
	var out []engine.ID
	for _, info := range n.inst.Databases() {
		if n.memberOf(key, info.ID) {
			out = append(out, info.ID)
		}
	}
	return out
}

// ---- connections ----

func (n *Node) acceptLoop() {
	defer n.wg.Done()
	for {
		c, err := n.tr.Accept(n.ctx)
		if err != nil {
			return
		}
		if n.admit(c) {
			n.adopt(c)
		}
	}
}

// adopt registers a connection and serves the requests the peer makes on it.
func (n *Node) adopt(c *Conn) {
	n.mu.Lock()
	// Every connection is kept until it ends; requests go over the oldest live one
	// (a short-lived one, such as a peer's discover, may close at any moment).
	n.conns[c.Peer()] = append(n.liveLocked(c.Peer()), c)
	n.guardLocked(c.Peer())
	w := n.workers[c.Peer()]
	n.mu.Unlock()
	if w != nil {
		w.revive() // it is back: stop waiting out a retry
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer n.forget(c)
		for {
			s, err := c.AcceptStream(n.ctx)
			if err != nil {
				return
			}
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				defer s.Close()
				if err := n.p.serve(s, c.Peer()); err != nil && n.ctx.Err() == nil {
					n.served(c, err)
				}
			}()
		}
	}()
}

// liveLocked prunes and returns the peer's connections that are still up.
func (n *Node) liveLocked(key engine.PublicKey) []*Conn {
	var live []*Conn // a new slice: callers keep the one they got
	for _, c := range n.conns[key] {
		select {
		case <-c.Done():
		default:
			live = append(live, c)
		}
	}
	if len(live) == 0 {
		delete(n.conns, key)
		return nil
	}
	n.conns[key] = live
	return live
}

// conn returns a live connection to peer, dialling its known addresses if needed.
func (n *Node) conn(ctx context.Context, key engine.PublicKey) (*Conn, error) {
	n.mu.Lock()
	var c *Conn
	if live := n.liveLocked(key); len(live) > 0 {
		c = live[0]
	}
	n.mu.Unlock()
	if c != nil {
		return c, nil
	}
	p, ok := n.state.Peer(key)
	if !ok || len(p.Addrs) == 0 {
		return nil, fmt.Errorf("%w: no address known for %s", ErrPeerNotFound, key.Short())
	}
	var errs []error
	for _, addr := range p.Addrs {
		c, err := n.tr.Dial(ctx, addr, key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n.adopt(c)
		if s, err := c.OpenStream(ctx); err == nil {
			if resp, err := n.p.hello(s); err == nil {
				n.learned(key, resp.Name, resp.Addrs)
			}
			s.Close()
		}
		return c, nil
	}
	return nil, errors.Join(errs...)
}

// stream opens a request stream to peer.
func (n *Node) stream(ctx context.Context, key engine.PublicKey) (Stream, error) {
	c, err := n.conn(ctx, key)
	if err != nil {
		return nil, err
	}
	s, err := c.OpenStream(ctx)
	if err != nil {
		// The connection died under us: try the next (or a fresh dial) once.
		c.Close()
		n.mu.Lock()
		n.liveLocked(key)
		n.mu.Unlock()
		if c, err = n.conn(ctx, key); err != nil {
			return nil, err
		}
		if s, err = c.OpenStream(ctx); err != nil {
			return nil, err
		}
	}
	return withPacing(s), nil
}

// ---- syncing ----

// SyncDB syncs one database with one peer now and records the outcome.
func (n *Node) SyncDB(ctx context.Context, key engine.PublicKey, db engine.ID) Result {
	res := n.syncDB(ctx, key, db)
	if errors.As(res.Err, new(*quic.StatelessResetError)) {
		// The peer restarted since this connection was made: its new process
		// answered the old connection with a reset. Once more on a fresh one.
		n.dropConns(key)
		res = n.syncDB(ctx, key, db)
	}
	if errors.Is(res.Err, errForged) {
		n.abuse.forged.Add(1)
		n.punish(key, codeForged, res.Err)
	}
	return n.finish(res)
}

// syncDB is one attempt of SyncDB, not yet recorded.
func (n *Node) syncDB(ctx context.Context, key engine.PublicKey, db engine.ID) Result {
	s, err := n.stream(ctx, key)
	if err != nil {
		return Result{Peer: key, DB: db, Started: time.Now(), Err: err}
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	n.mu.Lock()
	report := n.progress
	n.mu.Unlock()
	var progress func(done, total int)
	if report != nil {
		progress = func(done, total int) { report(key, db, done, total) }
	}
	res := n.p.sync(s, key, db, nil, progress)
	stop()
	s.Close()
	if res.Err == nil {
		res.Err = n.repair(ctx, key, db, &res)
	}
	return res
}

// repair fetches entries a version vector cannot describe (an author's chain that
// forked): the parents the instance still waits for.
func (n *Node) repair(ctx context.Context, key engine.PublicKey, db engine.ID, res *Result) error {
	for round := 0; round < 16; round++ {
		missing := n.inst.Missing()
		if len(missing) == 0 {
			return nil
		}
		s, err := n.stream(ctx, key)
		if err != nil {
			return err
		}
		before := res.Received
		_, err = n.p.call(s, &request{Op: "get", DB: db, IDs: missing})
		if err == nil {
			err = n.p.receive(s, key, res, len(missing), nil)
		}
		s.Close()
		if err != nil {
			return err
		}
		if res.Received == before {
			return nil // what is still missing is not this peer's to give (another database)
		}
	}
	return fmt.Errorf("entries still missing after repair")
}

func (n *Node) finish(res Result) Result {
	var tip engine.ID
	if d, ok := n.inst.DatabaseByID(res.DB); ok {
		if tips := d.Tips(); len(tips) > 0 {
			tip = tips[0]
		}
	}
	h, err := n.state.record(res, tip)
	if err != nil {
		n.log.Warn("recording sync", "err", err)
	}
	n.state.updatePeer(res.Peer, func(p *PeerInfo) {
		if res.Err == nil {
			p.Status, p.LastSync, p.LastSeen, p.LastError, p.Failures = "active", time.Now(), time.Now(), "", 0
		} else {
			p.LastError = res.Err.Error()
		}
	})
	n.mu.Lock()
	ls := slices.Clone(n.listeners)
	n.mu.Unlock()
	for _, fn := range ls {
		fn(h)
	}
	if res.Err != nil {
		n.log.Info("sync failed", "peer", res.Peer.Short(), "db", res.DB.Short(), "err", res.Err)
	} else if res.Received+res.Sent > 0 {
		n.log.Debug("synced", "peer", res.Peer.Short(), "db", res.DB.Short(), "received", res.Received, "sent", res.Sent, "took", res.Duration)
	}
	return res
}

// SyncAll syncs every shared database with every peer now.
func (n *Node) SyncAll(ctx context.Context) []Result {
	var out []Result
	for _, p := range n.state.Peers() {
		out = append(out, n.SyncPeer(ctx, p.Key)...)
	}
	return out
}

// SyncPeer syncs every database shared with one peer now.
func (n *Node) SyncPeer(ctx context.Context, key engine.PublicKey) []Result {
	var out []Result
	dbs := n.sharedWith(key)
	if len(dbs) == 0 {
		return []Result{{Peer: key, Err: fmt.Errorf("no database here is shared with %s", key.Short())}}
	}
	for _, db := range dbs {
		out = append(out, n.SyncDB(ctx, key, db))
	}
	return out
}

// FindPeer looks a peer up by key string or name.
func (n *Node) FindPeer(keyOrName string) (PeerInfo, error) { return n.findPeer(keyOrName) }

// Discover asks the node at addr who it is and what it shares with this node.
func (n *Node) Discover(ctx context.Context, addr string) (engine.PublicKey, string, []Offer, error) {
	c, err := n.tr.Dial(ctx, addr, engine.PublicKey{})
	if err != nil {
		return engine.PublicKey{}, "", nil, err
	}
	defer c.Close()
	s, err := c.OpenStream(ctx)
	if err != nil {
		return c.Peer(), "", nil, err
	}
	resp, err := n.p.hello(s)
	s.Close()
	if err != nil {
		return c.Peer(), "", nil, err
	}
	if s, err = c.OpenStream(ctx); err != nil {
		return c.Peer(), resp.Name, nil, err
	}
	defer s.Close()
	offers, err := n.p.discover(s)
	return c.Peer(), resp.Name, offers, err
}

// Share makes a ticket for db carrying a one-time invite that grants perm.
func (n *Node) Share(db *engine.Database, perm engine.Permission) (Ticket, error) {
	s, err := db.Settings()
	if err != nil {
		return Ticket{}, err
	}
	if s.Permission(n.inst.Identity().Public()) < engine.PermAdmin {
		return Ticket{}, fmt.Errorf("%w: only an admin of %q can share it", ErrNotAuthorized, db.Name())
	}
	addrs := n.Advertised()
	if len(n.o.Listen) == 0 {
		return Ticket{}, errors.New("this node does not listen for peers; start it with --listen (or set listen in eidefs.toml)")
	}
	token, err := n.state.newInvite(db.ID(), perm)
	if err != nil {
		return Ticket{}, err
	}
	return Ticket{DB: db.ID(), Name: db.Name(), Owner: n.inst.Identity().Public(), Addrs: addrs, Invite: token}, nil
}

// Join clones the database a ticket describes and keeps it in sync with its owner.
func (n *Node) Join(ctx context.Context, t Ticket, progress func(done, total int)) (*engine.Database, error) {
	if d, ok := n.inst.DatabaseByID(t.DB); ok {
		return d, fmt.Errorf("database %s is already here as %q", t.DB.Short(), d.Name())
	}
	n.AddPeer(t.Owner, "", t.Addrs)
	s, err := n.stream(ctx, t.Owner)
	if err != nil {
		return nil, err
	}
	res := n.p.sync(s, t.Owner, t.DB, t.Invite, progress)
	s.Close()
	n.finish(res)
	if res.Err != nil {
		return nil, res.Err
	}
	d, ok := n.inst.DatabaseByID(t.DB)
	if !ok {
		return nil, fmt.Errorf("%w: nothing received for %s", ErrProtocol, t.DB.Short())
	}
	return d, nil
}

// ---- background work ----

// eventLoop queues every stored entry for the peers that share its database,
// except the one it came from: commits are pushed at once, and entries received
// from one peer are relayed to the others.
func (n *Node) eventLoop() {
	defer n.wg.Done()
	for ev := range n.sub.C {
		for _, p := range n.state.Peers() {
			if p.Key.String() == ev.Origin || !n.memberOf(p.Key, ev.DB) {
				continue
			}
			n.worker(p.Key).push(ev.DB, ev.Entry)
		}
	}
}

func (n *Node) worker(key engine.PublicKey) *worker {
	n.mu.Lock()
	defer n.mu.Unlock()
	w := n.workers[key]
	if w == nil {
		w = &worker{n: n, key: key, pending: map[engine.ID][]engine.ID{}, full: map[engine.ID]bool{},
			wake: make(chan struct{}, 1), quit: make(chan struct{})}
		n.workers[key] = w
		n.wg.Add(1)
		go w.run()
	}
	return w
}

// worker does one peer's syncing: pushes, full syncs, retries and health checks.
type worker struct {
	n   *Node
	key engine.PublicKey

	mu         sync.Mutex // guards pending, full and all
	pending    map[engine.ID][]engine.ID
	full       map[engine.ID]bool
	all        bool // full sync of every shared database
	revived    bool // the peer reappeared: retry at once
	reschedule bool // the intervals changed
	waiting    bool // failed and waiting for a retry (guarded by mu)

	wake     chan struct{}
	quit     chan struct{}
	stopOnce sync.Once
	checking atomic.Bool // a health check is running
}

func (w *worker) stop() { w.stopOnce.Do(func() { close(w.quit) }) }

// revive ends a retry wait: the peer showed up (it connected to us).
func (w *worker) revive() {
	w.mu.Lock()
	w.revived, w.all = true, true
	w.mu.Unlock()
	w.kick()
}

func (w *worker) kick() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *worker) push(db, entry engine.ID) {
	w.mu.Lock()
	w.pending[db] = append(w.pending[db], entry)
	w.mu.Unlock()
	w.kick()
}

// requestFull asks for a full sync of db (nil: every shared database).
func (w *worker) requestFull(db *engine.ID) {
	w.mu.Lock()
	if db == nil {
		w.all = true
	} else {
		w.full[*db] = true
	}
	w.mu.Unlock()
	w.kick()
}

func (w *worker) run() {
	n := w.n
	defer n.wg.Done()
	failures := 0
	var retryAt time.Time
	clock := n.o.Clock
	iv := n.Intervals()
	nextPeriodic := clock.Now().Add(iv.Periodic)
	nextHealth := clock.Now().Add(iv.Health)
	for {
		now := clock.Now()
		wait := nextPeriodic.Sub(now)
		if d := nextHealth.Sub(now); d < wait {
			wait = d
		}
		if !retryAt.IsZero() {
			wait = retryAt.Sub(now)
		}
		timer := clock.After(max(wait, 0))
		select {
		case <-n.ctx.Done():
			return
		case <-w.quit:
			return
		case <-w.wake:
			w.mu.Lock()
			revived, resched := w.revived, w.reschedule
			w.revived, w.reschedule = false, false
			w.mu.Unlock()
			if revived {
				retryAt = time.Time{}
			}
			if resched { // new intervals: count from now
				iv = n.Intervals()
				nextPeriodic, nextHealth = clock.Now().Add(iv.Periodic), clock.Now().Add(iv.Health)
				continue
			}
			if !retryAt.IsZero() && clock.Now().Before(retryAt) {
				continue // failing peer: wait for the retry
			}
		case <-timer:
		}
		now = clock.Now()
		if !now.Before(nextPeriodic) || (!retryAt.IsZero() && !now.Before(retryAt)) {
			w.requestFull(nil)
			nextPeriodic = now.Add(iv.Periodic)
		}
		if !now.Before(nextHealth) {
			nextHealth = now.Add(iv.Health)
			if w.checking.CompareAndSwap(false, true) {
				// On its own goroutine: it must catch a connection this one is
				// blocked on.
				n.wg.Add(1)
				go func() {
					defer n.wg.Done()
					defer w.checking.Store(false)
					w.health(healthTimeout(iv.Health))
				}()
			}
		}
		if w.once() {
			failures, retryAt = 0, time.Time{}
			w.mu.Lock()
			w.waiting = false
			w.mu.Unlock()
			continue
		}
		failures++
		// The first retry comes within a second (a connection that just closed is
		// the usual cause); then Retry, doubling up to RetryCap.
		backoff := min(time.Second, iv.Retry)
		if failures > 1 {
			backoff = iv.Retry << min(failures-2, 16)
		}
		retryAt = clock.Now().Add(min(backoff, iv.RetryCap))
		w.mu.Lock()
		w.waiting = true
		w.mu.Unlock()
		n.state.updatePeer(w.key, func(p *PeerInfo) { p.Failures, p.Status = failures, "inactive" })
		w.requestFull(nil) // whatever failed is covered by the full sync at retry time
	}
}

// once does the queued work; false if anything failed.
func (w *worker) once() bool {
	n := w.n
	w.mu.Lock()
	pending, full, all := w.pending, w.full, w.all
	w.pending, w.full, w.all = map[engine.ID][]engine.ID{}, map[engine.ID]bool{}, false
	w.mu.Unlock()
	if all {
		for _, db := range n.sharedWith(w.key) {
			full[db] = true
		}
	}
	ok := true
	ctx, cancel := context.WithTimeout(n.ctx, 2*time.Minute)
	defer cancel()
	for db, ids := range pending {
		if full[db] {
			continue
		}
		if !w.pushEntries(ctx, db, ids) {
			full[db] = true
		}
	}
	for db := range full {
		// A peer that does not have the database (yet) is not failing.
		if res := n.SyncDB(ctx, w.key, db); res.Err != nil && !errors.Is(res.Err, ErrUnknownDatabase) {
			ok = false
		}
	}
	return ok
}

// pushEntries sends new entries; false when the peer needs a full sync instead.
func (w *worker) pushEntries(ctx context.Context, db engine.ID, ids []engine.ID) bool {
	n := w.n
	raws := make([][]byte, 0, len(ids))
	for _, id := range ids {
		raw, err := n.inst.Entry(id)
		if err != nil {
			return false
		}
		raws = append(raws, raw)
	}
	start := time.Now()
	s, err := n.stream(ctx, w.key)
	if err != nil {
		return false
	}
	defer s.Close()
	a, err := n.p.push(s, db, raws)
	if errors.Is(err, ErrUnknownDatabase) {
		return true // not there yet: its clone brings these entries
	}
	if err != nil || a.Pending > 0 || a.Rejected > 0 {
		return false
	}
	bytes := 0
	has := engine.VersionVector{}
	for i, r := range raws {
		bytes += len(r)
		if a, s, err := n.inst.EntryVersion(ids[i]); err == nil {
			has.Merge(engine.VersionVector{a: s})
		}
	}
	n.finish(Result{Peer: w.key, DB: db, Sent: len(raws), BytesOut: bytes, Started: start, Duration: time.Since(start), PeerHas: has})
	return true
}

// health pings the peer and updates its status.
// healthTimeout is how long a health check waits for the peer's answer.
func healthTimeout(every time.Duration) time.Duration {
	return min(max(every, 2*time.Second), 10*time.Second)
}

// health asks the peer for a hello. A peer that does not answer in time is
// unreachable for now (a partition, a dead host): its connections are closed, so
// that requests blocked on them fail at once and the retries dial afresh, instead
// of waiting out QUIC's idle timeout with the peer still shown as active.
func (w *worker) health(timeout time.Duration) {
	n := w.n
	ctx, cancel := context.WithTimeout(n.ctx, timeout)
	defer cancel()
	s, err := n.stream(ctx, w.key)
	if err == nil {
		if ps, ok := s.(*pacedStream); ok {
			ps.idle = timeout
		}
		_, err = n.p.hello(s)
		s.Close()
	}
	if err != nil && n.ctx.Err() == nil && isTimeout(err) {
		n.dropConns(w.key)
	}
	n.state.updatePeer(w.key, func(p *PeerInfo) {
		if err != nil {
			p.Status, p.LastError = "inactive", err.Error()
		} else {
			p.Status, p.LastSeen = "active", time.Now()
		}
	})
}

// isTimeout reports whether err is a deadline that passed (and not an answer,
// such as busy, that the peer gave).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// dropConns closes every connection to key.
func (n *Node) dropConns(key engine.PublicKey) {
	n.mu.Lock()
	conns := n.conns[key]
	n.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// Holders lists the peers known to hold entry id of database db.
func (n *Node) Holders(db, id engine.ID) []PeerInfo {
	a, s, err := n.inst.EntryVersion(id)
	if err != nil {
		return nil
	}
	var out []PeerInfo
	for _, p := range n.state.Peers() {
		if n.state.Cursor(p.Key, db).Holds(a, s) {
			out = append(out, p)
		}
	}
	return out
}

// Queues reports the entries waiting to be pushed (summed over peers) and how
// many peers wait for a retry after a failure.
func (n *Node) Queues() (pendingPush, retrying int) {
	n.mu.Lock()
	ws := make([]*worker, 0, len(n.workers))
	for _, w := range n.workers {
		ws = append(ws, w)
	}
	n.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		for _, ids := range w.pending {
			pendingPush += len(ids)
		}
		if w.waiting {
			retrying++
		}
		w.mu.Unlock()
	}
	return pendingPush, retrying
}

// ReadTicket is a read-only ticket for db, the same until someone joins with it
// (it carries a one-time invite), for <db>/.sync/ticket.
func (n *Node) ReadTicket(db *engine.Database) (Ticket, error) {
	n.mu.Lock()
	if n.tickets == nil {
		n.tickets = map[engine.ID]Ticket{}
	}
	t, ok := n.tickets[db.ID()]
	n.mu.Unlock()
	if ok && !n.state.inviteUsed(t.Invite) {
		return t, nil
	}
	t, err := n.Share(db, engine.PermRead)
	if err != nil {
		return Ticket{}, err
	}
	n.mu.Lock()
	n.tickets[db.ID()] = t
	n.mu.Unlock()
	return t, nil
}

// SetPeer makes a peer's name and addresses exactly these (configuration reload:
// a peer whose address changed is dialled at the new one).
func (n *Node) SetPeer(key engine.PublicKey, name string, addrs []string) error {
	err := n.state.updatePeer(key, func(p *PeerInfo) {
		if name != "" {
			p.Name = name
		}
		p.Addrs = slices.Clone(addrs)
	})
	if err == nil && !n.o.Passive {
		n.worker(key).requestFull(nil)
	}
	return err
}

// Intervals are the background schedule's periods.
type Intervals struct {
	Periodic, Retry, RetryCap, Health time.Duration
}

// Intervals returns the current schedule.
func (n *Node) Intervals() Intervals {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Intervals{n.o.Periodic, n.o.Retry, n.o.RetryCap, n.o.Health}
}

// SetIntervals changes the schedule of a running node (configuration reload); zero
// fields keep their value. Workers count the new periods from now.
func (n *Node) SetIntervals(iv Intervals) {
	n.mu.Lock()
	if iv.Periodic > 0 {
		n.o.Periodic = iv.Periodic
	}
	if iv.Retry > 0 {
		n.o.Retry = iv.Retry
	}
	if iv.RetryCap > 0 {
		n.o.RetryCap = iv.RetryCap
	}
	if iv.Health > 0 {
		n.o.Health = iv.Health
	}
	ws := make([]*worker, 0, len(n.workers))
	for _, w := range n.workers {
		ws = append(ws, w)
	}
	n.mu.Unlock()
	for _, w := range ws {
		w.mu.Lock()
		w.reschedule = true
		w.mu.Unlock()
		w.kick()
	}
}

// OnProgress sets a function told, during each sync, how many of the announced
// entries have been received (a progress bar for long syncs).
func (n *Node) OnProgress(fn func(peer engine.PublicKey, db engine.ID, done, total int)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.progress = fn
}
