package fs

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// fileNode is a key: a file whose bytes are the value.
//
// An inode stands for one stored version of the key (ver) and what is written
// through it here. The kernel keeps one size and one page cache per inode, for
// all its descriptors, so every answer about the inode (lookup, getattr, open,
// read) is about that version: a version that comes from elsewhere (a peer, the
// CLI) gives the name a new inode at the next lookup, as `mv new name` would,
// and descriptors open on the old one go on reading what they opened, whole.
type fileNode struct {
	gofs.Inode
	fsys *FS

	mu      sync.Mutex // guards the fields below
	cur     *content   // content new opens share; nil when not loaded
	local   bool       // in the local-only overlay: never committed
	pending bool       // created here and not committed yet
	// kernelVersion is the version whose pages the kernel may hold: an open of the
	// same version keeps the page cache (FOPEN_KEEP_CACHE); any change resets it.
	kernelVersion engine.ID
	// ver is the stored version this inode stands for (zero until known): set at
	// lookup, moved on by what is committed through the inode.
	ver version
	// Open descriptors by how the kernel serves them: passOpen read the version's
	// blob file directly (passthrough), cacheOpen go through this process and
	// the inode's page cache. The kernel refuses to mix the two on one inode, so
	// an open takes the mode of those already open (see Open). dioOpen counts
	// those of cacheOpen that bypass the page cache (FOPEN_DIRECT_IO; see
	// directLocked).
	passOpen, cacheOpen, dioOpen int
	// dioReaders counts those of dioOpen that can read (and so be mapped: a
	// mapping is served from the page cache; see storeInKernelLocked).
	dioReaders int
	// noPassUntil keeps the inode's readers off passthrough until then, and for a
	// second after each close: it was made for a writer that met readers passing
	// through (see detachForWriterLocked). Zero for other inodes.
	noPassUntil time.Time
	// pinned: the Inode is persistent, kept in the tree while the file holds
	// what only this process has (see pin.go): while writeOpen descriptors can
	// write, it is local-only or not committed, or committing commits after a
	// release (settleLocked, watch) are under way.
	pinned                bool
	writeOpen, committing int
}

// version is one stored version of a key: the entry that set it, where it set
// it, and the value's size and time.
type version struct {
	entry engine.ID
	store string
	path  []string
	size  int64
	mtime time.Time
	blob  []byte // the value's blob hash, if it is kept as a blob
}

func storedVersion(l loc, node engine.Node) version {
	return version{entry: node.Entry, store: l.store, path: l.path, size: node.Size, mtime: time.UnixMilli(node.Time), blob: node.Blob}
}

// content is v to be read on first use.
func (v version) content() *content {
	return &content{version: v.entry, store: v.store, path: v.path, mtime: v.mtime, blob: v.blob}
}

// loadLocked reads c's value on first use: the version its descriptors opened,
// also when the key changed or went away since (a peer wrote or deleted it, it was
// unlinked or renamed here), so they read what they opened, as on a local disk.
func (n *fileNode) loadLocked(c *content) syscall.Errno {
	if c.loaded {
		return 0
	}
	if done, errno := c.loadBlob(n.fsys); done {
		return errno
	}
	if l, errno := n.fsys.locate(n.EmbeddedInode()); errno == 0 {
		if node, err := l.db.Get(l.store, l.path); err == nil && node.Entry == c.version {
			c.data, c.loaded = node.Value, true
			return 0
		}
	}
	v, err := n.fsys.inst.ValueIn(c.version, c.store, c.path)
	if err != nil {
		return toErrno(err)
	}
	c.data, c.loaded = v, true
	return 0
}

var (
	_ = (gofs.NodeOpener)((*fileNode)(nil))
	_ = (gofs.NodeGetattrer)((*fileNode)(nil))
	_ = (gofs.NodeSetattrer)((*fileNode)(nil))
	_ = (gofs.NodeReader)((*fileNode)(nil))
	_ = (gofs.NodeWriter)((*fileNode)(nil))
	_ = (gofs.NodeFlusher)((*fileNode)(nil))
	_ = (gofs.NodeFsyncer)((*fileNode)(nil))
	_ = (gofs.NodeReleaser)((*fileNode)(nil))
)

// handle is one open file description.
type handle struct {
	c       *content
	append  bool
	write   bool // opened for writing (or created): its close commits
	wrote   bool // write(2) went through this handle
	direct  bool // opened with FOPEN_DIRECT_IO: the kernel caches none of its reads or writes
	read    bool // a direct descriptor opened for reading: it can be mapped
	flushes int
	stamp   fileStamp // c's stamp at open, for a kernel-written c: changed means written
}

// passHandle is a descriptor whose reads (and writes) the kernel serves from a
// file of ours itself (FUSE passthrough): they never reach this process. It is a
// reader of a stored large value (fd its blob file), or any descriptor of a file
// created here while its writers pass through (fd its spill file; see
// dirNode.Create). go-fuse registers fd with the kernel when the inode has no
// backing file yet, and gives every later passHandle of the inode the same one.
type passHandle struct {
	*handle
	fd int
}

func (p *passHandle) PassthroughFd() (int, bool) { return p.fd, true }

var _ = (gofs.FilePassthroughFder)((*passHandle)(nil))

// handleOf is the handle behind a descriptor of a file, nil for none.
func handleOf(f gofs.FileHandle) *handle {
	switch h := f.(type) {
	case *handle:
		return h
	case *passHandle:
		return h.handle
	}
	return nil
}

// inMemoryLocked reports whether the node's truth is its content, not the engine.
func (n *fileNode) inMemoryLocked() bool {
	return n.local || n.pending || (n.cur != nil && (n.cur.dirty || n.cur.kernel && n.cur.writers > 0))
}

// isStored reports whether the file exists in the database (not only here).
func (n *fileNode) isStored() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.local && !n.pending
}

func (n *fileNode) inMemory() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.inMemoryLocked()
}

func (n *fileNode) attrFromContent(c *content, out *fuse.Attr) {
	c.refresh()
	n.fsys.setAttr(out, modeFile, c.length(), c.mtime.UnixMilli())
}

// Getattr reports the inode's version (see fileNode), or while it is open the
// content its descriptors read, also after the key changed elsewhere or went away.
func (n *fileNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	_, parent := n.Parent()
	orphan := parent == nil // unlinked or replaced, still open
	h := handleOf(f)
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.cur
	if h != nil {
		c = h.c
	}
	if c != nil {
		if errno := n.contentAttrLocked(c, &out.Attr); errno != 0 {
			return errno
		}
		if orphan {
			out.Nlink = 0
		}
		return 0
	}
	l, errno := n.fsys.locate(n.EmbeddedInode())
	if errno != 0 {
		return errno
	}
	// A key deleted elsewhere (a peer, the CLI) is gone at once, also before its
	// invalidation reaches the kernel.
	if errno := n.checkStoredLocked(l); errno != 0 {
		return errno
	}
	n.fsys.setAttr(&out.Attr, modeFile, n.ver.size, n.ver.mtime.UnixMilli())
	return 0
}

// checkStoredLocked reads the key at l (the inode's place): ENOENT unless it is a
// file; the inode's version is taken from it when not known yet.
func (n *fileNode) checkStoredLocked(l loc) syscall.Errno {
	node, err := l.db.Stat(l.store, l.path)
	if err != nil {
		return toErrno(err)
	}
	if node.Kind != engine.OpValue {
		// A peer replaced the file with a directory or a link since the kernel
		// looked it up: this file is gone, the next lookup finds that.
		return syscall.ENOENT
	}
	if n.ver.entry.IsZero() {
		n.ver = storedVersion(l, node)
	}
	return 0
}

// adoptLocked records that the inode (and c, its open content, if any) stands for
// node, the stored version at l, which holds the same bytes.
func (n *fileNode) adoptLocked(c *content, l loc, node engine.Node) {
	n.ver = storedVersion(l, node)
	if c != nil {
		c.version, c.store, c.path, c.blob = node.Entry, l.store, l.path, node.Blob
	}
}

// contentAttrLocked fills out the attributes of open content c, without reading
// it while it is the inode's version.
func (n *fileNode) contentAttrLocked(c *content, out *fuse.Attr) syscall.Errno {
	if !c.loaded && c.version == n.ver.entry && !c.version.IsZero() {
		n.fsys.setAttr(out, modeFile, n.ver.size, c.mtime.UnixMilli())
		return 0
	}
	if errno := n.loadLocked(c); errno != 0 {
		return errno
	}
	n.attrFromContent(c, out)
	return 0
}

// stale turns the ENOENT of an inode taken off its name into ESTALE, for the
// requests that reach an inode by a path the kernel walked just before (an open
// for writing, truncate(2)): another process's lookup may have given the name a
// new inode (a peer's version) in between, or the key may be gone. On ESTALE the
// kernel looks the name up again and retries the call once, which then finds
// the new inode, or ENOENT.
func stale(errno syscall.Errno) syscall.Errno {
	if errno == syscall.ENOENT {
		return syscall.ESTALE
	}
	return errno
}

// replacedBy reports whether node, stored at l (the inode's place, name in
// parent), is a version from elsewhere, and then takes the inode off the name:
// the name needs a new inode (see fileNode). A file being written keeps its inode
// (the writer's close commits over the change), and the same bytes under another
// entry (the file, or a directory above it, was renamed) are the same file.
//
// The decision and the detaching are one step under the node's lock: an open for
// writing that comes meanwhile waits, then finds the file gone (ENOENT), rather
// than getting an inode whose writes would have no place to go.
func (n *fileNode) replacedBy(parent *gofs.Inode, name string, l loc, node engine.Node) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.supersededLocked(l, node) {
		return false
	}
	if parent.GetChild(name) == n.EmbeddedInode() {
		// Only the lookup that detaches it gives the name the next generation of
		// numbers: lookups racing it then agree on one new inode.
		parent.RmChild(name)
		n.fsys.retire(parent, name)
	}
	return true
}

func (n *fileNode) supersededLocked(l loc, node engine.Node) bool {
	if n.local || n.pending || (n.cur != nil && (n.cur.dirty || n.cur.writers > 0)) {
		return false
	}
	if n.ver.entry.IsZero() || n.ver.entry == node.Entry {
		n.ver = storedVersion(l, node)
		return false
	}
	if node.Kind != engine.OpValue || node.Size != n.ver.size {
		return true
	}
	if len(node.Blob) > 0 && len(n.ver.blob) > 0 {
		// Large values compare by their hashes.
		if !bytes.Equal(node.Blob, n.ver.blob) {
			return true
		}
		n.adoptLocked(n.cur, l, node)
		return false
	}
	c := n.cur
	if c == nil {
		c = n.ver.content()
	}
	if n.loadLocked(c) != 0 {
		return true
	}
	stored, err := l.db.Get(l.store, l.path)
	if err != nil || !c.equal(stored.Value) {
		return true
	}
	n.adoptLocked(n.cur, l, node)
	return false
}

// keepOpen loads the content of an open file about to lose its name (unlink, or
// replaced by a rename), so its descriptors keep reading it.
func (f *FS) keepOpen(parent *gofs.Inode, name string) {
	if ch := parent.GetChild(name); ch != nil {
		if fn, ok := ch.Operations().(*fileNode); ok {
			fn.mu.Lock()
			if fn.cur != nil && fn.passOpen == 0 {
				// (Descriptors passing through read the blob file, which stays.)
				fn.loadLocked(fn.cur)
			}
			fn.mu.Unlock()
		}
	}
}

func (n *fileNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	mode := uint32(modeFile)
	if m, ok := in.GetMode(); ok && !n.isStored() {
		// A file still being created (mkstemp's 0600, then fchmod): the mode cannot
		// be kept, but refusing it breaks rsync and friends. Stored files refuse.
		mode = m
	}
	if errno := n.fsys.checkSetattr(in, mode); errno != 0 {
		return errno
	}
	if sz, ok := in.GetSize(); ok {
		if sz > uint64(n.fsys.opts.MaxValue) {
			return syscall.EFBIG
		}
		n.mu.Lock()
		n.waitSettledLocked()
		if n.passOpen > 0 && (n.cur == nil || !n.cur.kernel) {
			// truncate(2) of a file whose readers read its blob file (a descriptor
			// that could ftruncate would be a writer's, and none is open); to the
			// size it has, it changes nothing.
			if int64(sz) == n.ver.size {
				n.mu.Unlock()
				return n.Getattr(ctx, f, out)
			}
			errno := n.detachForWriterLocked()
			n.mu.Unlock()
			return errno
		}
		c := n.cur
		if h := handleOf(f); h != nil {
			// ftruncate(2) counts as a write. open(O_TRUNC) arrives as a setattr
			// without a file handle: the kernel sends it so (fuse_do_setattr, ATTR_OPEN).
			c = h.c
			h.wrote = true
		}
		if c != nil {
			errno := n.loadLocked(c)
			if errno == 0 {
				errno = c.truncate(n.fsys, int64(sz))
				n.kernelVersion = engine.ID{}
			}
			// truncate(2) while only readers have the file open: nobody's close
			// will commit it, so it is committed now, as it returns.
			commitNow := f == nil && c.writers == 0
			n.mu.Unlock()
			if errno != 0 {
				return errno
			}
			if commitNow {
				if errno := n.commitContent(c, engine.Journal, false); errno != 0 {
					return errno
				}
			}
		} else {
			n.mu.Unlock()
			// truncate(2) on a file nobody has open: commit at once, as it returns.
			l, errno := n.fsys.locate(n.EmbeddedInode())
			if errno != 0 {
				return stale(errno)
			}
			if errno := n.fsys.writable(l); errno != 0 {
				return errno
			}
			st, err := l.db.Stat(l.store, l.path)
			if err != nil {
				return toErrno(err)
			}
			if int64(sz) != st.Size {
				if errno := n.truncateStored(l, st, int64(sz)); errno != 0 {
					return errno
				}
			}
		}
	}
	return n.Getattr(ctx, f, out)
}

// truncateStored commits the stored version st at l cut or extended to sz.
func (n *fileNode) truncateStored(l loc, st engine.Node, sz int64) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := storedVersion(l, st).content()
	defer c.close()
	if errno := n.loadLocked(c); errno != 0 {
		return errno
	}
	if errno := c.truncate(n.fsys, sz); errno != 0 {
		return errno
	}
	id, errno := n.fsys.commitEntry(l.db, engine.Journal, func(tx *engine.Tx) { c.setValue(tx, l.store, l.path) })
	if errno != 0 {
		return errno
	}
	n.committedLocked(c, id, l)
	return 0
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	write := flags&syscall.O_ACCMODE != syscall.O_RDONLY
	if !write && flags&syscall.O_TRUNC != 0 {
		// O_RDONLY|O_TRUNC cuts the file on Linux too. With atomic O_TRUNC (see
		// Mount) it comes here rather than as a SETATTR: done as that would be,
		// committed at once (no writer's close will), before the open.
		var out fuse.AttrOut
		if errno := n.Setattr(ctx, nil, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: fuse.FATTR_SIZE}}, &out); errno != 0 {
			return nil, 0, errno
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if write {
		n.waitSettledLocked()
	} else {
		n.awaitClosingWritersLocked()
	}
	if write && n.passOpen > 0 && (n.cur == nil || !n.cur.kernel) {
		// Readers read this version's blob file directly, and the kernel would
		// give every later open of the inode that file too: a writer gets a new
		// inode for the name (see detachForWriterLocked), as `sed -i` gives one;
		// those readers go on reading the version they opened.
		return nil, 0, n.detachForWriterLocked()
	}
	if !n.local && (write || n.cur == nil) {
		l, errno := n.fsys.locate(n.EmbeddedInode())
		switch {
		case errno == 0:
			if write {
				if errno := n.fsys.writable(l); errno != 0 {
					return nil, 0, errno
				}
			}
			if n.cur == nil {
				if write || n.ver.entry.IsZero() {
					if errno := n.checkStoredLocked(l); errno != 0 {
						return nil, 0, errno
					}
				}
				// The inode's version, also when a newer one has just come from
				// elsewhere (the kernel has this one's size); a reader of a known
				// version needs no store read.
				n.cur = n.ver.content()
			}
		case errno == syscall.ENOENT && !write && (n.cur != nil || !n.ver.entry.IsZero()):
			// Renamed over, or replaced by a peer's version, between the kernel's
			// lookup and this open: as on a local disk, a reader gets the file the
			// name had then. A writer gets ENOENT, not a file whose writes would go
			// nowhere; it opens the name again.
			if n.cur == nil {
				n.cur = n.ver.content()
			}
		case errno == syscall.ENOENT && write:
			// A writer gets the name's new inode (stale), or, if the name is
			// gone, ENOENT or a new file (O_CREAT), as on a local disk.
			return nil, 0, stale(errno)
		default:
			return nil, 0, errno
		}
	}
	c := n.cur
	// A writer alone on a stored file passes its writes through too (see
	// Options.PassWrites), unless the file was just taken off its name for a
	// writer that met readers passing through (noPassUntil).
	passWrite := write && n.fsys.PassWrites() && !c.kernel && c.refs == 0 &&
		n.passOpen == 0 && n.cacheOpen == 0 && !n.local && !n.pending && !c.dirty &&
		!time.Now().Before(n.noPassUntil) && n.fsys.releasing.Load() == 0
	if write && flags&syscall.O_TRUNC != 0 {
		if !c.loaded {
			// The version's bytes were never read: all of them are cut.
			c.loaded, c.data, c.dirty, c.mtime = true, nil, true, nowMs()
		} else if errno := c.truncate(n.fsys, 0); errno != 0 {
			return nil, 0, errno
		}
	}
	if passWrite {
		if errno := n.kernelWritesLocked(c); errno != 0 {
			return nil, 0, errno
		}
	}
	c.refs++
	if write {
		c.writers++
	}
	n.fsys.track(n, true)
	h := &handle{c: c, append: flags&syscall.O_APPEND != 0, write: write}
	if c.kernel {
		c.refresh()
		h.stamp = c.stamp
	}
	if (!write || c.kernel) && (n.passOpen > 0 || n.passableLocked(c)) {
		// go-fuse uses fd only when the inode has no backing file registered yet;
		// the first reader passing through opened c.file.
		fd := -1
		switch {
		case c.kernel:
			fd = int(c.spill.Fd())
		case c.file != nil:
			fd = int(c.file.Fd())
		}
		ph := &passHandle{handle: h, fd: fd}
		n.countLocked(ph, 1)
		return ph, noFlush(write), 0
	}
	fuseFlags := noFlush(write) | n.bypassLocked(h, flags)
	n.countLocked(h, 1)
	if !c.dirty && !n.local && !n.pending && !c.version.IsZero() {
		if c.version == n.kernelVersion {
			fuseFlags |= fuse.FOPEN_KEEP_CACHE
		}
		n.kernelVersion = c.version
	} else {
		n.kernelVersion = engine.ID{}
	}
	return h, fuseFlags, 0
}

// kernelWritesLocked makes c, about to be opened by its only writer, a file the
// kernel writes (see dirNode.Create): its bytes move to a spill file of its own.
// Where there is no spill file to be had (blobs in memory), c stays as it is.
func (n *fileNode) kernelWritesLocked(c *content) syscall.Errno {
	if errno := n.loadLocked(c); errno != 0 {
		return errno
	}
	if errno := c.unshare(n.fsys); errno != 0 { // a spill file that became a blob
		return errno
	}
	if c.spill == nil {
		sp, err := n.fsys.spillFile()
		if err != nil || sp == nil {
			return toErrno(err)
		}
		if _, err := sp.WriteAt(c.data, 0); err != nil {
			sp.Close()
			return toErrno(err)
		}
		c.spill, c.size, c.data = sp, int64(len(c.data)), nil
	}
	if c.sum != nil {
		c.sum.wait()
		c.sum = nil // the kernel's writes are not hashed as they come
	}
	c.kernel = true
	dirty, mtime := c.dirty, c.mtime
	c.refresh() // (copying the bytes is no write)
	c.dirty, c.mtime = dirty, mtime
	// The inode's pages in the kernel are not what the kernel will write: an open
	// through the page cache must drop them (no FOPEN_KEEP_CACHE).
	n.kernelVersion = engine.ID{}
	return 0
}

// closingWait bounds how long a reader's open waits for the release of writers
// that have just closed a large file (awaitClosingWritersLocked).
const closingWait = 5 * time.Millisecond

// awaitClosingWritersLocked lets the release of writers that have closed a large
// file (its bytes are committed) arrive before a reader opens it. The kernel
// sends the release after close(2) returns, and the open of `cp big f; cat f`
// often came first (1 run in 20 of fs TestLargeReadsPassThrough): with a
// writer still counted the reader cannot pass through (a write would not reach
// it), and with that writer bypassing the page cache its reads all went through
// the mount. A writer that keeps the file open (a dup) costs such an open
// closingWait.
func (n *fileNode) awaitClosingWritersLocked() {
	deadline := time.Now().Add(closingWait)
	for {
		c := n.cur
		if c == nil || c.writers == 0 || c.dirty || c.kernel || c.length() <= spillMin ||
			!n.fsys.passthrough.Load() || !time.Now().Before(deadline) {
			return
		}
		n.mu.Unlock()
		time.Sleep(100 * time.Microsecond)
		n.mu.Lock()
	}
}

// noFlush spares a reader's close(2) its FLUSH request (FOPEN_NOFLUSH): a
// reader's close commits nothing (see Flush), and `grep -r` or `cat` of many
// small files paid a round trip per file for it.
func noFlush(write bool) uint32 {
	if write {
		return 0
	}
	return fuse.FOPEN_NOFLUSH
}

// directLocked reports whether an open with flags, not passing through, should
// bypass the page cache (FOPEN_DIRECT_IO).
//
// A write-only descriptor does when no other descriptor of the inode uses the
// page cache: its writes then reach this process without being copied into the
// inode's pages first, which made a large file's write a third slower, and the
// pages never hold a second copy of the file (a reader right after the close
// reads the blob file). Such a descriptor cannot be mapped (mmap needs read
// access).
//
// While one is open, every other open of the inode bypasses the page cache too,
// so that read(2) never meets a page from before a write: the kernel drops the
// written range's pages before it sends a direct write, but a read between that
// and the write's reply would cache the old bytes again (or zeros past the old
// end). Those descriptors can still be mapped (DIRECT_IO_ALLOW_MMAP, Linux 6.6
// and later: directWrites is off on older kernels); a mapping is served from the
// page cache, so each direct write drops the range again once it is done
// (dropPagesAfter).
func (n *fileNode) directLocked(flags uint32) bool {
	if !n.fsys.directWrites.Load() {
		return false
	}
	if n.dioOpen > 0 {
		return true
	}
	return flags&syscall.O_ACCMODE == syscall.O_WRONLY && n.cacheOpen == 0
}

// bypassLocked decides, for h opened with flags and not passing through,
// whether it bypasses the page cache (directLocked), and returns the open flag
// that says so to the kernel.
func (n *fileNode) bypassLocked(h *handle, flags uint32) uint32 {
	if !n.directLocked(flags) {
		return 0
	}
	h.direct, h.read = true, flags&syscall.O_ACCMODE != syscall.O_WRONLY
	return fuse.FOPEN_DIRECT_IO
}

// countLocked adds d (1 at an open or create, -1 at its release) to the count of
// the inode's descriptors in f's mode (see passOpen).
func (n *fileNode) countLocked(f gofs.FileHandle, d int) {
	if h := handleOf(f); h != nil && h.write {
		n.writeOpen += d
		if d > 0 {
			n.pinLocked()
		}
	}
	if _, ok := f.(*passHandle); ok {
		n.passOpen += d
		return
	}
	n.cacheOpen += d
	if h := handleOf(f); h != nil && h.direct {
		n.dioOpen += d
		if h.read {
			n.dioReaders += d
		}
	}
}

// passQuiet is how long an inode made for a writer that met readers passing
// through keeps its readers in the page cache's mode after its last close.
const passQuiet = time.Second

// passableLocked reports whether readers of c may read its blob file directly
// (FUSE passthrough; see passHandle): c is a stored version kept as a blob,
// nothing wrote to it, no descriptor of the inode is in the page cache's mode,
// and no release is under way (statfsFS.Release). It opens the blob file
// (c.file) for that.
func (n *fileNode) passableLocked(c *content) bool {
	if c.kernel {
		// Written here through passthrough and not a blob yet: read the spill file.
		return n.fsys.passthrough.Load() && n.cacheOpen == 0 && n.fsys.releasing.Load() == 0
	}
	if len(c.blob) == 0 || !n.fsys.passthrough.Load() || n.cacheOpen > 0 || n.local || n.pending ||
		c.dirty || c.writers > 0 || time.Now().Before(n.noPassUntil) || n.fsys.releasing.Load() > 0 {
		return false
	}
	return c.openBlob(n.fsys)
}

// detachForWriterLocked takes a file that passes reads through off its name for a
// writer, and returns ESTALE: the kernel looks the name up again, which gives it
// a new inode, and retries the call once. The new inode's readers stay in the
// page cache's mode while it is in use and for passQuiet after (noPassUntil), so
// that retry, nor another writer's, meets readers passing through again: a file
// written while it is being read is read through the mount until it has been
// left alone a moment. A file only here (an editor's backup) has nothing to give
// a new inode from: its writer gets ETXTBSY, as a running program's file would.
func (n *fileNode) detachForWriterLocked() syscall.Errno {
	if n.local || n.pending {
		return syscall.ETXTBSY
	}
	name, parent := n.Parent()
	if parent == nil || parent.GetChild(name) != n.EmbeddedInode() {
		return syscall.ESTALE // off its name already: the lookup finds the name's file
	}
	parent.RmChild(name)
	n.fsys.retireForWriter(parent, name)
	return syscall.ESTALE
}

func (n *fileNode) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h := handleOf(f)
	n.mu.Lock()
	defer n.mu.Unlock()
	// A file the kernel writes may have grown since this process last looked
	// (a reader not passing through reads it here while writers pass through).
	h.c.refresh()
	if !h.c.loaded && len(h.c.blob) > 0 {
		if k, ok := h.c.readBlob(n.fsys, dest, off); ok {
			return fuse.ReadResultData(dest[:k]), 0
		}
	}
	if errno := n.loadLocked(h.c); errno != 0 {
		return nil, errno
	}
	k, err := h.c.readAt(dest, off)
	if err != nil {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

func (n *fileNode) Write(ctx context.Context, f gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h := handleOf(f)
	n.mu.Lock()
	defer n.mu.Unlock()
	c := h.c
	c.refresh() // (as in Read)
	if errno := n.loadLocked(c); errno != 0 {
		return 0, errno
	}
	n.kernelVersion = engine.ID{}
	if h.direct {
		c.direct = true
	}
	if h.append {
		off = c.length()
	}
	end := off + int64(len(data))
	if end > int64(n.fsys.opts.MaxValue) {
		return 0, syscall.EFBIG
	}
	if errno := c.writeAt(n.fsys, data, off); errno != 0 {
		return 0, errno
	}
	if h.direct && n.dioOpen > 1 {
		n.dropPagesAfter(off, len(data)) // another descriptor may be mapped
	}
	c.dirty = true
	c.mtime = nowMs()
	h.wrote = true
	return uint32(len(data)), 0
}

// dropPagesAfter drops the kernel's pages of n's bytes [off, off+size) on a
// goroutine of its own (the kernel waits for the handler calling it): a mapping
// that read them between the kernel's drop before a direct write and the
// write's reply would otherwise keep the old bytes (see directLocked).
func (n *fileNode) dropPagesAfter(off int64, size int) {
	in := n.EmbeddedInode()
	go func() {
		select {
		case <-n.fsys.done:
		default:
			in.NotifyContent(off, int64(size))
		}
	}()
}

// Flush runs on every close(2) of a descriptor. It commits what was written, so a
// closed file survives the process being killed. The first close of a file that
// nothing was written to yet does not commit: the shell's `echo x > f` opens
// (truncating), dups and closes the first descriptor before writing, and that must
// not commit an empty file first. A later close commits (`: > f` and `touch` close
// twice too); a file closed once without a write commits at release, milliseconds
// later.
//
// A large file whose writes pass through is parked rather than committed
// (engine.Database.Park): that survives a kill -9 as a commit does, without
// hashing the bytes first. Its commit follows the last writer's release (settle).
func (n *fileNode) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	h := handleOf(f)
	if !h.write {
		// A reader's close commits nothing, not even what a writer sharing the
		// content has written so far: that writer's close commits it.
		return 0
	}
	// Flushes of one descriptor may come at once: a process that forks while
	// it has the file open closes it in the child too (at exec, or exit).
	n.mu.Lock()
	h.flushes++
	if h.c.kernel {
		h.c.refresh()
		h.wrote = h.wrote || h.c.stamp != h.stamp
	}
	first := !h.wrote && h.flushes == 1
	n.mu.Unlock()
	if first {
		return 0
	}
	return n.commitContent(h.c, engine.Journal, true)
}

// Fsync commits what was written and makes it durable, with everything committed
// before: also content a close committed already (write, close, open, fsync).
func (n *fileNode) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	if h := handleOf(f); h != nil {
		if errno := n.commitContent(h.c, engine.Journal, false); errno != 0 {
			return errno
		}
	}
	return toErrno(n.fsys.inst.SyncJournal())
}

func (n *fileNode) Release(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	h := handleOf(f)
	n.mu.Lock()
	kernel := h.c.kernel
	n.mu.Unlock()
	if h.write && !kernel {
		n.commitContent(h.c, engine.Journal, false) // creations and truncations without writes
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.countLocked(f, -1)
	if !n.noPassUntil.IsZero() {
		n.noPassUntil = time.Now().Add(passQuiet)
	}
	h.c.refs--
	if h.write {
		h.c.writers--
		if h.c.kernel && h.c.writers == 0 {
			n.lastWriterGoneLocked(h.c)
		}
	}
	n.releasedLocked(h.c)
	return 0
}

// waitSettledLocked returns once the file is not being committed after its last
// writer's close (settleLocked): a writer or a truncate(2) waits for that (the
// bytes are being hashed), then changes what was committed.
func (n *fileNode) waitSettledLocked() {
	for n.cur != nil && n.cur.settled != nil {
		settled := n.cur.settled
		n.mu.Unlock()
		<-settled
		n.mu.Lock()
	}
}

// releasedLocked lets go of content c if no descriptor has it and it holds
// nothing uncommitted.
func (n *fileNode) releasedLocked(c *content) {
	defer n.unpinLocked()
	if c.refs > 0 || c.settled != nil || c.watching {
		return
	}
	if c == n.cur && !c.dirty && !n.local && !n.pending {
		n.storeKernelWrittenLocked(c)
		n.cur = nil
		n.fsys.track(n, false)
	}
	if c != n.cur {
		n.fsys.recycle(c)
		c.close() // no handle has it, and no open will find it
	}
}

// lastWriterGoneLocked follows the release of the last writer of c, a file the
// kernel writes: c is committed (settleLocked). While another open file may
// still write its spill file (the kernel's backing file under a shared mapping
// made through a writer, released before the mapping is gone; othersWrite also
// counts a reader's), the commit copies the bytes, and c is watched until no
// other file has it open, then committed again if the bytes changed, whatever
// their change time says (a write through a mapping changes it only at the
// first write to each page).
func (n *fileNode) lastWriterGoneLocked(c *content) {
	if c.spill == nil || !othersWriteAfterRelease(c) {
		n.settleLocked(c)
		return
	}
	if c.watching {
		return
	}
	c.watching = true
	n.committing++
	n.settleLocked(c)
	go n.watch(c)
}

// releaseLag bounds how long othersWriteAfterRelease waits for the kernel to
// put the backing file of a descriptor it has just released.
const releaseLag = 2 * time.Millisecond

// othersWriteAfterRelease is othersWrite for c's spill file at the release of
// c's last writer. The kernel sends the release of a passed-through descriptor
// before it puts the descriptor's backing file (a task work of the closing
// process), so right then the lease may still be refused for a file nobody has
// open: a third of the small files created in a row were, and each was watched
// and committed twice, a large one copied first. With no descriptor of c left,
// a refusal is asked again for up to releaseLag; a mapping that outlives its
// descriptor goes on refusing.
func othersWriteAfterRelease(c *content) bool {
	if !othersWrite(c.spill) {
		return false
	}
	if c.refs > 0 {
		return true
	}
	for end := time.Now().Add(releaseLag); time.Now().Before(end); {
		time.Sleep(20 * time.Microsecond)
		if !othersWrite(c.spill) {
			return false
		}
	}
	return true
}

// watch polls, 20 ms doubling to 1 s, until no other file has c's spill file
// open, then commits c again (see lastWriterGoneLocked). A writer that opens c
// meanwhile commits it at its own release; an unmount committed it already.
func (n *fileNode) watch(c *content) {
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		unmounted := false
		select {
		case <-n.fsys.done:
			unmounted = true
		case <-time.After(wait):
		}
		n.mu.Lock()
		reopened := c.spill == nil || c.writers > 0
		if !unmounted && !reopened && (c.settled != nil || othersWrite(c.spill)) {
			n.mu.Unlock()
			continue
		}
		c.watching = false
		n.committing--
		c.dirty = true // what a mapping wrote changed no time the mount can trust
		if !unmounted && !reopened {
			n.settleLocked(c)
		}
		n.releasedLocked(c)
		n.mu.Unlock()
		return
	}
}

// settleLocked commits what the kernel wrote to c's spill file, now that its
// last writer is closed, on a goroutine of its own: nothing can write the bytes
// any more, so they are hashed without the lock (appendHasher) while readers
// opening meanwhile read the file directly, and the release returns at once (a
// long one would keep readers off passthrough; see statfsFS.Release).
func (n *fileNode) settleLocked(c *content) {
	c.refresh()
	if !c.dirty || n.local || c.settled != nil {
		return
	}
	done := make(chan struct{})
	c.settled = done
	n.committing++
	if c.spill != nil && c.length() > spillMin {
		// A hash from an earlier settle is of bytes the kernel may have changed.
		if c.sum != nil {
			c.sum.wait()
		}
		c.sum = newAppendHasher(nil)
		c.sum.extend(c.spill, c.size)
	}
	sum := c.sum
	go func() {
		if sum != nil {
			sum.wait()
		}
		n.commitContent(c, engine.Journal, false)
		n.mu.Lock()
		c.settled = nil
		n.committing--
		close(done)
		n.releasedLocked(c)
		n.mu.Unlock()
	}()
}

// flush commits the node's current content (unmount, FlushAll).
func (n *fileNode) flush(d engine.Durability) {
	n.mu.Lock()
	c := n.cur
	n.mu.Unlock()
	if c != nil {
		n.commitContent(c, d, false)
	}
}

// commitContent commits c as the key's value if it was written and differs from
// what the database holds. The node lock is held throughout, so writes through
// other handles wait for the commit rather than race it. With park, a large file
// the kernel writes to is parked instead, while it has writers (see Flush).
func (n *fileNode) commitContent(c *content, d engine.Durability, park bool) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	c.refresh()
	if n.local || !c.dirty {
		return 0
	}
	l, errno := n.fsys.locate(n.EmbeddedInode())
	if errno == syscall.ENOENT {
		// Unlinked while open: its data goes with it, as on a local disk.
		c.dirty, n.pending = false, false
		n.fsys.dropPark(c)
		return 0
	} else if errno != 0 {
		return errno
	}
	if c.kernel && c.length() > int64(n.fsys.opts.MaxValue) {
		// The kernel wrote past the value limit (its writes do not reach the mount
		// to be refused, see Options.PassWrites): the file cannot be committed,
		// and its close says so. Once its writers are gone it is given up.
		if c.writers == 0 {
			c.dirty, n.pending = false, false
			n.fsys.dropPark(c)
			slog.Warn("file not committed: larger than max_value (its close failed with EFBIG)",
				"path", n.EmbeddedInode().Path(nil), "size", c.length(), "max_value", n.fsys.opts.MaxValue)
			go n.forgetRefused()
		}
		return syscall.EFBIG
	}
	if park && c.kernel && c.writers > 0 && c.length() > spillMin {
		if c.park != 0 {
			return 0
		}
		n.fsys.unhide(l)
		seq, err := l.db.Park(l.store, l.path, c.spill, c.mtime, originFS)
		if err == nil {
			c.park, c.named = seq, true
			return 0
		}
		if !errors.Is(err, engine.ErrNoPark) {
			return toErrno(err)
		}
	}
	if node, same := n.fsys.storedEqual(l, c); same {
		// The key holds these bytes already (the same write came from elsewhere,
		// or the file was written back unchanged): no commit, and the inode
		// stands for that version.
		c.dirty, n.pending = false, false
		n.fsys.dropPark(c)
		n.adoptLocked(c, l, node)
		return 0
	}
	n.fsys.unhide(l)
	id, errno := n.fsys.commitEntry(l.db, d, func(tx *engine.Tx) {
		c.setValue(tx, l.store, l.path)
		tx.SetTime(c.mtime) // a file's mtime is when it was last written
	})
	if errno != 0 {
		return errno
	}
	n.committedLocked(c, id, l)
	if n.cur == c && (!c.direct || n.storeInKernelLocked(c)) {
		// The kernel's pages of this inode hold what was written through it (what
		// the writes did not fill, it reads from c): the version just committed.
		// Reopening it keeps them, as rereading a file just written does on a disk.
		n.kernelVersion = id
	}
	return 0
}

// storeInKernelLocked hands the kernel the pages of small content c, written
// past the page cache (handle.direct), and reports whether it took them: a
// reader right after the close then reads them from the page cache, as after
// writes through it (small files created by cp or `>` read back 10–15 % slower
// without). Only while every open descriptor of the inode is write-only and
// bypasses the page cache: a READ of a page the kernel locked to store it
// (a reader, a mapping) would wait for this lock forever, and a write through
// the page cache could meet the stored page before it lands.
func (n *fileNode) storeInKernelLocked(c *content) bool {
	if c.spill != nil || len(c.data) == 0 || n.passOpen > 0 || n.cacheOpen != n.dioOpen || n.dioReaders > 0 {
		return false
	}
	return n.EmbeddedInode().WriteCache(0, c.data) == 0
}

// forgetRefused drops what the kernel caches of a file it wrote past max_value
// (the size its writes gave the inode, the name of a file never stored), so the
// name shows what the store holds at once. Its own goroutine, holding no lock.
func (n *fileNode) forgetRefused() {
	in := n.EmbeddedInode()
	in.NotifyContent(0, 0)
	if name, parent := in.Parent(); parent != nil {
		parent.NotifyEntry(name)
	}
}

// storeKernelWrittenLocked hands the kernel the pages of small content c that
// the kernel wrote to its spill file (passed writes), as storeInKernelLocked
// does for writes past the page cache, once no descriptor has c: the writes
// filled the spill file's pages, not the inode's, and reading the file right
// after it was written would otherwise be a READ round trip per file.
func (n *fileNode) storeKernelWrittenLocked(c *content) {
	if !c.kernel || c.spill == nil || c.size == 0 || c.size > spillMin || c.refs > 0 ||
		c.version.IsZero() || c.version != n.kernelVersion || n.passOpen+n.cacheOpen > 0 {
		return
	}
	b := make([]byte, c.size)
	if k, _ := c.spill.ReadAt(b, 0); k == len(b) {
		n.EmbeddedInode().WriteCache(0, b)
	}
}

// committedLocked records that entry id stored content c at l: the inode now
// stands for that version.
func (n *fileNode) committedLocked(c *content, id engine.ID, l loc) {
	c.dirty, n.pending, c.park = false, false, 0
	c.version, c.store, c.path, c.blob = id, l.store, l.path, nil
	n.ver = version{entry: id, store: l.store, path: l.path, size: c.length(), mtime: c.mtime}
	if c.length() > engine.BlobMin {
		if st, err := l.db.Stat(l.store, l.path); err == nil && st.Entry == id {
			n.ver.blob, c.blob = st.Blob, st.Blob
		}
	}
}

// maxSpares is how many spill files of small files created here are kept for
// the next ones (FS.recycle).
const maxSpares = 32

// spillFile returns a spill file for a file created here: one a small file used
// before, emptied, or a new one. Making a file costs an inode on the data disk
// (~100 µs where the disk is busy, half a small file's creation); emptying one
// costs ~2 µs.
func (f *FS) spillFile() (*os.File, error) {
	f.spareMu.Lock()
	if k := len(f.spares); k > 0 {
		sp := f.spares[k-1]
		f.spares = f.spares[:k-1]
		f.spareMu.Unlock()
		return sp, nil
	}
	f.spareMu.Unlock()
	return f.inst.SpillFile()
}

// recycle keeps c's spill file for the next file created here (spillFile), if
// nothing else can see it any more: c was written by the kernel and stayed
// small (its bytes were copied into the store, the file never became a blob
// and never had a name), and no other file is open on it (othersWrite: a
// reader's or a writer's mapping would show the next file's bytes).
func (f *FS) recycle(c *content) {
	sp := c.spill
	if !c.kernel || sp == nil || c.named || c.shared || c.size > spillMin || othersWrite(sp) {
		return
	}
	f.spareMu.Lock()
	defer f.spareMu.Unlock()
	if len(f.spares) >= maxSpares || sp.Truncate(0) != nil {
		return
	}
	f.spares = append(f.spares, sp)
	c.spill = nil // not closed with c
}

// dropPark forgets c's parked bytes: they are not to be committed (the file was
// removed, or the key holds them already).
func (f *FS) dropPark(c *content) {
	if c != nil && c.park != 0 {
		f.inst.DropPark(c.park)
		c.park = 0
	}
}

func (f *FS) track(n *fileNode, open bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if open {
		f.open[n] = true
	} else {
		delete(f.open, n)
	}
}

// linkNode is a symbolic link stored as a link value.
type linkNode struct {
	gofs.Inode
	fsys *FS
}

var _ = (gofs.NodeReadlinker)((*linkNode)(nil))

func (n *linkNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	l, errno := n.fsys.locate(n.EmbeddedInode())
	if errno != 0 {
		return nil, errno
	}
	node, err := l.db.Get(l.store, l.path)
	if err != nil {
		return nil, toErrno(err)
	}
	return node.Value, 0
}

func (n *linkNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l, errno := n.fsys.locate(n.EmbeddedInode())
	if errno != 0 {
		return errno
	}
	return n.fsys.attrAt(l, modeLink, out)
}

func (n *linkNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := n.fsys.checkSetattr(in, modeLink); errno != 0 {
		return errno
	}
	return n.Getattr(ctx, f, out)
}

// Extended attributes: every stored key shows, read-only, who last wrote it
// (user.eidefs.entry, .author, .height, .time; `getfattr -d` lists them). Other
// attributes are not stored: reads find none, writes are not supported, which tools
// such as sed -i and cp -a treat as "no ACLs here".
func (n *fileNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if !slices.Contains(xattrNames, attr) {
		// ls -l asks every file for ACLs and security labels: answer without
		// reading the store.
		return 0, syscall.ENODATA
	}
	v, ok := n.fsys.keyXattrs(n.EmbeddedInode())[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (n *fileNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}

func (n *fileNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.ENOTSUP
}

func (n *fileNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var list []byte
	attrs := n.fsys.keyXattrs(n.EmbeddedInode()) // one stat, not one per name
	for _, name := range xattrNames {
		if _, ok := attrs[name]; ok {
			list = append(append(list, name...), 0)
		}
	}
	if len(dest) < len(list) {
		return uint32(len(list)), syscall.ERANGE
	}
	return uint32(copy(dest, list)), 0
}

var xattrNames = []string{"user.eidefs.entry", "user.eidefs.author", "user.eidefs.height", "user.eidefs.time"}

// keyXattrs are the user.eidefs.* attributes of a stored key (none for files only
// in memory).
func (f *FS) keyXattrs(in *gofs.Inode) map[string]string {
	l, errno := f.locate(in)
	if errno != 0 {
		return nil
	}
	n, err := l.db.Stat(l.store, l.path)
	if err != nil {
		return nil
	}
	return map[string]string{
		"user.eidefs.entry":  n.Entry.String(),
		"user.eidefs.author": n.Author.String(),
		"user.eidefs.height": strconv.FormatUint(n.Height, 10),
		"user.eidefs.time":   time.UnixMilli(n.Time).UTC().Format(time.RFC3339Nano),
	}
}

// storedEqual reports whether the key at l holds exactly c's bytes (so a commit
// would change nothing), and if so the stored version. Sizes are compared first,
// from the path record alone.
func (f *FS) storedEqual(l loc, c *content) (engine.Node, bool) {
	if f.isHidden(l) {
		return engine.Node{}, false
	}
	st, err := l.db.Stat(l.store, l.path)
	if err != nil || st.Kind != engine.OpValue || st.Size != c.length() {
		return engine.Node{}, false
	}
	if p := f.inst.BlobPath(st.Blob); p != "" {
		return st, c.equalFile(p)
	}
	cur, err := l.db.Get(l.store, l.path)
	return cur, err == nil && cur.Kind == engine.OpValue && c.equal(cur.Value)
}

// nowMs is the time at the millisecond resolution entries keep, so a file's mtime
// reads the same before and after its commit.
func nowMs() time.Time { return time.Now().Truncate(time.Millisecond) }
