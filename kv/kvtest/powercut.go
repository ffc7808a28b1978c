// Package kvtest holds a goleveldb storage for tests that pulls the plug: Disk
// passes every operation to the storage it wraps and remembers what a power cut
// would leave on a real disk, so a test can open the store on what survives
// (kv.OpenStorage) and check what was promised.
//
// The model is POSIX's, applied to what goleveldb's file storage syncs:
//
//   - A file's bytes are durable up to its last Sync (fsync). goleveldb writes its
//     files append-only, so the durable part is a prefix of what was written.
//   - Names (create, remove, rename) are directory entries: durable only when the
//     directory is synced. goleveldb's file storage syncs the directory in SetMeta
//     (after writing CURRENT) and after each Sync of a manifest file, and nowhere
//     else; a file's own Sync does not make its name durable. SetMeta itself is
//     durable when it returns. SyncDir syncs the directory on request (kv does
//     when it creates a journal).
//
// So after a clean cut (PowerCut(nil)) the disk holds exactly the names of the
// last directory sync, each file cut to its last Sync (empty if never synced; a
// file created after that directory sync is gone, one removed after it is back),
// and the manifest that the last SetMeta named.
//
// A real disk may also keep part of what was not synced. A torn cut (PowerCut with
// a random source) keeps, on top of the clean cut, a random prefix of the directory
// changes since the last directory sync (journaling filesystems apply metadata in
// order), and for each file a random prefix of its unsynced bytes, possibly followed
// by garbage, zeros or random bytes, in place of some of the rest: the file's size
// reached the disk before its data did.
package kvtest

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"sync"

	"github.com/syndtr/goleveldb/leveldb/storage"
)

// Disk is a storage.Storage whose PowerCut returns what a power cut would leave.
// It is safe for concurrent use, PowerCut included: every file operation holds
// one lock, so a cut falls between two of them.
type Disk struct {
	back storage.Storage

	mu      sync.Mutex
	files   map[storage.FileDesc]*inode // the names the process sees
	durable map[storage.FileDesc]*inode // the names as of the last directory sync
	pending []dirOp                     // directory changes since, in order
	meta    storage.FileDesc            // what the last SetMeta named
}

// inode is a file's content, which outlives its names.
type inode struct {
	data   []byte // everything written
	synced int    // len(data) at the last Sync
}

type dirOpKind int

const (
	opCreate dirOpKind = iota
	opRemove
	opRename
)

type dirOp struct {
	kind   dirOpKind
	fd, to storage.FileDesc
	inode  *inode // opCreate: the new file
}

// NewDisk returns an empty Disk held in memory.
func NewDisk() *Disk {
	d, err := Wrap(storage.NewMemStorage())
	if err != nil {
		panic(err) // an empty memory storage cannot fail to list
	}
	return d
}

// Wrap returns a Disk over back. The files back holds already are taken as
// durable, as on a disk after a reboot.
func Wrap(back storage.Storage) (*Disk, error) {
	d := &Disk{back: back, files: map[storage.FileDesc]*inode{}}
	fds, err := back.List(storage.TypeAll)
	if err != nil {
		return nil, fmt.Errorf("listing files: %w", err)
	}
	for _, fd := range fds {
		data, err := readAll(back, fd)
		if err != nil {
			return nil, err
		}
		d.files[fd] = &inode{data: data, synced: len(data)}
	}
	d.durable = maps.Clone(d.files)
	if fd, err := back.GetMeta(); err == nil {
		d.meta = fd
	}
	return d, nil
}

func readAll(s storage.Storage, fd storage.FileDesc) ([]byte, error) {
	r, err := s.Open(fd)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", fd, err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", fd, err)
	}
	return data, nil
}

// PowerCut returns a new Disk holding what survives a power cut now (see the
// package comment): a clean cut with rng nil, a torn one drawn from rng otherwise.
// d itself goes on working, as if the cut had not happened.
func (d *Disk) PowerCut(rng *rand.Rand) *Disk {
	d.mu.Lock()
	names := maps.Clone(d.durable)
	if rng != nil {
		for _, op := range d.pending[:rng.Intn(len(d.pending)+1)] {
			op.apply(names)
		}
	}
	out := storage.NewMemStorage()
	for fd, n := range names {
		content := n.data[:n.synced]
		if rng != nil {
			content = tear(rng, n)
		}
		if err := writeFile(out, fd, content); err != nil {
			d.mu.Unlock()
			panic(err) // a memory storage does not fail to write
		}
	}
	if !d.meta.Zero() {
		out.SetMeta(d.meta)
	}
	d.mu.Unlock()
	cut, err := Wrap(out)
	if err != nil {
		panic(err)
	}
	return cut
}

// tear returns what a torn cut keeps of a file: its synced bytes, a random prefix
// of the rest and maybe garbage in place of some of what follows that.
func tear(rng *rand.Rand, n *inode) []byte {
	out := bytes.Clone(n.data[:n.synced])
	unsynced := n.data[n.synced:]
	if len(unsynced) == 0 {
		return out
	}
	k := rng.Intn(len(unsynced) + 1)
	out = append(out, unsynced[:k]...)
	if rest := len(unsynced) - k; rest > 0 && rng.Intn(2) == 0 {
		garbage := make([]byte, 1+rng.Intn(rest))
		if rng.Intn(2) == 0 {
			rng.Read(garbage)
		}
		out = append(out, garbage...)
	}
	return out
}

func writeFile(s storage.Storage, fd storage.FileDesc, content []byte) error {
	w, err := s.Create(fd)
	if err != nil {
		return err
	}
	if _, err := w.Write(content); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

func (op dirOp) apply(names map[storage.FileDesc]*inode) {
	switch op.kind {
	case opCreate:
		names[op.fd] = op.inode
	case opRemove:
		delete(names, op.fd)
	case opRename:
		if n, ok := names[op.fd]; ok {
			delete(names, op.fd)
			names[op.to] = n
		}
	}
}

// syncDirLocked makes every directory change so far durable.
func (d *Disk) syncDirLocked() {
	d.durable = maps.Clone(d.files)
	d.pending = nil
}

// SyncDir makes every directory change so far durable, as fsync(2) of the
// directory does.
func (d *Disk) SyncDir() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.syncDirLocked()
	return nil
}

// Lock: see storage.Storage.
func (d *Disk) Lock() (storage.Locker, error) { return d.back.Lock() }

// Log: see storage.Storage.
func (d *Disk) Log(str string) { d.back.Log(str) }

// SetMeta is durable when it returns, with every directory change before it, as
// in goleveldb's file storage.
func (d *Disk) SetMeta(fd storage.FileDesc) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.back.SetMeta(fd); err != nil {
		return err
	}
	d.meta = fd
	d.syncDirLocked()
	return nil
}

// GetMeta: see storage.Storage.
func (d *Disk) GetMeta() (storage.FileDesc, error) { return d.back.GetMeta() }

// List: see storage.Storage.
func (d *Disk) List(ft storage.FileType) ([]storage.FileDesc, error) { return d.back.List(ft) }

// Open: see storage.Storage. Reads go to the wrapped storage.
func (d *Disk) Open(fd storage.FileDesc) (storage.Reader, error) { return d.back.Open(fd) }

// Create makes a new, empty file, whose name is durable at the next directory sync.
func (d *Disk) Create(fd storage.FileDesc) (storage.Writer, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w, err := d.back.Create(fd)
	if err != nil {
		return nil, err
	}
	n := &inode{}
	d.files[fd] = n
	d.pending = append(d.pending, dirOp{kind: opCreate, fd: fd, inode: n})
	return &writer{w: w, d: d, fd: fd, inode: n}, nil
}

// Remove drops a name; the drop is durable at the next directory sync.
func (d *Disk) Remove(fd storage.FileDesc) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.back.Remove(fd); err != nil {
		return err
	}
	delete(d.files, fd)
	d.pending = append(d.pending, dirOp{kind: opRemove, fd: fd})
	return nil
}

// Rename moves a name; the move is durable at the next directory sync.
func (d *Disk) Rename(oldfd, newfd storage.FileDesc) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.back.Rename(oldfd, newfd); err != nil {
		return err
	}
	if oldfd == newfd {
		return nil
	}
	d.files[newfd] = d.files[oldfd]
	delete(d.files, oldfd)
	d.pending = append(d.pending, dirOp{kind: opRename, fd: oldfd, to: newfd})
	return nil
}

// Close: see storage.Storage.
func (d *Disk) Close() error { return d.back.Close() }

// writer records a file's writes and syncs.
type writer struct {
	w     storage.Writer
	d     *Disk
	fd    storage.FileDesc
	inode *inode
}

func (w *writer) Write(p []byte) (int, error) {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	n, err := w.w.Write(p)
	w.inode.data = append(w.inode.data, p[:n]...)
	return n, err
}

// Sync makes the file's bytes durable, and for a manifest the directory too, as
// goleveldb's file storage does.
func (w *writer) Sync() error {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	if err := w.w.Sync(); err != nil {
		return err
	}
	w.inode.synced = len(w.inode.data)
	if w.fd.Type == storage.TypeManifest {
		w.d.syncDirLocked()
	}
	return nil
}

func (w *writer) Close() error { return w.w.Close() }

var _ storage.Storage = (*Disk)(nil)
