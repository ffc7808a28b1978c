package engine

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"
)

// Large values live outside the kv store, as blobs: files named by their hash
// (BlobSum). A value op of more than BlobMin bytes carries the blob's hash and size
// instead of the bytes, so the entry stays small: committing a large file hashes it
// once and writes it once (no kv journal, no compactions), and sync sends the blob
// next to the entry that refers to it (docs/design.md, "Blobs").

// BlobMin is the largest value kept inside its entry; larger ones become blobs.
const BlobMin = 64 << 10

// ErrMissingBlob: an entry refers to a blob this node does not have (its sender did
// not send it, or a power cut lost a value that was never fsynced).
var ErrMissingBlob = errors.New("blob missing")

// blobHash is a blob's BlobSum.
type blobHash = [32]byte

// BlobSum is a blob's hash: BLAKE3 (256 bits) of its bytes, what b3sum prints.
// BLAKE3 rather than SHA-256 because large files are hashed on every close:
// with the vector units of today's CPUs it runs at several GB/s on one core
// (7 GB/s here against 2 GB/s for SHA-256 with SHA-NI), and it can be computed
// as the bytes are written (NewBlobHasher).
func BlobSum(value []byte) [32]byte { return blake3.Sum256(value) }

// NewBlobHasher returns a hash.Hash whose Sum is BlobSum of what was written.
func NewBlobHasher() hash.Hash { return blake3.New(32, nil) }

// blobStore keeps blobs by hash. put must be idempotent; get returns the bytes of a
// blob that was put with the same hash, checked against its size.
type blobStore interface {
	put(h blobHash, data []byte) error
	has(h blobHash, size int64) bool
	get(h blobHash, size int64) ([]byte, error)
	path(h blobHash) string // "" when the blob is not a file
	sync(h blobHash) error  // makes a put blob durable
}

// dirBlobs stores blobs as read-only files dir/ab/<hex hash>. A blob is written to
// dir/tmp and renamed into place, so a blob file is always complete: a reader never
// sees a half-written one, and a crash leaves at most a stray temporary file.
type dirBlobs struct{ dir string }

// clearTmp removes what a crash left in the temporary directory: blobs not yet
// renamed into place (their entries were never committed). The data directory
// is locked by this process, so nothing else is writing there.
func (b dirBlobs) clearTmp() {
	tmp := filepath.Join(b.dir, "tmp")
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		os.Remove(filepath.Join(tmp, e.Name()))
	}
}

func (b dirBlobs) path(h blobHash) string {
	x := hex.EncodeToString(h[:])
	return filepath.Join(b.dir, x[:2], x)
}

func (b dirBlobs) has(h blobHash, size int64) bool {
	fi, err := os.Stat(b.path(h))
	return err == nil && fi.Size() == size
}

func (b dirBlobs) sync(h blobHash) error {
	f, err := os.Open(b.path(h))
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(b.path(h)))
	}
	if err == nil {
		err = syncDir(b.dir) // the fan-out directory may be new
	}
	if err != nil {
		return fmt.Errorf("syncing blob %x: %w", h[:4], err)
	}
	return nil
}

func (b dirBlobs) put(h blobHash, data []byte) error {
	if b.has(h, int64(len(data))) {
		return nil
	}
	return b.write(h, func(f *os.File) error { return WriteFileAt(f, data, 0) })
}

// fileChunk bounds one write(2) to a blob or spill file. A write of 1 MiB or more
// at once could take ten times as long: on Linux 6.18's ext4, 64 MiB written to
// a new file in 1 MiB pwrites took 137 ms after the machine had been idle a few
// seconds (and at random, also right after other writes), in one write 100 –
// 175 ms, against 14 ms in pieces of 128 to 512 KiB, whatever came before.
const fileChunk = 256 << 10

// WriteFileAt writes data to f at off, in pieces of at most 256 KiB.
func WriteFileAt(f *os.File, data []byte, off int64) error {
	for len(data) > 0 {
		k := min(len(data), fileChunk)
		if _, err := f.WriteAt(data[:k], off); err != nil {
			return err
		}
		data, off = data[k:], off+int64(k)
	}
	return nil
}

// write makes the blob file for h from what fill writes to a temporary file.
func (b dirBlobs) write(h blobHash, fill func(*os.File) error) error {
	final := b.path(h)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return err
	}
	tmpDir := filepath.Join(b.dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(tmpDir, "blob-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename: nothing to remove
	err = fill(f)
	if err == nil {
		err = f.Chmod(0o400)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), final)
	}
	if err != nil {
		return fmt.Errorf("writing blob %x: %w", h[:4], err)
	}
	return nil
}

func (b dirBlobs) get(h blobHash, size int64) ([]byte, error) {
	data, err := os.ReadFile(b.path(h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %x", ErrMissingBlob, h[:8])
	}
	if err != nil {
		return nil, err
	}
	if int64(len(data)) != size {
		return nil, fmt.Errorf("%w: blob %x has %d bytes, its entry says %d", ErrCorrupt, h[:8], len(data), size)
	}
	return data, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// memBlobs keeps blobs in memory, for instances over an in-memory kv store.
type memBlobs struct {
	mu sync.RWMutex
	m  map[blobHash][]byte
}

func (b *memBlobs) path(blobHash) string { return "" }

func (b *memBlobs) sync(blobHash) error { return nil }

func (b *memBlobs) has(h blobHash, size int64) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	v, ok := b.m[h]
	return ok && int64(len(v)) == size
}

func (b *memBlobs) put(h blobHash, data []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = map[blobHash][]byte{}
	}
	if _, ok := b.m[h]; !ok {
		b.m[h] = bytes.Clone(data)
	}
	return nil
}

func (b *memBlobs) get(h blobHash, size int64) ([]byte, error) {
	b.mu.RLock()
	v, ok := b.m[h]
	b.mu.RUnlock()
	if !ok || int64(len(v)) != size {
		return nil, fmt.Errorf("%w: %x", ErrMissingBlob, h[:8])
	}
	return bytes.Clone(v), nil
}

// blobRef is an op's reference to a blob.
func (op *Op) blobRef() (blobHash, bool) {
	var h blobHash
	if len(op.Blob) != len(h) {
		return h, false
	}
	copy(h[:], op.Blob)
	return h, true
}

// blobRefs calls fn for each blob e's ops refer to, in op order, until fn
// returns false.
func (e *Entry) blobRefs(fn func(h blobHash, size int64) bool) {
	for _, sn := range e.Stores {
		for i := range sn.Ops {
			if h, ok := sn.Ops[i].blobRef(); ok && !fn(h, int64(sn.Ops[i].Size)) {
				return
			}
		}
	}
}

// putBlob stores value as a blob and returns its hash.
func (in *Instance) putBlob(value []byte) (blobHash, error) {
	h := BlobSum(value)
	return h, in.keepBlob(h, value)
}

// keepBlob stores a blob; it is durable after the next syncBlobs.
func (in *Instance) keepBlob(h blobHash, value []byte) error {
	if err := in.blobs.put(h, value); err != nil {
		return err
	}
	in.unsyncedBlobs(h)
	return nil
}

// unsyncedBlobs records blobs that the next syncBlobs must make durable.
func (in *Instance) unsyncedBlobs(hs ...blobHash) {
	in.blobMu.Lock()
	defer in.blobMu.Unlock()
	if in.unsynced == nil {
		in.unsynced = map[blobHash]bool{}
	}
	for _, h := range hs {
		in.unsynced[h] = true
	}
}

// syncBlobs makes every blob stored so far durable (fsync): a Sync commit or
// SyncJournal calls it before syncing the kv journal, so that no entry that
// survives a power cut refers to a blob that did not.
func (in *Instance) syncBlobs() error {
	if err := in.syncParks(); err != nil {
		return err
	}
	in.blobMu.Lock()
	hs := in.unsynced
	in.unsynced = nil
	in.blobMu.Unlock()
	for h := range hs {
		if err := in.blobs.sync(h); err != nil {
			for h := range hs {
				in.unsyncedBlobs(h)
			}
			return err
		}
	}
	return nil
}

// opValue returns the bytes an op sets, reading its blob if it has one.
func (in *Instance) opValue(op *Op) ([]byte, error) {
	if h, ok := op.blobRef(); ok {
		return in.blobs.get(h, int64(op.Size))
	}
	return op.Value, nil
}

// BlobPath returns the file holding the blob with hash h (a Node's Blob), or ""
// when there is none (or blobs are kept in memory). The file is read-only and
// never changes; a reader may read it instead of reading the value whole.
func (in *Instance) BlobPath(h []byte) string {
	if len(h) != len(blobHash{}) {
		return ""
	}
	return in.blobs.path(blobHash(h))
}

// Blobs returns the blobs the entry raw refers to, in the order of its ops: what a
// sender sends next to the entry. A stored entry whose blob is missing returns
// ErrMissingBlob.
func (in *Instance) Blobs(raw []byte) ([][]byte, error) {
	if !mayHaveBlobs(raw) {
		return nil, nil
	}
	e, err := parseEntry(raw)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	e.blobRefs(func(h blobHash, size int64) bool {
		var b []byte
		if b, err = in.blobs.get(h, size); err == nil {
			out = append(out, b)
		}
		return err == nil
	})
	return out, err
}

// blobRefKey is how an op's blob hash starts in an entry's encoding: key 4, then a
// 32-byte byte string. Entries without it have no blobs (a value may contain these
// bytes by chance; the parse then says there are none).
var blobRefKey = []byte{0x04, 0x58, 0x20}

func mayHaveBlobs(raw []byte) bool { return bytes.Contains(raw, blobRefKey) }

// storeBlobs keeps the blobs received with entries: each must be the blob that an
// op of one of the (verified) entries refers to, by an author who may write the
// database as it stands here; others are ignored, so a peer cannot store bytes
// nothing refers to, nor fill the disk with entries that will be refused.
func (in *Instance) storeBlobs(ds []decoded, blobs [][]byte) error {
	if len(blobs) == 0 {
		return nil
	}
	// Settings this node does not have yet may grant the right to write: with
	// them in the batch, the entries are judged when applied, in order.
	newSettings := false
	for _, d := range ds {
		if d.e != nil && d.e.Store(SettingsStore) != nil && !in.Has(d.id) {
			newSettings = true
		}
	}
	want := map[blobHash]int64{}
	for _, d := range ds {
		if d.e == nil || (!newSettings && !in.mayWrite(d.e)) {
			continue
		}
		d.e.blobRefs(func(h blobHash, size int64) bool {
			want[h] = size
			return true
		})
	}
	for _, b := range blobs {
		h := BlobSum(b)
		if size, ok := want[h]; !ok || size != int64(len(b)) {
			continue
		}
		if err := in.keepBlob(h, b); err != nil {
			return err
		}
	}
	return nil
}

// mayWrite reports whether e's author may write e's database as this node has it
// (a new database's root entry: yes). Authorization proper happens when e is
// applied; this only keeps a reader's refused entries from leaving blobs behind.
func (in *Instance) mayWrite(e *Entry) bool {
	if e.IsRoot() {
		return true
	}
	db, ok := in.DatabaseByID(e.Root)
	if !ok {
		return true // its root comes in this batch, or it waits for it
	}
	s, err := db.Settings()
	return err == nil && s.Permission(e.Author) >= PermWrite
}

// missingBlob returns an error naming the first blob e refers to that is not here.
func (in *Instance) missingBlob(e *Entry) error {
	var err error
	e.blobRefs(func(h blobHash, size int64) bool {
		if !in.blobs.has(h, size) {
			err = fmt.Errorf("%w: %x (%d bytes)", ErrMissingBlob, h[:8], size)
		}
		return err == nil
	})
	return err
}

// withBlob reads the value of a node read with its value, if it is in a blob.
func (in *Instance) withBlob(n Node, err error) (Node, error) {
	if err != nil || n.Value != nil || len(n.Blob) == 0 {
		return n, err
	}
	op := Op{Kind: OpValue, Blob: n.Blob, Size: uint64(n.Size)}
	if n.Value, err = in.opValue(&op); err != nil {
		return Node{}, fmt.Errorf("reading value: %w", err)
	}
	return n, nil
}

// SpillFile returns a new empty file, already unlinked, on the disk that holds
// the blobs, for a large value being written (fs/ keeps an open file's bytes
// there instead of in memory); nil when blobs are kept in memory. Closing it
// frees its space.
func (in *Instance) SpillFile() (*os.File, error) {
	d, ok := in.blobs.(dirBlobs)
	if !ok {
		return nil, nil
	}
	tmp := filepath.Join(d.dir, "tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return nil, err
	}
	// An O_TMPFILE file can later be linked into place as a blob (putFileBlob).
	if fd, err := unix.Open(tmp, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(tmp, "(spill)")), nil
	}
	f, err := os.CreateTemp(tmp, "open-")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// fileSum is BlobSum of the first size bytes of f.
func fileSum(f *os.File, size int64) (blobHash, error) {
	h := NewBlobHasher()
	if _, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, size), make([]byte, 1<<20)); err != nil {
		return blobHash{}, err
	}
	var out blobHash
	h.Sum(out[:0])
	return out, nil
}

// putFileBlob stores the first size bytes of f as a blob and returns its hash.
// sum, if known, is their BlobSum. When f is a SpillFile of exactly size bytes,
// it becomes the blob file itself (linked into place, no copy), so it must not be
// written to afterwards.
func (in *Instance) putFileBlob(f *os.File, size int64, sum *blobHash) (blobHash, error) {
	var h blobHash
	if sum != nil {
		h = *sum
	} else {
		var err error
		if h, err = fileSum(f, size); err != nil {
			return h, err
		}
	}
	d, ok := in.blobs.(dirBlobs)
	if !ok {
		b := make([]byte, size)
		if _, err := f.ReadAt(b, 0); err != nil {
			return h, err
		}
		return h, in.keepBlob(h, b)
	}
	if !d.has(h, size) && !d.link(h, f, size) {
		if err := d.putFrom(h, f, size); err != nil {
			return h, err
		}
	}
	in.unsyncedBlobs(h)
	return h, nil
}

// link makes the unnamed file f (O_TMPFILE) of exactly size bytes the blob file
// for h; false when it cannot (then the caller copies).
func (b dirBlobs) link(h blobHash, f *os.File, size int64) bool {
	if fi, err := f.Stat(); err != nil || fi.Size() != size || fi.Mode().Perm()&0o077 != 0 {
		return false
	}
	final := b.path(h)
	if err := os.MkdirAll(filepath.Dir(final), 0o700); err != nil {
		return false
	}
	if err := f.Chmod(0o400); err != nil {
		return false
	}
	err := linkFile(f, final)
	return err == nil || errors.Is(err, fs.ErrExist)
}

// linkFile gives the file f is open on the name path (an O_TMPFILE file its
// first name, or another one).
func linkFile(f *os.File, path string) error {
	proc := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	return unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
}

// putFrom is put of the first size bytes of f, copied in the kernel
// (copy_file_range) where the filesystem can.
func (b dirBlobs) putFrom(h blobHash, src *os.File, size int64) error {
	return b.write(h, func(dst *os.File) error {
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return err
		}
		n, err := io.Copy(dst, io.LimitReader(src, size))
		if err == nil && n != size {
			err = io.ErrUnexpectedEOF
		}
		return err
	})
}
