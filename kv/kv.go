// Package kv is the ordered key-value store under the engine: a thin layer over
// goleveldb, on disk (Open) or on leveldb's in-memory storage (OpenMemory), with one
// implementation for both. It knows nothing of entries or databases; the engine owns
// the key layout (engine/layout.go).
package kv

import (
	"bytes"
	"errors"
	"fmt"
	"syscall"

	"github.com/syndtr/goleveldb/leveldb"
	lerrors "github.com/syndtr/goleveldb/leveldb/errors"
	"github.com/syndtr/goleveldb/leveldb/filter"
	"github.com/syndtr/goleveldb/leveldb/iterator"
	"github.com/syndtr/goleveldb/leveldb/opt"
	"github.com/syndtr/goleveldb/leveldb/storage"
	"github.com/syndtr/goleveldb/leveldb/util"
)

var (
	// ErrNotFound is returned by Get for a key that is not stored.
	ErrNotFound = errors.New("kv: not found")
	// ErrInUse is returned by Open when another process holds the directory.
	ErrInUse = errors.New("data directory is in use by another eidefs process")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("kv: closed")
)

// Reader is what both the store and a snapshot offer. Returned slices belong to the
// caller.
type Reader interface {
	Get(key []byte) ([]byte, error)
	Has(key []byte) (bool, error)
	// Iterate calls fn for each key with the prefix, in key order (reverse order
	// if reverse is set), until fn returns false. Slices passed to fn are only
	// valid during the call.
	Iterate(prefix []byte, reverse bool, fn func(key, value []byte) bool) error
	// Seek returns the first key >= key (forward) or the last key < key (reverse)
	// that has the prefix, or ErrNotFound.
	Seek(prefix, key []byte, reverse bool) (k, v []byte, err error)
}

// DB is an open store. It is safe for concurrent use.
type DB struct {
	ldb *leveldb.DB
}

// Open opens (creating if needed) the store in dir.
func Open(dir string) (*DB, error) {
	ldb, err := leveldb.OpenFile(dir, options())
	if lerrors.IsCorrupted(err) {
		// A torn journal tail after a crash: recover what is intact.
		ldb, err = leveldb.RecoverFile(dir, options())
	}
	if err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) || errors.Is(err, storage.ErrLocked) {
			return nil, fmt.Errorf("%w: %s", ErrInUse, dir)
		}
		return nil, fmt.Errorf("opening store in %s: %w", dir, err)
	}
	return &DB{ldb: ldb}, nil
}

// OpenMemory opens an empty store held in memory.
func OpenMemory() (*DB, error) {
	ldb, err := leveldb.Open(storage.NewMemStorage(), options())
	if err != nil {
		return nil, err
	}
	return &DB{ldb: ldb}, nil
}

func options() *opt.Options {
	return &opt.Options{
		// Values can be MiBs; a bigger memtable keeps them from forcing a flush
		// on almost every write.
		WriteBuffer:        64 * opt.MiB,
		BlockCacheCapacity: 32 * opt.MiB,
		// Stored entries are compressed by nobody else; snappy is cheap.
		Compression: opt.SnappyCompression,
		// Applying an entry first asks whether it (and each parent) is stored; a
		// bloom filter answers "no" without reading every level.
		Filter: filter.NewBloomFilter(10),
	}
}

// Close closes the store. Further calls fail with ErrClosed.
func (d *DB) Close() error { return d.ldb.Close() }

// Get returns the value of key or ErrNotFound.
func (d *DB) Get(key []byte) ([]byte, error) { return get(d.ldb.Get(key, nil)) }

// Has reports whether key is stored.
func (d *DB) Has(key []byte) (bool, error) { return has(d.ldb.Has(key, nil)) }

// Iterate: see Reader.
func (d *DB) Iterate(prefix []byte, reverse bool, fn func(k, v []byte) bool) error {
	return iterate(d.ldb.NewIterator(util.BytesPrefix(prefix), nil), reverse, fn)
}

// Seek: see Reader.
func (d *DB) Seek(prefix, key []byte, reverse bool) ([]byte, []byte, error) {
	return seek(d.ldb.NewIterator(util.BytesPrefix(prefix), nil), key, reverse)
}

// Write applies the batch atomically. With sync set the write is on disk when Write
// returns; without it, it is in the journal and survives the process being killed.
func (d *DB) Write(b *Batch, sync bool) error {
	if b.b.Len() == 0 && !sync {
		return nil
	}
	return mapErr(d.ldb.Write(&b.b, &opt.WriteOptions{Sync: sync}))
}

// Snapshot returns a consistent read-only view. Release it when done.
func (d *DB) Snapshot() (*Snapshot, error) {
	s, err := d.ldb.GetSnapshot()
	if err != nil {
		return nil, mapErr(err)
	}
	return &Snapshot{s: s}, nil
}

// Stats returns leveldb's property string for name (e.g. "leveldb.stats").
func (d *DB) Stats(name string) string {
	v, _ := d.ldb.GetProperty(name)
	return v
}

// Snapshot is a point-in-time view of the store.
type Snapshot struct{ s *leveldb.Snapshot }

// Get: see Reader.
func (s *Snapshot) Get(key []byte) ([]byte, error) { return get(s.s.Get(key, nil)) }

// Has: see Reader.
func (s *Snapshot) Has(key []byte) (bool, error) { return has(s.s.Has(key, nil)) }

// Iterate: see Reader.
func (s *Snapshot) Iterate(prefix []byte, reverse bool, fn func(k, v []byte) bool) error {
	return iterate(s.s.NewIterator(util.BytesPrefix(prefix), nil), reverse, fn)
}

// Seek: see Reader.
func (s *Snapshot) Seek(prefix, key []byte, reverse bool) ([]byte, []byte, error) {
	return seek(s.s.NewIterator(util.BytesPrefix(prefix), nil), key, reverse)
}

// Release frees the snapshot.
func (s *Snapshot) Release() { s.s.Release() }

// Batch collects writes applied atomically by DB.Write.
type Batch struct{ b leveldb.Batch }

// Put stages key=value. The batch copies both.
func (b *Batch) Put(key, value []byte) { b.b.Put(key, value) }

// Delete stages the removal of key.
func (b *Batch) Delete(key []byte) { b.b.Delete(key) }

// Len is the number of staged writes.
func (b *Batch) Len() int { return b.b.Len() }

// Size is the staged size in bytes.
func (b *Batch) Size() int { return len(b.b.Dump()) }

// Reset empties the batch for reuse.
func (b *Batch) Reset() { b.b.Reset() }

func get(v []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, mapErr(err)
	}
	return v, nil
}

func has(ok bool, err error) (bool, error) { return ok, mapErr(err) }

func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, leveldb.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, leveldb.ErrClosed):
		return ErrClosed
	}
	return err
}

func iterate(it iterator.Iterator, reverse bool, fn func(k, v []byte) bool) error {
	defer it.Release()
	if reverse {
		for ok := it.Last(); ok; ok = it.Prev() {
			if !fn(it.Key(), it.Value()) {
				break
			}
		}
	} else {
		for it.Next() {
			if !fn(it.Key(), it.Value()) {
				break
			}
		}
	}
	return mapErr(it.Error())
}

func seek(it iterator.Iterator, key []byte, reverse bool) ([]byte, []byte, error) {
	defer it.Release()
	ok := it.Seek(key)
	if reverse {
		if ok {
			ok = it.Prev()
		} else {
			ok = it.Last()
		}
		for ok && bytes.Compare(it.Key(), key) >= 0 {
			ok = it.Prev()
		}
	}
	if !ok {
		if err := it.Error(); err != nil {
			return nil, nil, mapErr(err)
		}
		return nil, nil, ErrNotFound
	}
	return bytes.Clone(it.Key()), bytes.Clone(it.Value()), nil
}
