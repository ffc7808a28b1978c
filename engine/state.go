package engine

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/eidefs/eidefs/kv"
)

// The materialised state of a store is kept per path (DESIGN.md, "Engine"): the
// latest operation on the path and, separately, the latest override (a delete or a
// non-map value). Path p shows its latest op when that op is newer than the latest
// override on every strict ancestor and every ancestor shows a map. This equals the
// fold of the Doc merge over all ops in order, and a late entry with an older order
// touches only the paths it names.

// inlineMax is the largest value kept inside its path record. Larger ones are read
// from the entry that set them, so they are stored once and listings and stats do
// not read them.
const inlineMax = 1024

type pathRec struct {
	L   order     `cbor:"1,keyasint"`           // latest op (explicit or implied map)
	K   OpKind    `cbor:"2,keyasint"`           // its kind
	T   int64     `cbor:"3,keyasint,omitempty"` // its entry's time, ms
	A   PublicKey `cbor:"4,keyasint"`           // its entry's author
	O   order     `cbor:"5,keyasint"`           // latest override; zero if none
	N   int64     `cbor:"6,keyasint,omitempty"` // value size
	V   []byte    `cbor:"7,keyasint,omitempty"` // value, if N <= inlineMax (else in entry L.E)
	X   order     `cbor:"8,keyasint"`           // latest explicit op, for conflicts
	XA  PublicKey `cbor:"9,keyasint"`           // its author
	XS  uint64    `cbor:"10,keyasint"`          // its author's sequence number
	XK  OpKind    `cbor:"11,keyasint"`          // its kind
	Big bool      `cbor:"12,keyasint,omitempty"`
	B   []byte    `cbor:"13,keyasint,omitempty"` // the value's blob hash, if it is a blob (blob.go)
}

type histRec struct {
	A PublicKey `cbor:"1,keyasint"`
	S uint64    `cbor:"2,keyasint"`
	K OpKind    `cbor:"3,keyasint"`
}

type conflictRec struct {
	W order     `cbor:"1,keyasint"` // the op that overwrote the loser without having seen it
	A PublicKey `cbor:"2,keyasint"` // the loser's author
	K OpKind    `cbor:"3,keyasint"`
	T int64     `cbor:"4,keyasint,omitempty"`
	V []byte    `cbor:"5,keyasint,omitempty"`
	B []byte    `cbor:"6,keyasint,omitempty"` // the value's blob hash, if a blob (then N is its size)
	N uint64    `cbor:"7,keyasint,omitempty"`
}

// vclock maps an author (raw key bytes as a string) to the highest sequence number
// of that author's entries among an entry's ancestors, itself included. An author's
// entries form a chain (each commit has the previous one among its ancestors), so
// "a is an ancestor of b" is vv(b)[author(a)] >= seq(a).
type vclock map[string]uint64

func (v vclock) covers(author PublicKey, seq uint64) bool { return v[string(author[:])] >= seq }

// applied describes the entry whose ops are being applied.
type applied struct {
	id     ID
	e      *Entry
	seq    uint64
	vv     vclock
	loadOp func(store string, o order) (Op, error) // reads an op of an older entry (conflict values)
}

func (a *applied) descends(o order, author PublicKey, seq uint64) bool {
	return o.E == a.id || a.vv.covers(author, seq)
}

type stagingRW interface {
	kv.Reader
	Put(k, v []byte)
	Delete(k []byte)
}

func getRec[T any](r kv.Reader, k []byte) (*T, error) {
	b, err := r.Get(k)
	if err != nil {
		return nil, err
	}
	var v T
	if err := decMode.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("corrupt record %q: %w", k[:1], err)
	}
	return &v, nil
}

// applyOp folds one op, with order o, into the state of store in db.
func applyOp(w stagingRW, db ID, store string, op Op, o order, a *applied) error {
	// A change at a/b/c also makes a and a/b maps (and the store itself).
	for i := 0; i < len(op.Path); i++ {
		k := pathKey(pPath, db, store, op.Path[:i])
		rec, err := getPathRec(w, k)
		if err != nil {
			return err
		}
		if rec == nil {
			rec = &pathRec{}
		}
		if rec.L.less(o) {
			setLatest(rec, OpMap, nil, o, a)
			putPathRec(w, k, rec)
		}
	}
	k := pathKey(pPath, db, store, op.Path)
	rec, err := getPathRec(w, k)
	if err != nil {
		return err
	}
	if rec == nil {
		rec = &pathRec{}
	}
	if rec.L.less(o) {
		setLatest(rec, op.Kind, op.Value, o, a)
		if op.Size > 0 { // a blob: its bytes are not in the entry
			rec.N, rec.Big, rec.B = int64(op.Size), true, op.Blob
		}
	}
	if op.Kind.overrides() && rec.O.less(o) {
		rec.O = o
	}
	// Conflicts: each explicit op is judged against the op that follows it on the
	// same path. The common case, o newest, needs no history lookup.
	hk := append(pathKey(pHist, db, store, op.Path), o.bytes()...)
	w.Put(hk, marshal(&histRec{A: a.e.Author, S: a.seq, K: op.Kind}))
	if rec.X.less(o) {
		if !rec.X.isZero() {
			pred := histRec{A: rec.XA, S: rec.XS, K: rec.XK}
			if err := judge(w, db, store, op.Path, rec.X, pred, o, op.Kind, a); err != nil {
				return err
			}
		}
		rec.X, rec.XA, rec.XS, rec.XK = o, a.e.Author, a.seq, op.Kind
	} else if err := applyLateOp(w, db, store, op, o, hk, a); err != nil {
		return err
	}
	putPathRec(w, k, rec)
	return nil
}

func setLatest(rec *pathRec, kind OpKind, value []byte, o order, a *applied) {
	rec.L, rec.K, rec.T, rec.A = o, kind, a.e.Time, a.e.Author
	rec.N, rec.V, rec.Big, rec.B = int64(len(value)), nil, len(value) > inlineMax, nil
	if !rec.Big && len(value) > 0 {
		rec.V = value
	}
}

// applyLateOp handles an op older than the path's newest explicit op: it lost to
// the op after it (which cannot have seen it, as it was applied first), and it
// becomes the successor of the op before it.
func applyLateOp(w stagingRW, db ID, store string, op Op, o order, hk []byte, a *applied) error {
	prefix := pathKey(pHist, db, store, op.Path)
	sk, sv, err := w.Seek(prefix, append(bytes.Clone(hk), 0), false)
	if err != nil {
		return fmt.Errorf("reading history: %w", err)
	}
	succ := orderFrom(sk[len(prefix):])
	var sh histRec
	if err := decMode.Unmarshal(sv, &sh); err != nil {
		return err
	}
	ck := pathKey(pConflict, db, store, op.Path)
	if !(op.Kind == OpMap && sh.K == OpMap) {
		w.Put(append(bytes.Clone(ck), o.bytes()...), marshal(&conflictRec{W: succ, A: a.e.Author, K: op.Kind, T: a.e.Time, V: op.Value, B: op.Blob, N: op.Size}))
	}
	pk, pv, err := w.Seek(prefix, hk, true)
	if errors.Is(err, kv.ErrNotFound) {
		return nil
	} else if err != nil {
		return fmt.Errorf("reading history: %w", err)
	}
	var ph histRec
	if err := decMode.Unmarshal(pv, &ph); err != nil {
		return err
	}
	pred := orderFrom(pk[len(prefix):])
	w.Delete(append(bytes.Clone(ck), pred.bytes()...))
	return judge(w, db, store, op.Path, pred, ph, o, op.Kind, a)
}

// judge records pred as a conflict loser if the op after it, o (from the entry
// being applied), did not have pred among its ancestors.
func judge(w stagingRW, db ID, store string, path []string, pred order, ph histRec, o order, kind OpKind, a *applied) error {
	if a.descends(pred, ph.A, ph.S) || (ph.K == OpMap && kind == OpMap) {
		return nil
	}
	lop, err := a.loadOp(store, pred)
	if err != nil {
		return fmt.Errorf("loading conflict loser: %w", err)
	}
	var t int64
	if m, err := getRec[entryMeta](w, key(pMeta, pred.E[:])); err == nil {
		t = m.T
	}
	ck := append(pathKey(pConflict, db, store, path), pred.bytes()...)
	w.Put(ck, marshal(&conflictRec{W: o, A: ph.A, K: ph.K, T: t, V: lop.Value, B: lop.Blob, N: lop.Size}))
	return nil
}

// Errors of reads, mapped to errnos by fs/ and to messages by the CLI.
var (
	ErrNotFound = errors.New("not found")
	ErrNotDir   = errors.New("not a directory")
	ErrIsDir    = errors.New("is a directory")
)

// Node is the visible state of one path.
type Node struct {
	Kind   OpKind // OpValue, OpMap or OpLink
	Size   int64
	Value  []byte // nil for maps and when not asked for
	Time   int64  // ms, time of the entry that last changed the path
	Entry  ID     // that entry
	Height uint64
	Author PublicKey
	// Blob is the BlobSum of the value's bytes when they are kept as a blob
	// (Instance.BlobPath); Value is then read from it.
	Blob []byte
}

func (r *pathRec) node() Node {
	return Node{Kind: r.K, Size: r.N, Value: r.V, Time: r.T, Entry: r.L.E, Height: r.L.H, Author: r.A, Blob: r.B}
}

// resolve walks from the store root to path and returns the path's record if it is
// visible, plus the largest override on the way (inclusive), which hides anything
// older below it.
// Ancestors' records come from cache when one is given (reads of the live store).
func resolve(r kv.Reader, cache *mapCache, db ID, store string, path []string) (*pathRec, order, error) {
	var maxOv order
	var rec *pathRec
	for i := 0; i <= len(path); i++ {
		next, err := getAncestorRec(r, cache, pathKey(pPath, db, store, path[:i]), i < len(path))
		if err != nil {
			return nil, maxOv, err
		}
		if next == nil || next.K == OpDelete || !maxOv.less(next.L) {
			return nil, maxOv, ErrNotFound
		}
		if i < len(path) && next.K != OpMap {
			return nil, maxOv, ErrNotDir
		}
		rec = next
		if maxOv.less(rec.O) {
			maxOv = rec.O
		}
	}
	return rec, maxOv, nil
}

// getAncestorRec is getPathRec through cache for a map on the way to a key.
func getAncestorRec(r kv.Reader, cache *mapCache, k []byte, ancestor bool) (*pathRec, error) {
	if cache == nil || !ancestor {
		return getPathRec(r, k)
	}
	rec, gen := cache.get(k)
	if rec != nil {
		return rec, nil
	}
	rec, err := getPathRec(r, k)
	if err == nil && rec != nil && rec.K == OpMap {
		cache.put(k, rec, gen)
	}
	return rec, err
}

func readNode(r kv.Reader, cache *mapCache, db ID, store string, path []string, withValue bool) (Node, error) {
	rec, _, err := resolve(r, cache, db, store, path)
	if err != nil {
		return Node{}, err
	}
	n := rec.node()
	if withValue && rec.Big && rec.B == nil {
		op, err := loadOp(r, store, rec.L)
		if err != nil {
			return Node{}, fmt.Errorf("reading value: %w", err)
		}
		n.Value = op.Value
	}
	if !withValue {
		n.Value = nil
	}
	return n, nil
}

// DirEntry is one visible child of a map.
type DirEntry struct {
	Name string
	Node
}

// iterateChildren iterates the child keys under prefix, from the first name
// after after ("": all) when the reader can start there.
func iterateChildren(r kv.Reader, prefix []byte, after string, fn func(k, v []byte) bool) error {
	if after == "" {
		return r.Iterate(prefix, false, fn)
	}
	start := append(appendName(bytes.Clone(prefix), after), 0) // the next key after after's
	if f, ok := r.(interface {
		IterateFrom(prefix, start []byte, fn func(k, v []byte) bool) error
	}); ok {
		return f.IterateFrom(prefix, start, fn)
	}
	return r.Iterate(prefix, false, func(k, v []byte) bool {
		return bytes.Compare(k, start) < 0 || fn(k, v)
	})
}

// listDir lists dir's visible children whose names come after after ("": all), in
// the store's name order.
func listDir(r kv.Reader, cache *mapCache, db ID, store string, dir []string, after string, fn func(DirEntry) bool) error {
	rec, maxOv, err := resolve(r, cache, db, store, dir)
	if err != nil {
		return err
	}
	if rec.K != OpMap {
		return ErrNotDir
	}
	prefix := childrenPrefix(db, store, dir)
	var derr error
	err = iterateChildren(r, prefix, after, func(k, v []byte) bool {
		var c pathRec
		if derr = decMode.Unmarshal(v, &c); derr != nil {
			return false
		}
		if c.K == OpDelete || !maxOv.less(c.L) {
			return true
		}
		name, _ := readName(k[len(prefix):])
		n := c.node()
		n.Value = nil
		return fn(DirEntry{Name: name, Node: n})
	})
	if err == nil {
		err = derr
	}
	return err
}

// loadOp reads op o of store from its stored entry.
func loadOp(r kv.Reader, store string, o order) (Op, error) {
	raw, err := r.Get(key(pEntry, o.E[:]))
	if err != nil {
		return Op{}, err
	}
	var e Entry
	if err := decMode.Unmarshal(raw, &e); err != nil {
		return Op{}, err
	}
	sn := e.Store(store)
	if sn == nil || int(o.I) >= len(sn.Ops) {
		return Op{}, fmt.Errorf("entry %s has no op %d in %q", o.E.Short(), o.I, store)
	}
	return sn.Ops[o.I], nil
}
