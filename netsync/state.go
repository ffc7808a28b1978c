package netsync

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// Sync state lives in the node's kv store under the prefix 'S' (engine/layout.go):
//
//	S p <peer key>               peer record
//	S c <peer key> <db>          cursor and metadata of syncing db with the peer
//	S h <peer key> <seq>         sync history, one record per sync
//	S i <token>                  share invites
const (
	sPeer    = 'p'
	sCursor  = 'c'
	sHistory = 'h'
	sInvite  = 'i'
)

func skey(kind byte, parts ...[]byte) []byte {
	k := []byte{'S', kind}
	for _, p := range parts {
		k = append(k, p...)
	}
	return k
}

// PeerInfo is what this node knows of a peer.
type PeerInfo struct {
	Key       engine.PublicKey `cbor:"1,keyasint" json:"key"`
	Name      string           `cbor:"2,keyasint" json:"name"`
	Addrs     []string         `cbor:"3,keyasint" json:"addresses"`
	FirstSeen time.Time        `cbor:"4,keyasint" json:"first_seen"`
	LastSeen  time.Time        `cbor:"5,keyasint" json:"last_seen"`
	Status    string           `cbor:"6,keyasint" json:"status"` // active, inactive
	LastError string           `cbor:"7,keyasint,omitempty" json:"last_error,omitempty"`
	LastSync  time.Time        `cbor:"8,keyasint" json:"last_sync"`
	Rejected  uint64           `cbor:"9,keyasint,omitempty" json:"rejected_entries"`
	Failures  int              `cbor:"10,keyasint,omitempty" json:"consecutive_failures"`
	// ProtocolErrors counts the connections closed because the peer broke the
	// protocol (malformed, oversized, truncated or stalled messages).
	ProtocolErrors uint64 `cbor:"11,keyasint,omitempty" json:"protocol_errors"`
}

// Cursor is the state of syncing one database with one peer.
type Cursor struct {
	LastEntry  engine.ID `cbor:"1,keyasint" json:"last_entry"` // the database's first tip after the last sync
	LastSync   time.Time `cbor:"2,keyasint" json:"last_sync"`
	LastCount  int       `cbor:"3,keyasint" json:"last_count"` // entries moved by the last sync
	Total      uint64    `cbor:"4,keyasint" json:"total"`      // entries moved, all syncs
	Successful uint64    `cbor:"5,keyasint" json:"successful_syncs"`
	Failed     uint64    `cbor:"6,keyasint" json:"failed_syncs"`
	Bytes      uint64    `cbor:"7,keyasint" json:"bytes"`
	AvgMs      float64   `cbor:"8,keyasint" json:"average_duration_ms"`
	PeerHas    []byte    `cbor:"9,keyasint,omitempty" json:"-"` // encoded version vector the peer is known to hold
}

// Holds reports whether the peer is known to hold the entry with this version.
func (c Cursor) Holds(author engine.PublicKey, seq uint64) bool {
	vv, err := engine.DecodeVersionVector(c.PeerHas)
	return err == nil && vv[author] >= seq
}

// SuccessRate is successful syncs over all syncs (0 when none).
func (c Cursor) SuccessRate() float64 {
	if n := c.Successful + c.Failed; n > 0 {
		return float64(c.Successful) / float64(n)
	}
	return 0
}

// HistoryRecord is one sync of one database with one peer.
type HistoryRecord struct {
	Seq      uint64           `cbor:"1,keyasint" json:"sync_id"`
	Peer     engine.PublicKey `cbor:"2,keyasint" json:"peer"`
	DB       engine.ID        `cbor:"3,keyasint" json:"db"`
	Started  time.Time        `cbor:"4,keyasint" json:"started"`
	Duration time.Duration    `cbor:"5,keyasint" json:"duration"`
	Entries  int              `cbor:"6,keyasint" json:"entries"`
	Received int              `cbor:"10,keyasint,omitempty" json:"received"`
	Sent     int              `cbor:"11,keyasint,omitempty" json:"sent"`
	Bytes    int              `cbor:"7,keyasint" json:"bytes"`
	OK       bool             `cbor:"8,keyasint" json:"ok"`
	Err      string           `cbor:"9,keyasint,omitempty" json:"error,omitempty"`
}

type invite struct {
	DB      engine.ID         `cbor:"1,keyasint"`
	Perm    engine.Permission `cbor:"2,keyasint"`
	Created time.Time         `cbor:"3,keyasint"`
	Used    bool              `cbor:"4,keyasint"`
}

// historyKeep is how many history records are kept per peer.
const historyKeep = 1000

// State is the persistent sync state. Safe for concurrent use.
type State struct {
	kv *kv.DB

	mu    sync.Mutex // guards peers and seq
	peers map[engine.PublicKey]*PeerInfo
	seq   uint64
}

func openState(store *kv.DB) (*State, error) {
	s := &State{kv: store, peers: map[engine.PublicKey]*PeerInfo{}}
	err := store.Iterate(skey(sPeer), false, func(_, v []byte) bool {
		var p PeerInfo
		if decMode.Unmarshal(v, &p) == nil {
			s.peers[p.Key] = &p
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	err = store.Iterate(skey(sHistory), false, func(k, _ []byte) bool {
		if len(k) >= 2+32+8 {
			s.seq = max(s.seq, binary.BigEndian.Uint64(k[2+32:]))
		}
		return true
	})
	return s, err
}

func (s *State) put(k []byte, v any) error {
	b, err := encMode.Marshal(v)
	if err != nil {
		return err
	}
	var batch kv.Batch
	batch.Put(k, b)
	return s.kv.Write(&batch, false)
}

// Peers lists the known peers by name.
func (s *State) Peers() []PeerInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]PeerInfo, 0, len(s.peers))
	for _, p := range s.peers {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Peer returns the peer with key k.
func (s *State) Peer(k engine.PublicKey) (PeerInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.peers[k]
	if !ok {
		return PeerInfo{}, false
	}
	return *p, true
}

// updatePeer changes (creating if needed) a peer record and persists it.
func (s *State) updatePeer(k engine.PublicKey, fn func(p *PeerInfo)) error {
	s.mu.Lock()
	p, ok := s.peers[k]
	if !ok {
		p = &PeerInfo{Key: k, Name: k.Short(), FirstSeen: time.Now(), Status: "inactive"}
		s.peers[k] = p
	}
	fn(p)
	c := *p
	s.mu.Unlock()
	return s.put(skey(sPeer, k[:]), &c)
}

func (s *State) removePeer(k engine.PublicKey) error {
	s.mu.Lock()
	delete(s.peers, k)
	s.mu.Unlock()
	var b kv.Batch
	b.Delete(skey(sPeer, k[:]))
	return s.kv.Write(&b, false)
}

// Cursor returns the sync state of db with peer k.
func (s *State) Cursor(k engine.PublicKey, db engine.ID) Cursor {
	var c Cursor
	if v, err := s.kv.Get(skey(sCursor, k[:], db[:])); err == nil {
		decMode.Unmarshal(v, &c)
	}
	return c
}

// Cursors returns the sync states of every database with peer k.
func (s *State) Cursors(k engine.PublicKey) map[engine.ID]Cursor {
	out := map[engine.ID]Cursor{}
	prefix := skey(sCursor, k[:])
	s.kv.Iterate(prefix, false, func(key, v []byte) bool {
		var c Cursor
		var db engine.ID
		copy(db[:], key[len(prefix):])
		if decMode.Unmarshal(v, &c) == nil {
			out[db] = c
		}
		return true
	})
	return out
}

// record stores the outcome of one sync.
func (s *State) record(r Result, tip engine.ID) (HistoryRecord, error) {
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.mu.Unlock()
	moved := r.Received + r.Sent
	h := HistoryRecord{Seq: seq, Peer: r.Peer, DB: r.DB, Started: r.Started, Duration: r.Duration,
		Entries: moved, Received: r.Received, Sent: r.Sent, Bytes: r.BytesIn + r.BytesOut, OK: r.Err == nil}
	if r.Err != nil {
		h.Err = r.Err.Error()
	}
	c := s.Cursor(r.Peer, r.DB)
	if r.Err == nil {
		c.Successful++
		c.LastEntry, c.LastSync, c.LastCount = tip, r.Started.Add(r.Duration), moved
	} else {
		c.Failed++
	}
	if r.PeerHas != nil {
		has, _ := engine.DecodeVersionVector(c.PeerHas)
		if has == nil {
			has = engine.VersionVector{}
		}
		has.Merge(r.PeerHas)
		c.PeerHas = engine.EncodeVersionVector(has)
	}
	c.Total += uint64(moved)
	c.Bytes += uint64(h.Bytes)
	n := float64(c.Successful + c.Failed)
	c.AvgMs += (float64(r.Duration.Microseconds())/1000 - c.AvgMs) / n
	if err := s.put(skey(sCursor, r.Peer[:], r.DB[:]), &c); err != nil {
		return h, err
	}
	if err := s.put(skey(sHistory, r.Peer[:], binary.BigEndian.AppendUint64(nil, seq)), &h); err != nil {
		return h, err
	}
	if seq > historyKeep {
		var b kv.Batch
		b.Delete(skey(sHistory, r.Peer[:], binary.BigEndian.AppendUint64(nil, seq-historyKeep)))
		s.kv.Write(&b, false)
	}
	return h, nil
}

// History returns the sync records with peer k, oldest first.
func (s *State) History(k engine.PublicKey) []HistoryRecord {
	var out []HistoryRecord
	s.kv.Iterate(skey(sHistory, k[:]), false, func(_, v []byte) bool {
		var h HistoryRecord
		if decMode.Unmarshal(v, &h) == nil {
			out = append(out, h)
		}
		return true
	})
	return out
}

// newInvite makes a one-time invite granting perm on db.
func (s *State) newInvite(db engine.ID, perm engine.Permission) ([]byte, error) {
	token := make([]byte, 16)
	rand.Read(token)
	return token, s.put(skey(sInvite, token), &invite{DB: db, Perm: perm, Created: time.Now()})
}

// redeem consumes an invite for db.
func (s *State) redeem(db engine.ID, token []byte) (engine.Permission, error) {
	s.mu.Lock() // serialises redemptions: an invite grants once
	defer s.mu.Unlock()
	v, err := s.kv.Get(skey(sInvite, token))
	if errors.Is(err, kv.ErrNotFound) || len(token) != 16 {
		return 0, ErrBadInvite
	} else if err != nil {
		return 0, err
	}
	var inv invite
	if err := decMode.Unmarshal(v, &inv); err != nil {
		return 0, err
	}
	if inv.Used || !bytes.Equal(inv.DB[:], db[:]) {
		return 0, ErrBadInvite
	}
	inv.Used = true
	b, _ := encMode.Marshal(&inv)
	var batch kv.Batch
	batch.Put(skey(sInvite, token), b)
	if err := s.kv.Write(&batch, true); err != nil {
		return 0, fmt.Errorf("recording invite use: %w", err)
	}
	return inv.Perm, nil
}

// inviteUsed reports whether the invite was redeemed (or is unknown).
func (s *State) inviteUsed(token []byte) bool {
	v, err := s.kv.Get(skey(sInvite, token))
	if err != nil {
		return true
	}
	var inv invite
	return decMode.Unmarshal(v, &inv) != nil || inv.Used
}
