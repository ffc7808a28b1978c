package netsync

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/eidefs/eidefs/engine"
)

// What one peer (one key) may use of this node; docs/design.md, "Hostile peers",
// says why each number is what it is. The transport bounds handshakes and streams.
const (
	// maxConnsPerPeer caps a key's live connections; more are closed at once.
	maxConnsPerPeer = 8
	// maxStrangerConns caps the connections of keys that are neither peers nor
	// members of a database here, all together.
	maxStrangerConns = 64
	// requestRate and requestBurst shape a key's requests (a token bucket shared by
	// its connections); a request waits up to requestWait for a token, then is
	// refused with ErrBusy.
	requestRate  = 50
	requestBurst = 100
	requestWait  = 2 * time.Second
	// maxUploadsPerPeer caps a key's concurrent syncs and pushes: each may buffer a
	// batch frame of up to maxFrame bytes.
	maxUploadsPerPeer = 4
)

// AbuseStats count what hostile or broken peers did since the node started.
type AbuseStats struct {
	// ProtocolErrors: connections closed for a malformed, oversized, truncated or
	// stalled message or an unknown request, from any key.
	ProtocolErrors uint64
	// StrangerErrors: those of ProtocolErrors made by keys that are not peers here
	// (they are counted only here, so that fresh keys leave no state behind).
	StrangerErrors uint64
	// ForgedUploads: connections closed because the peer sent entries that failed
	// validation (bad signature, unauthorized author, tampered, wrong database).
	ForgedUploads uint64
	// ConnsRefused: connections closed over the per-key or the strangers' cap.
	ConnsRefused uint64
	// RequestsLimited: requests refused by a key's rate or upload limit.
	RequestsLimited uint64
	// HandshakesRefused: connection attempts refused before the handshake, while
	// too many were in progress or their source address was over its rate (each
	// Initial packet of a refused attempt counts).
	HandshakesRefused uint64
}

type abuseCounters struct {
	protocol, strangers, forged, connsRefused, limited atomic.Uint64
}

// Abuse returns the node's abuse counters (metrics).
func (n *Node) Abuse() AbuseStats {
	return AbuseStats{
		ProtocolErrors:    n.abuse.protocol.Load(),
		StrangerErrors:    n.abuse.strangers.Load(),
		ForgedUploads:     n.abuse.forged.Load(),
		ConnsRefused:      n.abuse.connsRefused.Load(),
		RequestsLimited:   n.abuse.limited.Load(),
		HandshakesRefused: n.tr.HandshakesRefused(),
	}
}

// peerGuard is the shared budget of one key's live connections.
type peerGuard struct {
	refs    int // connections using it (under Node.mu)
	limit   *rate.Limiter
	uploads chan struct{}
}

// admit decides whether an inbound connection may stay: its key is under its
// connection cap, and a stranger also under the strangers' cap. A refused
// connection is closed.
func (n *Node) admit(c *Conn) bool {
	key := c.Peer()
	_, known := n.state.Peer(key)
	stranger := !known && !n.isMember(key)
	n.mu.Lock()
	over := len(n.liveLocked(key)) >= maxConnsPerPeer
	if !over && stranger {
		over = n.strangerConns >= maxStrangerConns
		if !over {
			n.strangerConns++
			context.AfterFunc(c.qc.Context(), func() {
				n.mu.Lock()
				n.strangerConns--
				n.mu.Unlock()
			})
		}
	}
	n.mu.Unlock()
	if over {
		n.abuse.connsRefused.Add(1)
		c.closeWith(codeTooMany, "too many connections")
		n.log.Debug("refused connection", "peer", key.Short(), "stranger", stranger)
	}
	return !over
}

// guardLocked returns key's budget, creating it, and counts one more user.
func (n *Node) guardLocked(key engine.PublicKey) *peerGuard {
	g := n.guards[key]
	if g == nil {
		g = &peerGuard{limit: rate.NewLimiter(requestRate, requestBurst), uploads: make(chan struct{}, maxUploadsPerPeer)}
		n.guards[key] = g
	}
	g.refs++
	return g
}

// forget ends c's use of its key's budget and drops c from the live connections,
// so that keys that come and go leave nothing behind.
func (n *Node) forget(c *Conn) {
	key := c.Peer()
	n.mu.Lock()
	defer n.mu.Unlock()
	if g := n.guards[key]; g != nil {
		if g.refs--; g.refs <= 0 {
			delete(n.guards, key)
		}
	}
	live := slices.DeleteFunc(slices.Clone(n.conns[key]), func(x *Conn) bool { return x == c })
	if len(live) == 0 {
		delete(n.conns, key)
	} else {
		n.conns[key] = live
	}
}

// admitRequest spends one of peer's request tokens, waiting for one up to
// requestWait, and for a sync or push one of its upload slots; release gives the
// slot back.
func (n *Node) admitRequest(peer engine.PublicKey, op string) (release func(), err error) {
	n.mu.Lock()
	g := n.guards[peer]
	n.mu.Unlock()
	if g == nil { // the connection is already gone
		return nil, fmt.Errorf("%w: connection closed", ErrBusy)
	}
	// Pushes follow the peer's commits, one at a time per peer: a writer's burst
	// would otherwise wait for tokens, and replication lag with it. They are
	// bounded by the upload slots below, and what they carry is verified. A hello
	// (health check) costs nothing to answer.
	if op != "push" && op != "hello" {
		ctx, cancel := context.WithTimeout(n.ctx, requestWait)
		defer cancel()
		if err := g.limit.Wait(ctx); err != nil {
			n.abuse.limited.Add(1)
			return nil, fmt.Errorf("%w: over %d requests a second", ErrBusy, requestRate)
		}
	}
	switch op {
	case "sync", "bootstrap", "push":
		select {
		case g.uploads <- struct{}{}:
			return func() { <-g.uploads }, nil
		default:
			n.abuse.limited.Add(1)
			return nil, fmt.Errorf("%w: %d syncs already running", ErrBusy, maxUploadsPerPeer)
		}
	}
	return func() {}, nil
}

// served looks at how serving a request stream ended: a protocol violation or
// forged entries close the peer's connection and are counted; anything else (the
// peer went away, reset the stream) only ends the stream.
func (n *Node) served(c *Conn, err error) {
	switch {
	case errors.Is(err, errForged):
		n.abuse.forged.Add(1)
		n.punish(c.Peer(), codeForged, err)
	case errors.Is(err, ErrProtocol), errors.Is(err, os.ErrDeadlineExceeded):
		n.abuse.protocol.Add(1)
		if _, known := n.state.Peer(c.Peer()); known {
			n.state.updatePeer(c.Peer(), func(p *PeerInfo) { p.ProtocolErrors++ })
			n.log.Info("closing connection: protocol violation", "peer", c.Peer().Short(), "err", err)
		} else {
			// Strangers are only counted: fresh keys must not flood the log either.
			n.abuse.strangers.Add(1)
			n.log.Debug("closing connection: protocol violation", "peer", c.Peer().Short(), "err", err)
		}
		c.closeWith(codeProtocol, truncate(err.Error()))
	default:
		n.log.Debug("serving peer", "peer", c.Peer().Short(), "err", err)
	}
}

// punish closes every connection of a key that sent forged entries and drops the
// entries it left waiting for parents: none of them can be trusted to complete.
func (n *Node) punish(key engine.PublicKey, code quic.ApplicationErrorCode, err error) {
	n.log.Warn("closing connections: forged entries", "peer", key.Short(), "err", err)
	if dropped := n.inst.DropPending(key.String()); dropped > 0 {
		n.log.Info("dropped entries waiting for parents", "peer", key.Short(), "entries", dropped)
	}
	n.mu.Lock()
	conns := slices.Clone(n.conns[key])
	n.mu.Unlock()
	for _, c := range conns {
		c.closeWith(code, truncate(err.Error()))
	}
}

// truncate keeps a close reason within what fits a QUIC frame comfortably.
func truncate(s string) string {
	if len(s) > 200 {
		return s[:200]
	}
	return s
}
