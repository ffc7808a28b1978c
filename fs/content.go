package fs

import (
	"bytes"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	"golang.org/x/sys/unix"
)

// content is a file's bytes while it is open (or local-only): all handles opened
// at the same version share it, so a read sees another handle's unflushed writes,
// as on a local disk. A remote change detaches a clean content from its node;
// handles that hold it keep reading what they opened.
//
// The bytes are in memory up to spillMin; beyond that (a large file being
// written) they move to a private, unnamed file beside the blobs
// (engine.Instance.SpillFile), so the mount holds no copy of large files, and
// their commit links that file into place as the value's blob (a write after
// that copies it first: shared). An instance that keeps blobs in memory keeps
// contents in memory too.
type content struct {
	data   []byte   // the bytes, while spill is nil
	spill  *os.File // or the file holding them
	size   int64    // their length, while in spill
	shared bool     // spill may have become a blob file (setValue): copy before writing
	// sum hashes the spilled bytes while writes only append (cp, dd, a
	// download): the commit then does not read them again. nil once a write
	// lands elsewhere; the commit hashes the file.
	sum     *appendHasher
	loaded  bool      // the bytes hold the value (it is read on first use, not at open)
	version engine.ID // the entry that set the value loaded or to be loaded
	store   string    // where version set it: the value is read from there
	path    []string  // once the key has changed or gone
	dirty   bool      // written since loaded or last committed
	writers int       // open handles that may write: their closes commit
	mtime   time.Time
	refs    int
	// blob is the hash of the version's blob when its value is kept as one; until
	// the value is loaded, reads come from the blob's file (file, opened on first
	// read, closed with the last handle), so reading part of a large file does
	// not read all of it.
	blob []byte
	file *os.File
	// kernel is set for a file whose writes pass through (see dirNode.Create,
	// fileNode.kernelWritesLocked): the kernel writes spill itself, so the bytes'
	// size, time and whether they changed are learned from the file (refresh),
	// not from write requests. Cleared once the spill file becomes a blob.
	kernel bool
	stamp  fileStamp // spill's size and change time when last refreshed
	// park is the engine's record of the bytes, parked at a close until their
	// commit (engine.Database.Park); 0 for none.
	park uint64
	// settled is closed when the commit after the last writer's close (settle) is
	// done; nil when none is under way.
	settled chan struct{}
	// watching: the last writer's descriptor is released, but a shared mapping
	// made through it may still write spill (lastWriterGoneLocked).
	watching bool
	// named: spill was parked under a name, so it cannot be parked again (an
	// unnamed file can be linked only while it never had a name): it is not
	// used again for another file (FS.recycle).
	named bool
	// direct: a write came through a descriptor that bypasses the page cache
	// (handle.direct), so the inode's pages do not hold what was written.
	direct bool
}

// othersWrite reports whether an open file other than f (open for writing) may
// write f's file: the kernel's backing file under a shared writable mapping
// outlives the descriptor the mapping was made through, and that descriptor's
// release. A write lease is granted only while no other file is open on the
// file at all: the kernel counts readers too (i_readcount), so a reader's open
// or mapping also answers true.
func othersWrite(f *os.File) bool {
	fd := f.Fd()
	if _, err := unix.FcntlInt(fd, unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return true
	}
	unix.FcntlInt(fd, unix.F_SETLEASE, unix.F_UNLCK)
	return false
}

// fileStamp tells whether a file changed: the kernel sets its change time at
// every write, at a resolution fine enough for whoever reads it (multigrain
// timestamps).
type fileStamp struct {
	size  int64
	ctime unix.Timespec
}

// refresh learns what the kernel wrote to a kernel-written content's spill file
// since the last call: any change marks the content written, at the file's
// mtime.
func (c *content) refresh() {
	if !c.kernel || c.spill == nil {
		return
	}
	var st unix.Stat_t
	if unix.Fstat(int(c.spill.Fd()), &st) != nil {
		return
	}
	s := fileStamp{size: st.Size, ctime: st.Ctim}
	if s == c.stamp {
		return
	}
	c.stamp, c.size, c.dirty = s, st.Size, true
	c.mtime = time.Unix(st.Mtim.Unix()).Truncate(time.Millisecond)
}

// spillMin is the size beyond which content moves from memory to a spill file:
// where values become blobs.
const spillMin = engine.BlobMin

func (c *content) length() int64 {
	if c.spill != nil {
		return c.size
	}
	return int64(len(c.data))
}

// close frees the content's files. The content is not used again.
func (c *content) close() {
	for _, f := range []*os.File{c.spill, c.file} {
		if f != nil {
			f.Close()
		}
	}
	c.spill, c.file, c.data = nil, nil, nil
}

func (c *content) readAt(dest []byte, off int64) (int, error) {
	if c.spill == nil {
		if off >= int64(len(c.data)) {
			return 0, nil
		}
		return copy(dest, c.data[off:]), nil
	}
	if off >= c.size {
		return 0, nil
	}
	k, err := c.spill.ReadAt(dest[:min(int64(len(dest)), c.size-off)], off)
	if err == io.EOF {
		err = nil
	}
	return k, err
}

// spillFor moves the bytes to a spill file once they are to grow past spillMin.
func (c *content) spillFor(fsys *FS, size int64) syscall.Errno {
	if c.spill != nil || size <= spillMin {
		return 0
	}
	f, err := fsys.inst.SpillFile()
	if err != nil || f == nil {
		return toErrno(err) // nil: blobs are in memory, and so are contents
	}
	if _, err := f.WriteAt(c.data, 0); err != nil {
		f.Close()
		return toErrno(err)
	}
	c.sum = newAppendHasher(c.data)
	c.spill, c.size, c.data = f, int64(len(c.data)), nil
	return 0
}

// unshare gives the content a spill file of its own again after a commit made
// its spill file a blob, which must not change.
func (c *content) unshare(fsys *FS) syscall.Errno {
	if !c.shared {
		return 0
	}
	f, err := fsys.inst.SpillFile()
	if err == nil {
		if _, err = c.spill.Seek(0, io.SeekStart); err == nil {
			_, err = io.Copy(f, io.LimitReader(c.spill, c.size))
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		return toErrno(err)
	}
	if c.sum != nil {
		c.sum.wait() // it may be reading the old file: the same bytes
	}
	c.spill.Close()
	c.spill, c.shared = f, false
	return 0
}

func (c *content) writeAt(fsys *FS, data []byte, off int64) syscall.Errno {
	end := off + int64(len(data))
	if errno := c.unshare(fsys); errno != 0 {
		return errno
	}
	if errno := c.spillFor(fsys, end); errno != 0 {
		return errno
	}
	if c.spill != nil {
		if err := engine.WriteFileAt(c.spill, data, off); err != nil {
			c.sum = nil // what reached the file is unknown
			return toErrno(err)
		}
		if c.sum != nil && off == c.size {
			c.sum.extend(c.spill, end)
		} else {
			c.sum = nil
		}
		c.size = max(c.size, end)
		return 0
	}
	if end > int64(len(c.data)) {
		if end > int64(cap(c.data)) {
			grown := make([]byte, end, max(end, 2*int64(cap(c.data))))
			copy(grown, c.data)
			c.data = grown
		} else {
			c.data = c.data[:end]
		}
	}
	copy(c.data[off:], data)
	return 0
}

// truncate cuts or extends (with zeros) the bytes to sz; a change marks the
// content written.
func (c *content) truncate(fsys *FS, sz int64) syscall.Errno {
	c.refresh() // the kernel's writes since the last look: O_TRUNC after them cuts them
	if sz == c.length() {
		return 0
	}
	if c.shared && sz == 0 {
		c.spill.Close() // O_TRUNC of a file just committed: nothing to copy
		c.spill, c.shared = nil, false
	}
	if errno := c.unshare(fsys); errno != 0 {
		return errno
	}
	if errno := c.spillFor(fsys, sz); errno != 0 {
		return errno
	}
	switch {
	case c.spill != nil:
		if err := c.spill.Truncate(sz); err != nil {
			return toErrno(err)
		}
		c.size = sz
	case sz < int64(len(c.data)):
		c.data = c.data[:sz:sz]
	default:
		c.data = append(c.data, make([]byte, sz-int64(len(c.data)))...)
	}
	if c.sum != nil {
		if sz == 0 {
			c.sum.reset() // empty again: appends can be hashed from the start
		} else {
			c.sum = nil
		}
	}
	c.dirty = true
	c.mtime = nowMs()
	return 0
}

// loadBlob loads a blob version's bytes by copying its blob file into a spill
// file (in the kernel, where the filesystem can). done is false when there is no
// blob file or no spill file to use: the caller then reads the value whole.
func (c *content) loadBlob(fsys *FS) (done bool, errno syscall.Errno) {
	p := fsys.inst.BlobPath(c.blob)
	if p == "" {
		return false, 0
	}
	src, err := os.Open(p)
	if err != nil {
		return false, 0 // reading the value whole reports what is wrong
	}
	defer src.Close()
	f, err := fsys.inst.SpillFile()
	if err != nil || f == nil {
		return false, 0
	}
	k, err := io.Copy(f, src)
	if err != nil {
		f.Close()
		return true, toErrno(err)
	}
	c.spill, c.size, c.data, c.loaded, c.sum = f, k, nil, true, nil
	return true, 0
}

// readBlob reads an unloaded blob version's bytes at off from its blob file;
// false when it cannot (then the value is loaded, which reports what is wrong).
func (c *content) readBlob(fsys *FS, dest []byte, off int64) (int, bool) {
	if !c.openBlob(fsys) {
		return 0, false
	}
	k, err := c.file.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return 0, false
	}
	return k, true
}

// openBlob opens the version's blob file as c.file, if it is not open yet;
// false when there is none to open.
func (c *content) openBlob(fsys *FS) bool {
	if c.file != nil {
		return true
	}
	p := fsys.inst.BlobPath(c.blob)
	if p == "" {
		return false
	}
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	c.file = f
	return true
}

// equal reports whether the bytes are b.
func (c *content) equal(b []byte) bool {
	if c.spill == nil {
		return bytes.Equal(c.data, b)
	}
	return c.size == int64(len(b)) && c.compare(bytes.NewReader(b))
}

// equalFile reports whether the bytes are the content of the file at p.
func (c *content) equalFile(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() != c.length() {
		return false
	}
	return c.compare(f)
}

// compare reports whether r yields exactly the bytes, reading both a piece at a
// time.
func (c *content) compare(r io.Reader) bool {
	const piece = 256 << 10
	a, b := make([]byte, piece), make([]byte, piece)
	for off := int64(0); ; off += piece {
		n, err := c.readAt(a, off)
		if err != nil {
			return false
		}
		m, err := io.ReadFull(r, b[:n])
		if m != n || (err != nil && n > 0) {
			return false
		}
		if !bytes.Equal(a[:n], b[:n]) {
			return false
		}
		if n < piece {
			// All bytes compared; r must be at its end too.
			k, _ := r.Read(b[:1])
			return k == 0
		}
	}
}

// hashed returns the blob hash of the spilled bytes if appendHasher has it.
func (c *content) hashed() ([32]byte, bool) {
	if c.sum == nil {
		return [32]byte{}, false
	}
	return c.sum.sum(c.size)
}

// setValue stages the bytes as the value at path in store, and takes their
// parked record, if any, off in the same commit.
func (c *content) setValue(tx *engine.Tx, store string, path []string) {
	s := tx.Store(store)
	if c.park != 0 {
		tx.Unpark(c.park)
	}
	if c.spill != nil {
		if c.kernel && (c.writers > 0 || c.watching) {
			// The kernel may still write the file: the blob is a copy.
			s.SetPathFileCopy(path, c.spill, c.size)
			return
		}
		c.kernel = false // the file becomes the blob, and nothing writes it any more
		if sum, ok := c.hashed(); ok {
			s.SetPathFileHashed(path, c.spill, c.size, sum)
		} else {
			s.SetPathFile(path, c.spill, c.size)
		}
		c.shared = true
		return
	}
	s.SetPath(path, c.data)
}
