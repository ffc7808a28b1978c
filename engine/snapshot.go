package engine

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/eidefs/eidefs/kv"
)

// Snapshot is a read-only view of a database as it was right after one entry:
// the fold of that entry and its ancestors, nothing concurrent or later.
type Snapshot struct {
	Entry  ID
	db     ID
	in     *Instance
	r      kv.Reader
	stores []string
}

// At builds the snapshot at entry id. It replays the entry's history (cost grows
// with the history, unlike reads of the current state).
func (d *Database) At(id ID) (*Snapshot, error) {
	m, err := getRec[entryMeta](d.in.kv, key(pMeta, id[:]))
	if err != nil || m.DB != d.id {
		return nil, fmt.Errorf("entry %s of %s: %w", id.Short(), d.Name(), ErrNotFound)
	}
	s := kv.NewStaging(emptyReader{})
	stores := map[string]bool{}
	var ferr error
	prefix := key(pLog, d.id[:])
	err = d.in.kv.Iterate(prefix, false, func(k, _ []byte) bool {
		if binary.BigEndian.Uint64(k[len(prefix):]) > m.H {
			return false // descendants have greater heights
		}
		var eid ID
		copy(eid[:], k[len(prefix)+8:])
		em, err := getRec[entryMeta](d.in.kv, key(pMeta, eid[:]))
		if err != nil {
			ferr = err
			return false
		}
		if eid != id && !m.VV.covers(em.A, em.S) {
			return true // not an ancestor
		}
		raw, err := d.in.kv.Get(key(pEntry, eid[:]))
		if err != nil {
			ferr = err
			return false
		}
		var e Entry
		if err := decMode.Unmarshal(raw, &e); err != nil {
			ferr = err
			return false
		}
		a := &applied{id: eid, e: &e, seq: em.S, vv: em.VV,
			loadOp: func(store string, o order) (Op, error) { return loadOp(d.in.kv, store, o) }}
		for _, sn := range e.Stores {
			stores[sn.Name] = true
			for i, op := range sn.Ops {
				if ferr = applyOp(s, d.id, sn.Name, op, order{e.Height, eid, uint32(i)}, a); ferr != nil {
					return false
				}
			}
		}
		return true
	})
	if err == nil {
		err = ferr
	}
	if err != nil {
		return nil, err
	}
	snap := &Snapshot{Entry: id, db: d.id, in: d.in, r: snapReader{s, d.in.kv}}
	for st := range stores {
		if st == SettingsStore {
			continue
		}
		if n, err := readNode(snap.r, nil, d.id, st, nil, false); err == nil && n.Kind == OpMap {
			snap.stores = append(snap.stores, st)
		}
	}
	return snap, nil
}

// snapReader reads a snapshot's staged state; large values are read from entries
// in the store (loadOp), which the staging does not hold.
type snapReader struct {
	*kv.Staging
	store *kv.DB
}

func (r snapReader) Get(k []byte) ([]byte, error) {
	if len(k) > 0 && k[0] == pEntry {
		return r.store.Get(k)
	}
	return r.Staging.Get(k)
}

// Stores lists the stores visible in the snapshot.
func (s *Snapshot) Stores() []string { return s.stores }

// Get is Database.Get in the snapshot.
func (s *Snapshot) Get(store string, path []string) (Node, error) {
	return s.in.withBlob(readNode(s.r, nil, s.db, store, path, true))
}

// List is Database.List in the snapshot.
func (s *Snapshot) List(store string, path []string, fn func(DirEntry) bool) error {
	return listDir(s.r, nil, s.db, store, path, "", fn)
}

// FindEntry returns the database's entry whose hex id starts with prefix (at least
// 4 digits), if exactly one does.
func (d *Database) FindEntry(prefix string) (ID, error) {
	prefix = strings.ToLower(prefix)
	if len(prefix) < 4 {
		return ID{}, fmt.Errorf("entry prefix %q: %w", prefix, ErrNotFound)
	}
	var found []ID
	lp := key(pLog, d.id[:])
	err := d.in.kv.Iterate(lp, false, func(k, _ []byte) bool {
		var id ID
		copy(id[:], k[len(lp)+8:])
		if strings.HasPrefix(id.String(), prefix) {
			found = append(found, id)
		}
		return len(found) < 2
	})
	if err != nil {
		return ID{}, err
	}
	if len(found) != 1 {
		return ID{}, fmt.Errorf("entry prefix %q matches %d entries: %w", prefix, len(found), ErrNotFound)
	}
	return found[0], nil
}
