package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
)

// VersionVector summarises what a replica holds of a database: per author, the
// highest sequence number of that author's entries it has. Exchanging them tells
// each side exactly which entries the other lacks (see EntriesAfter).
type VersionVector map[PublicKey]uint64

// VersionVector returns the database's version vector.
func (d *Database) VersionVector() VersionVector {
	vv := VersionVector{}
	for a, s := range d.state().rec.VV {
		var k PublicKey
		copy(k[:], a)
		vv[k] = s
	}
	return vv
}

// Count is the number of entries stored.
func (d *Database) Count() uint64 { return d.state().rec.Count }

// EntriesAfter calls fn with every entry a replica holding vv lacks, parents first,
// until fn returns false. Its cost follows what is new, not the database's size.
func (d *Database) EntriesAfter(vv VersionVector, fn func(id ID, raw []byte) bool) error {
	if len(vv) == 0 {
		// Everything (a clone): the log index is already in height order.
		return d.Entries(0, fn)
	}
	type item struct {
		h  uint64
		id ID
	}
	var items []item
	for a, mine := range d.state().rec.VV {
		var k PublicKey
		copy(k[:], a)
		if mine <= vv[k] {
			continue
		}
		prefix := key(pAuthor, d.id[:], k[:])
		start := append(bytes.Clone(prefix), heightBytes(vv[k]+1)...)
		err := d.in.kv.Iterate(prefix, false, func(kk, _ []byte) bool {
			if bytes.Compare(kk, start) < 0 {
				return true
			}
			var id ID
			copy(id[:], kk[len(prefix)+8:])
			items = append(items, item{id: id})
			return true
		})
		if err != nil {
			return err
		}
	}
	for i := range items {
		m, err := getRec[entryMeta](d.in.kv, key(pMeta, items[i].id[:]))
		if err != nil {
			return fmt.Errorf("entry %s: %w", items[i].id.Short(), err)
		}
		items[i].h = m.H
	}
	sort.Slice(items, func(i, j int) bool {
		if items[i].h != items[j].h {
			return items[i].h < items[j].h
		}
		return bytes.Compare(items[i].id[:], items[j].id[:]) < 0
	})
	for _, it := range items {
		raw, err := d.in.Entry(it.id)
		if err != nil {
			return err
		}
		if !fn(it.id, raw) {
			return nil
		}
	}
	return nil
}

// Has reports whether the entry is stored.
func (in *Instance) Has(id ID) bool {
	ok, _ := in.kv.Has(key(pMeta, id[:]))
	return ok
}

// EncodeVersionVector and DecodeVersionVector give the wire form: pairs of key and
// sequence, sorted by key.
func EncodeVersionVector(vv VersionVector) []byte {
	keys := make([]PublicKey, 0, len(vv))
	for k := range vv {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b PublicKey) int { return bytes.Compare(a[:], b[:]) })
	var b []byte
	for _, k := range keys {
		b = append(b, k[:]...)
		b = binary.BigEndian.AppendUint64(b, vv[k])
	}
	return b
}

// DecodeVersionVector parses EncodeVersionVector's form.
func DecodeVersionVector(b []byte) (VersionVector, error) {
	if len(b)%40 != 0 {
		return nil, fmt.Errorf("bad version vector: %d bytes", len(b))
	}
	vv := VersionVector{}
	for ; len(b) > 0; b = b[40:] {
		var k PublicKey
		copy(k[:], b)
		vv[k] = binary.BigEndian.Uint64(b[32:])
	}
	return vv, nil
}

// EntryVersion is an entry's author and that author's sequence number: a replica
// whose version vector covers it holds the entry.
func (in *Instance) EntryVersion(id ID) (PublicKey, uint64, error) {
	m, err := getRec[entryMeta](in.kv, key(pMeta, id[:]))
	if err != nil {
		return PublicKey{}, 0, fmt.Errorf("entry %s: %w", id.Short(), ErrNotFound)
	}
	return m.A, m.S, nil
}

// Merge raises v to cover w too.
func (v VersionVector) Merge(w VersionVector) {
	for k, s := range w {
		v[k] = max(v[k], s)
	}
}
