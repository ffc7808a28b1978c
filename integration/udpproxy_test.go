package integration

// A faulty network between eidefs nodes on 127.0.0.1, without tc netem or network
// namespaces: a UDP proxy in front of each node, and rules per directed link (from
// one node to another) that cut the link or drop, delay, duplicate and reorder its
// packets. Each node advertises its proxy's address, so peers only ever reach it
// through the proxy; a node dials from its listening socket, so at a proxy the
// source address of a packet names the node that sent it.

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// link is the direction from one node to another, by node name.
type link struct{ From, To string }

func (l link) String() string { return l.From + "→" + l.To }

// unknownSource names the sender of a packet from an address that is no node's.
const unknownSource = "?"

// linkRules are the faults of one directed link. The zero value forwards every
// packet at once.
type linkRules struct {
	Down      bool          // cut: every packet is lost
	Drop      float64       // probability that a packet is lost
	Delay     time.Duration // added to every packet
	Jitter    time.Duration // up to this much more, uniformly: packets overtake each other
	Duplicate float64       // probability that a packet is sent twice
	Reorder   float64       // probability that a packet is held back behind later ones
}

// linkStats count what a link did to its packets. Forwarded counts packets let
// through (a duplicate once); Cut those lost to a down link, Dropped those lost at
// random.
type linkStats struct {
	Forwarded, Dropped, Cut, Duplicated, Delayed, Reordered uint64
}

func (s *linkStats) add(o linkStats) {
	s.Forwarded += o.Forwarded
	s.Dropped += o.Dropped
	s.Cut += o.Cut
	s.Duplicated += o.Duplicated
	s.Delayed += o.Delayed
	s.Reordered += o.Reordered
}

func (s linkStats) String() string {
	return fmt.Sprintf("forwarded %d, dropped %d, cut %d, duplicated %d, delayed %d, reordered %d",
		s.Forwarded, s.Dropped, s.Cut, s.Duplicated, s.Delayed, s.Reordered)
}

// linkState is one link's rules, counters and random source; each link draws from
// its own source, seeded from the network's seed and the link, so that a link's
// decisions depend on its own traffic only.
type linkState struct {
	rules linkRules
	stats linkStats
	rnd   *rand.Rand
}

// faultNet is the network of a test: the proxies in front of its nodes and the
// rules of every link between them.
type faultNet struct {
	t    *testing.T
	seed uint64

	mu      sync.Mutex
	nodes   map[string]string // real address → node name
	links   map[link]*linkState
	proxies []*udpProxy
	closed  bool
	timers  sync.WaitGroup // delayed packets not yet sent; Add only under mu while open
}

// newFaultNet makes an empty network whose random decisions derive from seed. It
// is shut down in t.Cleanup: register it before the nodes, so that it outlives them.
func newFaultNet(t *testing.T, seed uint64) *faultNet {
	fn := &faultNet{t: t, seed: seed, nodes: map[string]string{}, links: map[link]*linkState{}}
	t.Cleanup(fn.close)
	return fn
}

// linkLocked returns l's state, made on first use with the zero rules.
func (fn *faultNet) linkLocked(l link) *linkState {
	ls := fn.links[l]
	if ls == nil {
		h := fnv.New64a()
		h.Write([]byte(l.String()))
		ls = &linkState{rnd: rand.New(rand.NewPCG(fn.seed, h.Sum64()))}
		fn.links[l] = ls
	}
	return ls
}

// set gives the directed link from → to the rules r.
func (fn *faultNet) set(from, to string, r linkRules) {
	fn.mu.Lock()
	defer fn.mu.Unlock()
	fn.linkLocked(link{from, to}).rules = r
}

// setAll gives every link between the nodes behind proxies the rules r.
func (fn *faultNet) setAll(r linkRules) {
	for _, from := range fn.names() {
		for _, to := range fn.names() {
			if from != to {
				fn.set(from, to, r)
			}
		}
	}
}

// cut takes the links between a and b down in both directions.
func (fn *faultNet) cut(a, b string) {
	fn.mu.Lock()
	defer fn.mu.Unlock()
	fn.linkLocked(link{a, b}).rules.Down = true
	fn.linkLocked(link{b, a}).rules.Down = true
}

// names lists the nodes behind proxies, sorted.
func (fn *faultNet) names() []string {
	fn.mu.Lock()
	defer fn.mu.Unlock()
	var out []string
	for _, n := range fn.nodes {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// stats returns a copy of every link's counters.
func (fn *faultNet) stats() map[link]linkStats {
	fn.mu.Lock()
	defer fn.mu.Unlock()
	out := map[link]linkStats{}
	for l, ls := range fn.links {
		out[l] = ls.stats
	}
	return out
}

// report is the counters of every link that carried a packet, one line each, and
// their total.
func (fn *faultNet) report() (string, linkStats) {
	st := fn.stats()
	ls := make([]link, 0, len(st))
	for l := range st {
		ls = append(ls, l)
	}
	slices.SortFunc(ls, func(a, b link) int { return strings.Compare(a.String(), b.String()) })
	var b strings.Builder
	var total linkStats
	for _, l := range ls {
		if st[l] == (linkStats{}) {
			continue
		}
		fmt.Fprintf(&b, "\n  %s: %v", l, st[l])
		total.add(st[l])
	}
	return b.String(), total
}

// nodeName names the node whose real address is addr (unknownSource for others).
func (fn *faultNet) nodeName(addr string) string {
	fn.mu.Lock()
	defer fn.mu.Unlock()
	if n, ok := fn.nodes[addr]; ok {
		return n
	}
	return unknownSource
}

// forward applies l's rules to packet p (which it keeps: the caller must not reuse
// it) and sends what is left with send, now or from a timer. A packet held back
// for reordering waits as long as the slowest packet that is not, and then some,
// so that the packets sent after it overtake it.
func (fn *faultNet) forward(l link, p []byte, send func([]byte)) {
	fn.mu.Lock()
	if fn.closed {
		fn.mu.Unlock()
		return
	}
	ls := fn.linkLocked(l)
	r := ls.rules
	switch {
	case r.Down:
		ls.stats.Cut++
		fn.mu.Unlock()
		return
	case r.Drop > 0 && ls.rnd.Float64() < r.Drop:
		ls.stats.Dropped++
		fn.mu.Unlock()
		return
	}
	copies := 1
	if r.Duplicate > 0 && ls.rnd.Float64() < r.Duplicate {
		copies = 2
		ls.stats.Duplicated++
	}
	delays := make([]time.Duration, copies)
	for i := range delays {
		d := r.Delay
		if r.Jitter > 0 {
			d += time.Duration(ls.rnd.Int64N(int64(r.Jitter) + 1))
		}
		if r.Reorder > 0 && ls.rnd.Float64() < r.Reorder {
			d += r.Delay + r.Jitter + 2*time.Millisecond
			ls.stats.Reordered++
		}
		if d > 0 {
			ls.stats.Delayed++
			fn.timers.Add(1)
		}
		delays[i] = d
	}
	ls.stats.Forwarded++
	fn.mu.Unlock()
	for _, d := range delays {
		if d == 0 {
			send(p)
			continue
		}
		time.AfterFunc(d, func() {
			defer fn.timers.Done()
			fn.mu.Lock()
			closed := fn.closed
			fn.mu.Unlock()
			if !closed {
				send(p)
			}
		})
	}
}

// proxy starts a proxy in front of the node called name, whose QUIC socket is at
// target, and returns it; peers must be told its Addr instead of target.
func (fn *faultNet) proxy(name, target string) *udpProxy {
	fn.t.Helper()
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		fn.t.Fatalf("proxy for %s: %v", name, err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		fn.t.Fatalf("proxy for %s: %v", name, err)
	}
	p := &udpProxy{fn: fn, name: name, conn: conn, target: ta, sessions: map[string]*net.UDPConn{}}
	fn.mu.Lock()
	fn.nodes[target] = name
	fn.proxies = append(fn.proxies, p)
	fn.mu.Unlock()
	p.wg.Add(1)
	go p.serve()
	fn.t.Logf("proxy %s → node %s (%s)", p.Addr(), name, target)
	return p
}

// close stops every proxy and drops the packets still delayed.
func (fn *faultNet) close() {
	fn.mu.Lock()
	fn.closed = true
	ps := fn.proxies
	fn.mu.Unlock()
	for _, p := range ps {
		p.close()
	}
	fn.timers.Wait()
}

// udpProxy forwards datagrams between a node's peers and the node. Each peer (by
// source address) gets a session: an upstream socket of its own towards the node,
// whose replies the proxy sends back to that peer from its listening address.
type udpProxy struct {
	fn     *faultNet
	name   string       // the node behind the proxy
	conn   *net.UDPConn // where peers send to
	target *net.UDPAddr // the node's QUIC socket
	wg     sync.WaitGroup

	mu       sync.Mutex
	sessions map[string]*net.UDPConn // peer address → upstream socket
	closed   bool
}

// Addr is the address peers reach the node at.
func (p *udpProxy) Addr() string { return p.conn.LocalAddr().String() }

// serve reads what peers send and forwards it to the node.
func (p *udpProxy) serve() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			p.readFailed(err)
			return
		}
		up := p.session(from)
		if up == nil {
			return
		}
		l := link{From: p.fn.nodeName(from.String()), To: p.name}
		p.fn.forward(l, slices.Clone(buf[:n]), func(b []byte) { up.Write(b) })
	}
}

// session returns the upstream socket for the peer at from, opening it (and the
// loop that carries the node's replies back) on its first packet; nil once the
// proxy is closed.
func (p *udpProxy) session(from *net.UDPAddr) *net.UDPConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	key := from.String()
	if up := p.sessions[key]; up != nil {
		return up
	}
	up, err := net.DialUDP("udp", nil, p.target)
	if err != nil {
		p.fn.t.Errorf("proxy for %s: session for %s: %v", p.name, key, err)
		return nil
	}
	p.sessions[key] = up
	back := link{From: p.name, To: p.fn.nodeName(key)}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := up.Read(buf)
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // an earlier packet found the node's port closed
			}
			if err != nil {
				p.readFailed(err)
				return
			}
			p.fn.forward(back, slices.Clone(buf[:n]), func(b []byte) { p.conn.WriteToUDP(b, from) })
		}
	}()
	return up
}

// readFailed reports a read error other than the one closing the proxy causes.
func (p *udpProxy) readFailed(err error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if !closed && !errors.Is(err, net.ErrClosed) {
		p.fn.t.Logf("proxy for %s: %v", p.name, err)
	}
}

// close stops the proxy's loops and closes its sockets.
func (p *udpProxy) close() {
	p.mu.Lock()
	p.closed = true
	socks := []*net.UDPConn{p.conn}
	for _, up := range p.sessions {
		socks = append(socks, up)
	}
	p.mu.Unlock()
	for _, s := range socks {
		s.Close()
	}
	p.wg.Wait()
}
