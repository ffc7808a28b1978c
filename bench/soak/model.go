package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// absent stands for "no file at this path" in a key's allowed final states.
const absent = ""

// hash names a content in the model: 16 hex digits of its SHA-256.
func hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

// keyState is what the final tree may hold at a path only one writer touches.
// After an acknowledged operation exactly one state is allowed; after a failed one
// (its node was being killed) the old states and the attempted one are, and the
// writer touches the path no more.
type keyState struct {
	want    []string // allowed contents (hash) or absent
	certain bool     // the last operation was acknowledged
	node    string   // the node that wrote it
	ackedAt time.Time
}

// hotState is what a key all nodes overwrite may hold: a value some write put
// there. Values whose write failed may still win (the entry may have been
// committed just before the kill), so they are allowed and counted apart.
type hotState struct {
	acked     map[string]bool
	attempted map[string]bool   // every value a write was started with
	recent    map[string][]byte // the last keepValues values by hash, to explain a bad read
	order     []string          // hashes in recent, oldest first
}

// keepValues is how many recent values of each hot key the model keeps.
const keepValues = 64

// immutable is an acknowledged key that is never written or deleted again: a read
// of it anywhere must return exactly its content (or ENOENT on a node it has not
// reached yet).
type immutable struct {
	path string
	hash string
	node string
}

// ack is one acknowledged operation, written to acks.jsonl.
type ack struct {
	Time time.Time `json:"time"`
	Node string    `json:"node"`
	Op   string    `json:"op"`
	Path string    `json:"path"`
	Hash string    `json:"hash"` // "" for a delete
}

// model is the expected final state of the database, built from the operations'
// outcomes as the load runs.
type model struct {
	mu   sync.Mutex
	keys map[string]*keyState
	hot  map[string]*hotState
	imm  []immutable
	acks []ack
}

func newModel() *model {
	return &model{keys: map[string]*keyState{}, hot: map[string]*hotState{}}
}

// acked records that the operation op on node set path to h (absent: removed).
func (m *model) acked(node, op, path, h string, isImmutable bool) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys[path] = &keyState{want: []string{h}, certain: true, node: node, ackedAt: now}
	m.acks = append(m.acks, ack{now, node, op, path, h})
	if isImmutable {
		m.imm = append(m.imm, immutable{path, h, node})
	}
}

// expectAbsent records that path must not exist at the end (a local-only name,
// which never replicates and does not survive a restart).
func (m *model) expectAbsent(node, path string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys[path] = &keyState{want: []string{absent}, certain: true, node: node, ackedAt: time.Now()}
}

// failed records that an operation that would have set path to h failed: path may
// now hold what it held before or h.
func (m *model) failed(node, path, h string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ks := m.keys[path]
	if ks == nil {
		m.keys[path] = &keyState{want: []string{absent, h}, node: node}
		return
	}
	ks.certain = false
	for _, w := range ks.want {
		if w == h {
			return
		}
	}
	ks.want = append(ks.want, h)
}

// hotAttempt records that a write of data (hashing h) to the hot key path is about
// to start.
func (m *model) hotAttempt(path, h string, data []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := m.hot[path]
	if hs == nil {
		hs = &hotState{acked: map[string]bool{}, attempted: map[string]bool{}, recent: map[string][]byte{}}
		m.hot[path] = hs
	}
	hs.attempted[h] = true
	hs.recent[h] = data
	hs.order = append(hs.order, h)
	if len(hs.order) > keepValues {
		delete(hs.recent, hs.order[0])
		hs.order = hs.order[1:]
	}
}

// explainHot describes how b, read from the hot key path, relates to the recent
// values written there: the value whose first line it shares, and whether b is
// a prefix of that value or that value a prefix of b.
func (m *model) explainHot(path string, b []byte) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := m.hot[path]
	if hs == nil {
		return "no value was ever written there"
	}
	head, _, _ := bytes.Cut(b, []byte("\n"))
	for i := len(hs.order) - 1; i >= 0; i-- {
		h := hs.order[i]
		v := hs.recent[h]
		vh, _, _ := bytes.Cut(v, []byte("\n"))
		if !bytes.Equal(vh, head) {
			continue
		}
		n := commonPrefix(v, b)
		what := fmt.Sprintf("its value %s (%q…, written %d writes before the last) has %d bytes; the read got %d bytes, the first %d equal",
			h, vh, len(hs.order)-1-i, len(v), len(b), n)
		if n == len(b) {
			what += " (the read is that value cut short)"
		} else if n == len(v) {
			what += " (the read is that value plus more)"
		}
		// Which value is as long as the read?
		for j := len(hs.order) - 1; j >= 0; j-- {
			if o := hs.recent[hs.order[j]]; len(o) == len(b) {
				oh, _, _ := bytes.Cut(o, []byte("\n"))
				what += fmt.Sprintf("; value %s (%q…, written %d writes before the last) has exactly the length read", hs.order[j], oh, len(hs.order)-1-j)
				break
			}
		}
		return what
	}
	return fmt.Sprintf("none of the last %d values starts with %q", len(hs.order), head)
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// hotAcked records that the write of h to path was acknowledged.
func (m *model) hotAcked(node, path, h string) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hot[path].acked[h] = true
	m.acks = append(m.acks, ack{now, node, "hot", path, h})
}

// hotValid reports whether h is a value some write to the hot key path started
// with.
func (m *model) hotValid(path, h string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := m.hot[path]
	return hs != nil && hs.attempted[h]
}

// randomImmutable picks an immutable key, or false when there is none yet.
func (m *model) randomImmutable(rnd *rand.Rand) (immutable, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.imm) == 0 {
		return immutable{}, false
	}
	return m.imm[rnd.IntN(len(m.imm))], true
}
