// Package kv is the ordered key-value store under the engine: a thin layer over
// goleveldb, on disk (Open), on any goleveldb storage (OpenStorage) or on leveldb's
// in-memory storage (OpenMemory), with one implementation for all. It knows nothing
// of entries or databases; the engine owns the key layout (engine/layout.go).
package kv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
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
	ldb  *leveldb.DB
	stor storage.Storage // closed with the store when Open opened it
}

// Open opens (creating if needed) the store in dir.
func Open(dir string) (*DB, error) {
	stor, err := storage.OpenFile(dir, false)
	if err != nil {
		return nil, openErr(dir, err)
	}
	d, err := OpenStorage(dirStorage{Storage: stor, dir: dir}, Options{})
	if err != nil {
		stor.Close()
		return nil, openErr(dir, err)
	}
	d.stor = stor
	return d, nil
}

func openErr(dir string, err error) error {
	if errors.Is(err, syscall.EWOULDBLOCK) || errors.Is(err, syscall.EAGAIN) || errors.Is(err, storage.ErrLocked) {
		return fmt.Errorf("%w: %s", ErrInUse, dir)
	}
	return fmt.Errorf("opening store in %s: %w", dir, err)
}

// Options tune a store. The zero value is what eidefs runs with.
type Options struct {
	// Memtable is how much is written, to memory and the journal, before goleveldb
	// writes it out as a table and starts a new journal (default 64 MiB). Tests
	// make it small: a store then opens without allocating 64 MiB, and switches
	// journals often.
	Memtable int
}

// OpenStorage opens (creating if needed) the store held by s, the one way every
// store is opened, so a test's fault-injecting storage goes through the same
// recovery as a data directory. If s has a SyncDir() error method (its files are
// in a directory), it is used to make a new journal's name durable. s stays the
// caller's: Close does not close it.
func OpenStorage(s storage.Storage, o Options) (*DB, error) {
	lo := options()
	if o.Memtable > 0 {
		lo.WriteBuffer = o.Memtable
	}
	s = journalStorage{Storage: s}
	ldb, err := leveldb.Open(s, lo)
	if lerrors.IsCorrupted(err) {
		// A crash left a file torn (a manifest): rebuild from what is intact.
		ldb, err = leveldb.Recover(s, lo)
	}
	if err != nil {
		return nil, err
	}
	return &DB{ldb: ldb}, nil
}

// OpenMemory opens an empty store held in memory.
func OpenMemory() (*DB, error) { return OpenStorage(storage.NewMemStorage(), Options{}) }

// journalStorage keeps the promise of a sync write, that everything written
// before it is on disk too, which goleveldb breaks where it switches to a new
// journal (its memtable is full): it syncs only the journal being written, and
// the new journal's name only when the old memtable has reached a table and the
// manifest is written. Until then a sync write would be durable in the new
// journal while unsynced writes before it in the old one, or the new journal's
// own name, are not. So a journal is synced when it is closed, and the directory
// when a journal is created.
type journalStorage struct{ storage.Storage }

func (s journalStorage) Create(fd storage.FileDesc) (storage.Writer, error) {
	w, err := s.Storage.Create(fd)
	if err != nil || fd.Type != storage.TypeJournal {
		return w, err
	}
	if ds, ok := s.Storage.(interface{ SyncDir() error }); ok {
		if err := ds.SyncDir(); err != nil {
			w.Close()
			return nil, fmt.Errorf("syncing the directory of new journal %s: %w", fd, err)
		}
	}
	return syncOnClose{w}, nil
}

// syncOnClose is a journal that is synced when goleveldb closes it.
type syncOnClose struct{ storage.Writer }

func (w syncOnClose) Close() error {
	err := w.Writer.Sync()
	if cerr := w.Writer.Close(); err == nil {
		err = cerr
	}
	return err
}

// dirStorage is goleveldb's file storage with the directory sync it lacks.
type dirStorage struct {
	storage.Storage
	dir string
}

// SyncDir makes the directory's entries (names of files created, renamed or
// removed) durable.
func (s dirStorage) SyncDir() error {
	f, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func options() *opt.Options {
	return &opt.Options{
		// The memtable: its whole size is allocated up front, and a full one
		// stays in memory until it is compacted, so it costs its size twice in
		// the mount's RSS. Applying entries (sorted batches, BenchmarkApply/
		// pipelined): 49,000/s with 16 MiB, 53,000 with 32, 53,300 - 54,600
		// with 64; 32 MiB keeps that speed for half the memory.
		WriteBuffer:        32 * opt.MiB,
		BlockCacheCapacity: 32 * opt.MiB,
		// Stored entries are compressed by nobody else; snappy is cheap.
		Compression: opt.SnappyCompression,
		// Applying an entry first asks whether it (and each parent) is stored; a
		// bloom filter answers "no" without reading every level.
		Filter: filter.NewBloomFilter(10),
	}
}

// Compact flushes the memtable and compacts the whole store, waiting for both: on
// return no compaction runs, so a Close right after cannot race one (goleveldb
// closes its memtable pool under a running compaction, syndtr/goleveldb#356: a data
// race the race detector reports). It costs a full compaction; tests use it on
// their small stores.
func (d *DB) Compact() error { return d.ldb.CompactRange(util.Range{}) }

// Close closes the store. Further calls fail with ErrClosed.
func (d *DB) Close() error {
	err := d.ldb.Close()
	if d.stor != nil && !errors.Is(err, leveldb.ErrClosed) {
		if serr := d.stor.Close(); err == nil {
			err = serr
		}
	}
	return err
}

// Get returns the value of key or ErrNotFound.
func (d *DB) Get(key []byte) ([]byte, error) { return get(d.ldb.Get(key, nil)) }

// Has reports whether key is stored.
func (d *DB) Has(key []byte) (bool, error) { return has(d.ldb.Has(key, nil)) }

// Iterate: see Reader.
func (d *DB) Iterate(prefix []byte, reverse bool, fn func(k, v []byte) bool) error {
	return iterate(d.ldb.NewIterator(util.BytesPrefix(prefix), nil), reverse, fn)
}

// IterateFrom calls fn for each key with the prefix that is >= start, in key
// order, until fn returns false.
func (d *DB) IterateFrom(prefix, start []byte, fn func(k, v []byte) bool) error {
	r := util.BytesPrefix(prefix)
	if bytes.Compare(start, r.Start) > 0 {
		r.Start = start
	}
	return iterate(d.ldb.NewIterator(r, nil), false, fn)
}

// Seek: see Reader.
func (d *DB) Seek(prefix, key []byte, reverse bool) ([]byte, []byte, error) {
	return seek(d.ldb.NewIterator(util.BytesPrefix(prefix), nil), key, reverse)
}

// Write applies the batch atomically. With sync set the write is on disk when Write
// returns, and so is every write before it; without it, it is in the journal and
// survives the process being killed. An empty batch with sync set is a durability
// barrier for the writes before it.
func (d *DB) Write(b *Batch, sync bool) error {
	if b.b.Len() == 0 {
		if !sync {
			return nil
		}
		// goleveldb returns at once for an empty batch, without syncing: write a
		// delete of the empty key, which no key layout uses, to sync the journal.
		var barrier leveldb.Batch
		barrier.Delete(nil)
		return mapErr(d.ldb.Write(&barrier, &opt.WriteOptions{Sync: true}))
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
