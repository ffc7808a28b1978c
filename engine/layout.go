package engine

import (
	"encoding/binary"
)

// The kv key layout, in one place. Every key starts with a one-byte prefix.
// <db> and <id> are 32-byte ids, <h> an 8-byte big-endian height, <store> and
// <path> the escaped encodings below, <order> = <h><id><4-byte op index>.
//
//	e <id>                                   canonical entry bytes
//	m <id>                                   entry meta (entryMeta, CBOR)
//	d <db>                                   database record (dbRecord, CBOR)
//	n <local name>                           -> <db>, this node's name for a database
//	l <db> <h> <id>                          log index: every entry of a database by height
//	a <db> <author> <seq> <id>               entries by author and sequence number (sync)
//	x <db> <h> <id>                          entries that change the _settings store
//	t <db> <store>                           store tips ([]ID, CBOR)
//	p <db> <store> <depth> <path>            path state (pathRec, CBOR): latest op and override
//	h <db> <store> <depth> <path> <order>    every explicit op on a path (histRec)
//	c <db> <store> <depth> <path> <order>    a conflict loser, keyed by its own order (conflictRec)
//	z <db> <seq>                             a deferred delete not committed yet (laterRec; later.go)
//	w <seq>                                  a parked value not committed yet (parkRec; park.go)
//
// The prefix 'S' is netsync's (sync state); the engine never writes under it.
//
// <depth> is a 2-byte count of path names, so the children of a directory are
// exactly the keys with the prefix "p <db> <store> <depth+1> <dir path>".
const (
	pEntry    = 'e'
	pMeta     = 'm'
	pDB       = 'd'
	pName     = 'n'
	pLog      = 'l'
	pAuthor   = 'a'
	pSettings = 'x'
	pTips     = 't'
	pPath     = 'p'
	pHist     = 'h'
	pConflict = 'c'
	pLater    = 'z'
	pPark     = 'w'
)

func key(prefix byte, parts ...[]byte) []byte {
	n := 1
	for _, p := range parts {
		n += len(p)
	}
	k := make([]byte, 1, n+4+orderLen)
	k[0] = prefix
	for _, p := range parts {
		k = append(k, p...)
	}
	return k
}

func heightBytes(h uint64) []byte { return binary.BigEndian.AppendUint64(nil, h) }

// appendName escapes one name so that 0x00 ends it: 0x00 -> 01 01, 0x01 -> 01 02.
func appendName(b []byte, name string) []byte {
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case 0:
			b = append(b, 1, 1)
		case 1:
			b = append(b, 1, 2)
		default:
			b = append(b, c)
		}
	}
	return append(b, 0)
}

// readName decodes one escaped name from b, returning it and the rest.
func readName(b []byte) (string, []byte) {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case 0:
			return string(out), b[i+1:]
		case 1:
			if i+1 < len(b) {
				i++
				out = append(out, b[i]-1)
			}
		default:
			out = append(out, c)
		}
	}
	return string(out), nil
}

// storePrefix is "<prefix> <db> <store>".
func storePrefix(prefix byte, db ID, store string) []byte {
	k := make([]byte, 0, 1+len(db)+len(store)+48)
	k = append(k, prefix)
	k = append(k, db[:]...)
	return appendName(k, store)
}

// pathKey is "<prefix> <db> <store> <depth> <path>".
func pathKey(prefix byte, db ID, store string, path []string) []byte {
	k := storePrefix(prefix, db, store)
	k = binary.BigEndian.AppendUint16(k, uint16(len(path)))
	for _, n := range path {
		k = appendName(k, n)
	}
	return k
}

// childrenPrefix is the prefix of the path keys of dir's direct children.
func childrenPrefix(db ID, store string, dir []string) []byte {
	k := storePrefix(pPath, db, store)
	k = binary.BigEndian.AppendUint16(k, uint16(len(dir)+1))
	for _, n := range dir {
		k = appendName(k, n)
	}
	return k
}

// order is the total order of operations: (height, entry id, index in the store's ops).
type order struct {
	H uint64
	E ID
	I uint32
}

const orderLen = 8 + 32 + 4

func (o order) bytes() []byte {
	b := make([]byte, 0, orderLen)
	b = binary.BigEndian.AppendUint64(b, o.H)
	b = append(b, o.E[:]...)
	return binary.BigEndian.AppendUint32(b, o.I)
}

func orderFrom(b []byte) order {
	var o order
	if len(b) < orderLen {
		return o
	}
	o.H = binary.BigEndian.Uint64(b)
	copy(o.E[:], b[8:40])
	o.I = binary.BigEndian.Uint32(b[40:])
	return o
}

func (o order) less(p order) bool {
	if o.H != p.H {
		return o.H < p.H
	}
	if o.E != p.E {
		for i := range o.E {
			if o.E[i] != p.E[i] {
				return o.E[i] < p.E[i]
			}
		}
	}
	return o.I < p.I
}

func (o order) isZero() bool { return o.H == 0 && o.E.IsZero() && o.I == 0 }
