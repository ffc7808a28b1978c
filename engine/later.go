package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"

	"github.com/eidefs/eidefs/kv"
)

// Deferred deletes. Removing a file is the change nothing waits on, and the most
// numerous one: rm -r of 2,000 files made 2,000 signed entries, each costing its
// remover a signature and a state update. DeleteLater records the delete as a
// small local record (in the journal like a commit, so it survives kill -9; never
// sent to peers) and returns. A database's pending deletes become one entry:
//
//   - before any other commit to the database, in the same kv write, so history
//     keeps the order the changes were made in;
//   - when FlushDeletes is called (the mount does so a few milliseconds after an
//     unlink, and on fsync);
//   - when the instance closes, and when it opens (after a kill -9).
//
// A delete names the version (entry) it removes. If the key has changed since (a
// peer's write arrived), it is left alone, as if the delete had come first and the
// peer's write after it; the check and the commit are one step of the writer, so
// no entry can slip between them.
//
// Until then the key reads as before: hiding it is the caller's business (the
// mount hides what it unlinked, exactly that version).

// laterRec is a pending delete's record, under pLater.
type laterRec struct {
	S string   `cbor:"1,keyasint"`
	P []string `cbor:"2,keyasint"`
	V ID       `cbor:"3,keyasint"`
	O string   `cbor:"4,keyasint,omitempty"` // origin of the commit's event
}

type laterDelete struct {
	rec laterRec
	key []byte // the record's kv key
}

// DeleteLater deletes the key at path in store, if its version is still version
// when the pending deletes are committed (see above). origin tags the commit's
// event (Tx.SetOrigin). It returns once the delete survives a kill -9.
func (d *Database) DeleteLater(store string, path []string, version ID, origin string) error {
	if err := CheckStoreName(store); err != nil {
		return err
	}
	if err := checkKeyPath(path); err != nil {
		return err
	}
	in := d.in
	in.laterMu.Lock()
	in.laterSeq++
	k := key(pLater, d.id[:], binary.BigEndian.AppendUint64(nil, in.laterSeq))
	in.laterMu.Unlock()
	ld := laterDelete{rec: laterRec{S: store, P: slices.Clone(path), V: version, O: origin}, key: k}
	var b kv.Batch
	b.Put(k, marshal(&ld.rec))
	if err := in.kv.Write(&b, false); err != nil {
		return err
	}
	in.laterMu.Lock()
	in.later[d.id] = append(in.later[d.id], ld)
	in.laterMu.Unlock()
	return nil
}

// FlushDeletes commits the database's pending deletes now. With Sync it then
// syncs as SyncJournal does: they, and everything before them, are on disk.
func (d *Database) FlushDeletes(dur Durability) error {
	return d.in.flushLater([]ID{d.id}, dur)
}

// FlushDeletes is Database.FlushDeletes for every database.
func (in *Instance) FlushDeletes(dur Durability) error {
	in.laterMu.Lock()
	ids := make([]ID, 0, len(in.later))
	for id := range in.later {
		ids = append(ids, id)
	}
	in.laterMu.Unlock()
	return in.flushLater(ids, dur)
}

func (in *Instance) flushLater(ids []ID, dur Durability) error {
	for _, id := range ids {
		if !in.hasLater(id) {
			continue
		}
		if err := in.do(&request{flush: &id}).err; err != nil {
			return err
		}
	}
	if dur == Sync {
		return in.SyncJournal()
	}
	return nil
}

func (in *Instance) hasLater(db ID) bool {
	in.laterMu.Lock()
	defer in.laterMu.Unlock()
	return len(in.later[db]) > 0
}

// loadLater reads the pending deletes left by a previous run.
func (in *Instance) loadLater() error {
	var bad kv.Batch
	err := in.kv.Iterate([]byte{pLater}, false, func(k, v []byte) bool {
		ld := laterDelete{key: bytes.Clone(k)} // k is the iterator's
		if len(k) != 1+32+8 || decMode.Unmarshal(v, &ld.rec) != nil {
			bad.Delete(k)
			return true
		}
		var db ID
		copy(db[:], k[1:33])
		in.laterSeq = max(in.laterSeq, binary.BigEndian.Uint64(k[33:]))
		in.later[db] = append(in.later[db], ld)
		return true
	})
	if err != nil {
		return err
	}
	return in.kv.Write(&bad, false)
}

// flushDeletes commits db's pending deletes as one entry in this group (the
// group's own commit to db, if any, follows it). The records go in the same
// write; if the write fails, they are pending again.
func (g *group) flushDeletes(db ID) {
	g.in.laterMu.Lock()
	ds := g.in.later[db]
	delete(g.in.later, db)
	g.in.laterMu.Unlock()
	if len(ds) == 0 {
		return
	}
	g.laterTaken = append(g.laterTaken, laterTaken{db: db, ds: ds})
	tx := map[string][]Op{}
	var stores []string
	seen := map[string]bool{}
	for _, d := range ds {
		g.s.Delete(d.key)
		n, err := readNode(g.s, nil, db, d.rec.S, d.rec.P, false)
		if err != nil || n.Kind == OpMap || n.Entry != d.rec.V {
			continue // gone, or changed since: left alone
		}
		k := string(pathKey(pPath, db, d.rec.S, d.rec.P))
		if seen[k] {
			continue
		}
		seen[k] = true
		if _, ok := tx[d.rec.S]; !ok {
			stores = append(stores, d.rec.S)
		}
		tx[d.rec.S] = append(tx[d.rec.S], Op{Path: d.rec.P, Kind: OpDelete})
	}
	if len(stores) == 0 {
		return
	}
	c := &commitReq{db: db, origin: ds[0].rec.O}
	for _, s := range stores {
		c.stores = append(c.stores, StoreNode{Name: s, Ops: tx[s]})
	}
	if _, err := g.commit(c); err != nil && !errors.Is(err, ErrNotAuthorized) && !errors.Is(err, ErrUnknownDatabase) {
		// Not a refusal that lasts: they stay pending, records and all. (A
		// refusal drops them: this node may no longer write the database.)
		for _, d := range ds {
			g.s.Put(d.key, marshal(&d.rec))
		}
		g.laterKept = append(g.laterKept, laterTaken{db: db, ds: ds})
	}
}

type laterTaken struct {
	db ID
	ds []laterDelete
}

// unflush makes deletes pending again: those a group kept, and all it took if
// its write failed.
func (in *Instance) unflush(g *group, failed bool) {
	taken := g.laterKept
	if failed {
		taken = g.laterTaken
	}
	if len(taken) == 0 {
		return
	}
	in.laterMu.Lock()
	defer in.laterMu.Unlock()
	for _, t := range taken {
		in.later[t.db] = append(slices.Clone(t.ds), in.later[t.db]...)
	}
}
