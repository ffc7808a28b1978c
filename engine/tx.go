package engine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// Tx stages changes to any stores of one database; Commit writes them as one
// signed entry. A Tx is not safe for concurrent use.
type Tx struct {
	db     *Database
	stores []*StoreTx
	origin string
	time   int64 // ms; 0 = now
	err    error // first staging error; Commit returns it
	unpark []uint64
}

// SetOrigin tags the commit's event, so a subscriber can tell its own commits.
func (t *Tx) SetOrigin(origin string) { t.origin = origin }

// SetTime sets the entry's (informational) wall-clock time, e.g. when the change
// was made rather than committed. Heights, and so ordering, still use the clock.
func (t *Tx) SetTime(tm time.Time) { t.time = tm.UnixMilli() }

// Begin starts a transaction.
func (d *Database) Begin() *Tx { return &Tx{db: d} }

// Store returns the staging handle for a store (creating the handle, not the store).
func (t *Tx) Store(name string) *StoreTx {
	for _, s := range t.stores {
		if s.name == name {
			return s
		}
	}
	s := &StoreTx{tx: t, name: name}
	if err := CheckStoreName(name); err != nil {
		t.fail(err)
	}
	t.stores = append(t.stores, s)
	return s
}

func (t *Tx) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

// Empty reports whether nothing is staged.
func (t *Tx) Empty() bool {
	for _, s := range t.stores {
		if len(s.ops) > 0 {
			return false
		}
	}
	return true
}

// Commit writes the staged changes as one entry and returns its id. With Journal it
// returns once the entry is in the kv journal; with Sync, once it is on disk.
// Concurrent commits are grouped into one kv write.
func (t *Tx) Commit(d Durability) (ID, error) {
	if t.err != nil {
		return ID{}, t.err
	}
	var stores []StoreNode
	for _, s := range t.stores {
		if len(s.ops) > 0 {
			stores = append(stores, StoreNode{Name: s.name, Ops: s.ops})
		}
	}
	if len(stores) == 0 {
		return ID{}, fmt.Errorf("empty transaction")
	}
	if d == Sync {
		if err := t.db.in.syncBlobs(); err != nil {
			return ID{}, err
		}
	}
	r := t.db.in.do(&request{commit: &commitReq{db: t.db.id, stores: stores, origin: t.origin, time: t.time, unpark: t.unpark}, sync: d == Sync})
	if r.err == nil {
		t.db.in.unparked(t.unpark)
	}
	return r.id, r.err
}

// StoreTx stages changes to one store.
type StoreTx struct {
	tx   *Tx
	name string
	ops  []Op
}

func (s *StoreTx) stage(path []string, kind OpKind, value []byte) *StoreTx {
	for _, n := range path {
		if err := CheckName(n); err != nil {
			s.tx.fail(err)
			return s
		}
	}
	if len(value) > s.tx.db.in.maxValue {
		s.tx.fail(fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(value), s.tx.db.in.maxValue))
		return s
	}
	if kind == OpValue && len(value) > BlobMin {
		// A large value is written to its blob now, so the Tx holds no copy of it.
		h, err := s.tx.db.in.putBlob(value)
		if err != nil {
			s.tx.fail(err)
			return s
		}
		s.ops = append(s.ops, Op{Path: slices.Clone(path), Kind: kind, Blob: h[:], Size: uint64(len(value))})
		return s
	}
	s.ops = append(s.ops, Op{Path: slices.Clone(path), Kind: kind, Value: slices.Clone(value)})
	return s
}

// Set sets a top-level key.
func (s *StoreTx) Set(key string, value []byte) *StoreTx { return s.SetPath([]string{key}, value) }

// SetPath sets the value at a nested path, making the maps on the way.
func (s *StoreTx) SetPath(path []string, value []byte) *StoreTx {
	if len(path) == 0 {
		s.tx.fail(fmt.Errorf("%w: empty path", ErrInvalidName))
		return s
	}
	return s.stage(path, OpValue, value)
}

// SetPathFile is SetPath with the value in the first size bytes of f, which must
// not change until the call returns. A value over BlobMin is hashed and copied
// from the file without passing through memory; a file from SpillFile becomes
// the blob itself and must not be written to afterwards.
func (s *StoreTx) SetPathFile(path []string, f *os.File, size int64) *StoreTx {
	return s.setPathFile(path, f, size, nil)
}

// SetPathFileHashed is SetPathFile for a caller that already has the bytes'
// BlobSum (hashed as they were written); the engine does not hash them again.
func (s *StoreTx) SetPathFileHashed(path []string, f *os.File, size int64, sum [32]byte) *StoreTx {
	return s.setPathFile(path, f, size, &sum)
}

// SetPathFileCopy is SetPathFile for a file that others may still be writing to
// (the kernel, for a file open on the mount): the bytes are copied first and the
// copy is hashed, so the blob is what its hash says; f never becomes the blob.
func (s *StoreTx) SetPathFileCopy(path []string, f *os.File, size int64) *StoreTx {
	if size <= BlobMin {
		return s.setPathFile(path, f, size, nil)
	}
	if !s.keyPath(path) {
		return s
	}
	if size > int64(s.tx.db.in.maxValue) {
		s.tx.fail(fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, size, s.tx.db.in.maxValue))
		return s
	}
	cp, err := s.tx.db.in.SpillFile()
	if err == nil && cp == nil {
		return s.setPathFile(path, f, size, nil) // blobs in memory: read whole, then hashed
	}
	if err == nil {
		defer cp.Close()
		var n int64
		if n, err = io.Copy(cp, io.NewSectionReader(f, 0, size)); err == nil && n != size {
			err = fmt.Errorf("copying a value: %w", io.ErrUnexpectedEOF)
		}
	}
	if err != nil {
		s.tx.fail(err)
		return s
	}
	return s.setPathFile(path, cp, size, nil)
}

func (s *StoreTx) setPathFile(path []string, f *os.File, size int64, sum *blobHash) *StoreTx {
	if size <= BlobMin {
		b := make([]byte, size)
		if _, err := f.ReadAt(b, 0); err != nil && !(errors.Is(err, io.EOF) && size == 0) {
			s.tx.fail(err)
			return s
		}
		return s.SetPath(path, b)
	}
	if !s.keyPath(path) {
		return s
	}
	if size > int64(s.tx.db.in.maxValue) {
		s.tx.fail(fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, size, s.tx.db.in.maxValue))
		return s
	}
	h, err := s.tx.db.in.putFileBlob(f, size, sum)
	if err != nil {
		s.tx.fail(err)
		return s
	}
	s.ops = append(s.ops, Op{Path: slices.Clone(path), Kind: OpValue, Blob: h[:], Size: uint64(size)})
	return s
}

// keyPath checks that path can name a key (checkKeyPath); if not, the
// transaction fails.
func (s *StoreTx) keyPath(path []string) bool {
	if err := checkKeyPath(path); err != nil {
		s.tx.fail(err)
		return false
	}
	return true
}

// checkKeyPath checks that path can name a key: not empty, valid names.
func checkKeyPath(path []string) error {
	if len(path) == 0 {
		return fmt.Errorf("%w: empty path", ErrInvalidName)
	}
	for _, name := range path {
		if err := CheckName(name); err != nil {
			return err
		}
	}
	return nil
}

// SetNode sets path to what n (read from this database) is: a value, or a link.
// A value kept as a blob is referred to again, without reading or copying it:
// how a rename moves a large file.
func (s *StoreTx) SetNode(path []string, n Node) *StoreTx {
	switch {
	case n.Kind == OpLink:
		return s.SetLink(path, string(n.Value))
	case n.Kind != OpValue:
		s.tx.fail(fmt.Errorf("%w: SetNode of a %s", ErrInvalidName, n.Kind))
		return s
	case len(n.Blob) == 0:
		return s.SetPath(path, n.Value)
	}
	if !s.keyPath(path) {
		return s
	}
	op := Op{Path: slices.Clone(path), Kind: OpValue, Blob: slices.Clone(n.Blob), Size: uint64(n.Size)}
	if err := s.tx.db.in.missingBlob(&Entry{Stores: []StoreNode{{Name: s.name, Ops: []Op{op}}}}); err != nil {
		s.tx.fail(err)
		return s
	}
	s.ops = append(s.ops, op)
	return s
}

// SetLink makes path a symbolic link to target.
func (s *StoreTx) SetLink(path []string, target string) *StoreTx {
	if len(path) == 0 {
		s.tx.fail(fmt.Errorf("%w: empty path", ErrInvalidName))
		return s
	}
	return s.stage(path, OpLink, []byte(target))
}

// SetMap makes path an (empty, if new) nested map: a directory. The empty path
// creates the store itself.
func (s *StoreTx) SetMap(path []string) *StoreTx { return s.stage(path, OpMap, nil) }

// Delete removes path and everything below it. The empty path removes the store.
func (s *StoreTx) Delete(path []string) *StoreTx { return s.stage(path, OpDelete, nil) }

// Clear replaces the map at path with an empty one, as `rm -r p; mkdir p` does.
func (s *StoreTx) Clear(path []string) *StoreTx {
	return s.stage(path, OpDelete, nil).stage(path, OpMap, nil)
}

// Get reads path as this transaction would leave it: staged changes over the
// committed state.
func (s *StoreTx) Get(path []string) (Node, error) {
	for i := len(s.ops) - 1; i >= 0; i-- {
		op := s.ops[i]
		switch {
		case slices.Equal(op.Path, path):
			if op.Kind == OpDelete {
				return Node{}, ErrNotFound
			}
			if op.Size > 0 {
				v, err := s.tx.db.in.opValue(&op)
				return Node{Kind: op.Kind, Size: int64(op.Size), Value: v, Blob: op.Blob}, err
			}
			return Node{Kind: op.Kind, Size: int64(len(op.Value)), Value: op.Value}, nil
		case len(op.Path) < len(path) && slices.Equal(op.Path, path[:len(op.Path)]):
			switch op.Kind {
			case OpDelete:
				return Node{}, ErrNotFound
			case OpValue, OpLink:
				return Node{}, ErrNotDir
			}
		}
	}
	return s.tx.db.Get(s.name, path)
}
