package fs

import (
	"context"
	"slices"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// dirNode is a store (empty path) or a nested map inside one.
type dirNode struct {
	gofs.Inode
	fsys *FS
}

var (
	_ = (gofs.NodeLookuper)((*dirNode)(nil))
	_ = (gofs.NodeReaddirer)((*dirNode)(nil))
	_ = (gofs.NodeMkdirer)((*dirNode)(nil))
	_ = (gofs.NodeCreater)((*dirNode)(nil))
	_ = (gofs.NodeUnlinker)((*dirNode)(nil))
	_ = (gofs.NodeRmdirer)((*dirNode)(nil))
	_ = (gofs.NodeRenamer)((*dirNode)(nil))
	_ = (gofs.NodeSymlinker)((*dirNode)(nil))
	_ = (gofs.NodeLinker)((*dirNode)(nil))
	_ = (gofs.NodeMknoder)((*dirNode)(nil))
	_ = (gofs.NodeGetattrer)((*dirNode)(nil))
	_ = (gofs.NodeSetattrer)((*dirNode)(nil))
)

// lockedOverlayChild returns the in-memory (local-only, created and not yet
// committed, or written and not yet flushed) file called name in parent, if any,
// with its lock held: as soon as the lock is let go, a flush may commit it and a
// close drop its content.
func lockedOverlayChild(parent *gofs.Inode, name string) (*gofs.Inode, *fileNode) {
	ch := parent.GetChild(name)
	if ch == nil {
		return nil, nil
	}
	fn, ok := ch.Operations().(*fileNode)
	if !ok {
		return nil, nil
	}
	fn.mu.Lock()
	if fn.inMemoryLocked() {
		return ch, fn
	}
	fn.mu.Unlock()
	return nil, nil
}

// inOverlay reports whether name in parent is an in-memory file at this moment.
func inOverlay(parent *gofs.Inode, name string) bool {
	ch, fn := lockedOverlayChild(parent, name)
	if ch != nil {
		fn.mu.Unlock()
	}
	return ch != nil
}

// newChild makes (or finds) the inode for a stored node and fills out its attributes.
func (f *FS) newChild(ctx context.Context, parent *gofs.Inode, l loc, n engine.Node, out *fuse.EntryOut) *gofs.Inode {
	var ops gofs.InodeEmbedder
	var st gofs.StableAttr
	name := l.store
	if len(l.path) > 0 {
		name = l.path[len(l.path)-1]
	}
	var kind byte
	switch n.Kind {
	case engine.OpMap:
		ops, st, kind = &dirNode{fsys: f}, gofs.StableAttr{Mode: syscall.S_IFDIR}, 'd'
		f.setAttr(&out.Attr, modeDir, 0, n.Time)
	case engine.OpLink:
		ops, st, kind = &linkNode{fsys: f}, gofs.StableAttr{Mode: syscall.S_IFLNK}, 'l'
		f.setAttr(&out.Attr, modeLink, n.Size, n.Time)
	default:
		ops, st, kind = &fileNode{fsys: f}, gofs.StableAttr{Mode: syscall.S_IFREG}, 'f'
		f.setAttr(&out.Attr, modeFile, n.Size, n.Time)
	}
	ch := parent.GetChild(name)
	if ch != nil && ch.StableAttr().Mode != st.Mode {
		// The name changed kind (a peer made a directory of a file, or the
		// reverse): a new inode, as on a disk, never one it had before.
		f.retire(parent, name)
	}
	st.Ino = f.childIno(parent, name, kind)
	if ch != nil && ch.StableAttr().Mode == st.Mode {
		if fn, ok := ch.Operations().(*fileNode); ok && fn.replacedBy(parent, name, l, n) {
			// A version from elsewhere: the name becomes a new file (a new inode
			// and number), as after `mv new name`; see fileNode. A racing lookup
			// may have put it there already.
			st.Ino = f.childIno(parent, name, kind)
			if now := parent.GetChild(name); now == ch {
				ch = nil
			} else {
				ch = now
			}
		}
	}
	if ch == nil || ch.StableAttr().Mode != st.Mode {
		// The node already here (say, one that was renamed here and still carries
		// its old number) is the one the kernel and open files know: keep it.
		if fn, ok := ops.(*fileNode); ok {
			if f.refusesPass(parent, name, st.Ino) {
				fn.noPassUntil = time.Now().Add(passQuiet)
			}
		}
		ch = parent.NewInode(ctx, ops, st)
	}
	if fn, ok := ch.Operations().(*fileNode); ok {
		fn.mu.Lock()
		if fn.ver.entry.IsZero() && !fn.local && !fn.pending {
			fn.ver = storedVersion(l, n)
		}
		if fn.cur != nil {
			if errno := fn.contentAttrLocked(fn.cur, &out.Attr); errno != 0 {
				f.setAttr(&out.Attr, modeFile, n.Size, n.Time)
			}
		} else {
			f.setAttr(&out.Attr, modeFile, fn.ver.size, fn.ver.mtime.UnixMilli())
		}
		fn.mu.Unlock()
	}
	return ch
}

func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	start := d.fsys.lookupFrom()
	defer d.fsys.recheckLookup(start, d.EmbeddedInode(), name)
	if len(name) > engine.MaxNameLen {
		return nil, syscall.ENAMETOOLONG
	}
	if ch, fn := lockedOverlayChild(d.EmbeddedInode(), name); ch != nil {
		fn.attrFromContent(fn.cur, &out.Attr)
		fn.mu.Unlock()
		return ch, 0
	}
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno != 0 {
		return nil, errno
	}
	cl := l.child(name)
	if name == ".sync" || d.fsys.isHidden(cl) {
		return nil, syscall.ENOENT
	}
	n, err := cl.db.Stat(cl.store, cl.path)
	if err != nil {
		return nil, toErrno(err)
	}
	return d.fsys.newChild(ctx, d.EmbeddedInode(), cl, n, out), 0
}

func (d *dirNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno != 0 {
		return nil, errno
	}
	// Files only in memory are collected before the stored listing: one whose
	// commit lands in between is then in one list or the other, never in neither.
	overlay := map[string]*gofs.Inode{}
	for name, ch := range d.Children() {
		if fn, ok := ch.Operations().(*fileNode); ok && fn.inMemory() {
			overlay[name] = ch
		}
	}
	names := make([]string, 0, len(overlay))
	for name := range overlay {
		names = append(names, name)
	}
	slices.Sort(names)
	ds := &dirStream{d: d, l: l, overlay: overlay, overlayNames: names, unlisted: names}
	ds.fill() // the first page now, so a directory that is gone fails opendir
	if ds.errno != 0 {
		return nil, ds.errno
	}
	return ds, 0
}

// dirPage is how many stored names a listing reads at a time: a directory of a
// million keys is listed without holding a million names.
const dirPage = 1024

// dirStream lists a directory page by page in name order (bytes, the store's
// order), the stored names and the files only in memory merged: a file's place
// does not depend on whether its commit has landed, so a listing read again
// after a seek (telldir, seekdir) has every name where it was.
type dirStream struct {
	d            *dirNode
	l            loc
	overlay      map[string]*gofs.Inode
	overlayNames []string // the overlay's names, sorted
	unlisted     []string // the tail of overlayNames not listed yet
	page         []fuse.DirEntry
	next         int
	pos          uint64        // entries returned so far
	after        string        // the last stored name read
	done         bool          // the stored listing is exhausted (and the overlay added)
	errno        syscall.Errno // of the first page: opendir fails with it
}

func (s *dirStream) HasNext() bool {
	if s.next == len(s.page) && !s.done {
		s.fill()
	}
	return s.next < len(s.page)
}

func (s *dirStream) Next() (fuse.DirEntry, syscall.Errno) {
	s.next++
	s.pos++
	e := s.page[s.next-1]
	e.Off = s.pos // telldir's answer: entries read so far
	return e, 0
}

// Seekdir goes to offset off (a telldir answer): from the start, skipping off
// entries. Programs rarely seek; listings need not hold every name for them.
func (s *dirStream) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == s.pos {
		return 0
	}
	s.page, s.next, s.pos, s.after, s.done, s.unlisted = nil, 0, 0, "", false, s.overlayNames
	for s.pos < off && s.HasNext() {
		s.Next()
	}
	return 0
}

func (s *dirStream) Close() {}

var _ = (gofs.FileSeekdirer)((*dirStream)(nil))

// listOverlay adds the files only in memory whose names sort before name ("" for
// all that are left).
func (s *dirStream) listOverlay(before string) {
	for len(s.unlisted) > 0 && (before == "" || s.unlisted[0] < before) {
		name := s.unlisted[0]
		s.unlisted = s.unlisted[1:]
		s.page = append(s.page, fuse.DirEntry{Name: name, Mode: syscall.S_IFREG, Ino: s.overlay[name].StableAttr().Ino})
	}
}

// fill reads the next page of stored names, with the files only in memory that
// sort among them; after the last one, the rest of those.
func (s *dirStream) fill() {
	d, l := s.d, s.l
	s.page, s.next = s.page[:0], 0
	n := 0
	err := l.db.ListAfter(l.store, l.path, s.after, func(e engine.DirEntry) bool {
		n++
		s.after = e.Name
		s.listOverlay(e.Name)
		hidden := d.fsys.isHiddenEntry(l.child(e.Name), e)
		if len(s.unlisted) > 0 && s.unlisted[0] == e.Name {
			// Also a file in memory: listed once, as stored, or as the file in
			// memory when the stored key is hidden.
			if hidden {
				s.listOverlay(e.Name + "\x00")
				return n < dirPage
			}
			s.unlisted = s.unlisted[1:]
		} else if hidden {
			return n < dirPage
		}
		de := fuse.DirEntry{Name: e.Name}
		switch e.Kind {
		case engine.OpMap:
			de.Mode, de.Ino = syscall.S_IFDIR, d.fsys.childIno(d.EmbeddedInode(), e.Name, 'd')
		case engine.OpLink:
			de.Mode, de.Ino = syscall.S_IFLNK, d.fsys.childIno(d.EmbeddedInode(), e.Name, 'l')
		default:
			de.Mode, de.Ino = syscall.S_IFREG, d.fsys.childIno(d.EmbeddedInode(), e.Name, 'f')
		}
		if ch := d.GetChild(e.Name); ch != nil && ch.StableAttr().Mode == de.Mode {
			de.Ino = ch.StableAttr().Ino // a node that moved here keeps its number
		}
		s.page = append(s.page, de)
		return n < dirPage
	})
	if err != nil {
		if s.after == "" {
			s.errno = toErrno(err) // opendir fails
		}
		// The directory went away while it was being read: the listing ends
		// there, as on a local disk.
		s.done = true
		return
	}
	if n < dirPage {
		s.done = true
		s.listOverlay("")
	}
}

// exists reports whether name is visible in the directory at l (stored or overlay).
func (f *FS) exists(parent *gofs.Inode, l loc, name string) (engine.Node, bool) {
	if inOverlay(parent, name) {
		return engine.Node{Kind: engine.OpValue}, true
	}
	cl := l.child(name)
	if f.isHidden(cl) {
		return engine.Node{}, false
	}
	n, err := cl.db.Stat(cl.store, cl.path)
	return n, err == nil
}

// makeNew commits a new map or link called name in d (stage adds its op) and
// returns its inode; the name must be free and the database writable.
func (d *dirNode) makeNew(ctx context.Context, name string, n engine.Node, stage func(st *engine.StoreTx, path []string), out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if errno := checkName(name); errno != 0 {
		return nil, errno
	}
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno != 0 {
		return nil, errno
	}
	if _, ok := d.fsys.exists(d.EmbeddedInode(), l, name); ok {
		return nil, syscall.EEXIST
	}
	if errno := d.fsys.writable(l); errno != 0 {
		return nil, errno
	}
	cl := l.child(name)
	d.fsys.unhide(cl)
	if errno := d.fsys.commit(l.db, engine.Journal, func(tx *engine.Tx) { stage(tx.Store(cl.store), cl.path) }); errno != 0 {
		return nil, errno
	}
	n.Time = time.Now().UnixMilli()
	return d.fsys.newChild(ctx, d.EmbeddedInode(), cl, n, out), 0
}

func (d *dirNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	// Only a map op: a directory a peer made concurrently under the same name keeps
	// its files (the two merge). What an earlier rm -r removed stays removed: its
	// delete is older than this map and hides what was below.
	return d.makeNew(ctx, name, engine.Node{Kind: engine.OpMap}, func(st *engine.StoreTx, p []string) { st.SetMap(p) }, out)
}

func (d *dirNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if errno := checkName(name); errno != 0 {
		return nil, nil, 0, errno
	}
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno != 0 {
		return nil, nil, 0, errno
	}
	local := d.fsys.isLocalOnly(name)
	if !local {
		if errno := d.fsys.writable(l); errno != 0 {
			return nil, nil, 0, errno
		}
	}
	if n, ok := d.fsys.exists(d.EmbeddedInode(), l, name); ok && n.Kind == engine.OpMap {
		return nil, nil, 0, syscall.EISDIR
	}
	st := gofs.StableAttr{Mode: syscall.S_IFREG, Ino: d.fsys.childIno(d.EmbeddedInode(), name, 'f')}
	// Pinned (see pin.go) from the start: it exists only here until committed.
	ch := d.NewPersistentInode(ctx, &fileNode{fsys: d.fsys, pinned: true}, st)
	fn := ch.Operations().(*fileNode)
	fn.mu.Lock()
	defer fn.mu.Unlock()
	c := &content{loaded: true, dirty: !local, mtime: nowMs(), refs: 1, writers: 1}
	fn.cur, fn.local, fn.pending = c, local, !local
	h := &handle{c: c, append: flags&syscall.O_APPEND != 0, write: true}
	var fh gofs.FileHandle = h
	if !local && d.fsys.PassWrites() && d.fsys.releasing.Load() == 0 {
		// Its writes (and reads) pass through to a spill file: the kernel writes
		// a large file as fast as to a local disk, and the close parks it (see
		// Flush). Small files are committed at close as ever.
		if sp, err := d.fsys.spillFile(); err == nil && sp != nil {
			c.spill, c.kernel = sp, true
			c.refresh()
			h.stamp = c.stamp
			fh = &passHandle{handle: h, fd: int(sp.Fd())}
		}
	}
	var fuseFlags uint32
	if _, pass := fh.(*passHandle); !pass {
		fuseFlags = fn.bypassLocked(h, flags)
	}
	fn.countLocked(fh, 1)
	d.fsys.track(fn, true)
	fn.attrFromContent(c, &out.Attr)
	return ch, fh, fuseFlags, 0
}

func (d *dirNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	n := engine.Node{Kind: engine.OpLink, Size: int64(len(target))}
	return d.makeNew(ctx, name, n, func(st *engine.StoreTx, p []string) { st.SetLink(p, target) }, out)
}

// Link: hard links have no meaning in a key-value store.
func (d *dirNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// Mknod: device nodes, fifos and sockets cannot be stored.
func (d *dirNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *dirNode) Unlink(ctx context.Context, name string) syscall.Errno {
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno != 0 {
		return errno
	}
	cl := l.child(name)
	removed := false
	if inOverlay(d.EmbeddedInode(), name) {
		if d.fsys.dropOverlay(d.EmbeddedInode(), name) {
			d.fsys.retire(d.EmbeddedInode(), name)
			return 0 // local-only: never stored
		}
		removed = true
	}
	if d.fsys.isHidden(cl) {
		if removed {
			return 0
		}
		return syscall.ENOENT
	}
	n, err := cl.db.Stat(cl.store, cl.path)
	if err != nil {
		if removed {
			return 0
		}
		return toErrno(err)
	}
	if n.Kind == engine.OpMap {
		return syscall.EISDIR
	}
	if errno := d.fsys.writable(l); errno != 0 {
		return errno
	}
	d.fsys.keepOpen(d.EmbeddedInode(), name)
	errno = d.fsys.unlink(cl, n.Entry)
	if errno == 0 {
		d.fsys.retire(d.EmbeddedInode(), name)
	}
	return errno
}

func (d *dirNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno != 0 {
		return errno
	}
	return d.fsys.rmdir(d.EmbeddedInode(), l.child(name))
}

// rmdir removes the empty map (or store) at l, whose inode parent is parent.
func (f *FS) rmdir(parent *gofs.Inode, l loc) syscall.Errno {
	if f.isHidden(l) {
		return syscall.ENOENT
	}
	n, err := l.db.Stat(l.store, l.path)
	if err != nil {
		return toErrno(err)
	}
	if n.Kind != engine.OpMap {
		return syscall.ENOTDIR
	}
	if f.nonEmpty(parent, l) {
		return syscall.ENOTEMPTY
	}
	if errno := f.writable(l); errno != 0 {
		return errno
	}
	errno := f.commit(l.db, engine.Journal, func(tx *engine.Tx) { tx.Store(l.store).Delete(l.path) })
	if errno == 0 {
		name := l.store
		if len(l.path) > 0 {
			name = l.path[len(l.path)-1]
		}
		f.retire(parent, name)
	}
	return errno
}

// nonEmpty reports whether the directory at l shows any entry.
func (f *FS) nonEmpty(parent *gofs.Inode, l loc) bool {
	name := l.store
	if len(l.path) > 0 {
		name = l.path[len(l.path)-1]
	}
	if ch := parent.GetChild(name); ch != nil {
		for _, c := range ch.Children() {
			if fn, ok := c.Operations().(*fileNode); ok && fn.inMemory() {
				return true
			}
		}
	}
	found := false
	l.db.List(l.store, l.path, func(e engine.DirEntry) bool {
		found = !f.isHiddenEntry(l.child(e.Name), e)
		return !found
	})
	return found
}

func (d *dirNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno != 0 {
		return errno
	}
	return d.fsys.rename(d.EmbeddedInode(), l.child(name), newParent, newName, flags)
}

func (d *dirNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l, errno := d.fsys.locate(d.EmbeddedInode())
	if errno == syscall.ENOENT {
		// Removed, or replaced by a rename, while the kernel still has it: an open
		// descriptor or a shell's working directory. As on a disk, fstat finds a
		// directory with no links (the kernel sends directories' GETATTR without
		// a handle, so this is also what a stat of a name the kernel cached says
		// until it looks the name up again; a local rename or rmdir updated it).
		d.fsys.setAttr(&out.Attr, modeDir, 0, 0)
		out.Attr.Nlink = 0
		return 0
	} else if errno != 0 {
		return errno
	}
	return d.fsys.attrAt(l, modeDir, out)
}

// attrAt fills out the attributes of the node stored at l (a directory's size is 0).
func (f *FS) attrAt(l loc, mode uint32, out *fuse.AttrOut) syscall.Errno {
	n, err := l.db.Stat(l.store, l.path)
	if err != nil {
		return toErrno(err)
	}
	size := n.Size
	if mode == modeDir {
		size = 0
	}
	f.setAttr(&out.Attr, mode, size, n.Time)
	return 0
}

func (d *dirNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := d.fsys.checkSetattr(in, modeDir); errno != 0 {
		return errno
	}
	if _, ok := in.GetSize(); ok {
		return syscall.EISDIR
	}
	return d.Getattr(ctx, f, out)
}

// destLoc is where newName in newParent would live, or an errno when that is not
// inside a store of some database.
func (f *FS) destLoc(newParent gofs.InodeEmbedder, newName string) (loc, syscall.Errno) {
	switch p := newParent.(type) {
	case *dirNode:
		l, errno := f.locate(p.EmbeddedInode())
		if errno != 0 {
			return loc{}, errno
		}
		return l.child(newName), 0
	case *dbNode:
		db, ok := f.inst.DatabaseByID(p.id)
		if !ok {
			return loc{}, syscall.ENOENT
		}
		return loc{db: db, store: newName}, 0
	case *genDir:
		return loc{}, syscall.EROFS
	}
	return loc{}, syscall.EPERM
}

// rename moves src (a child of srcParent) to newName in newParent as one commit.
func (f *FS) rename(srcParent *gofs.Inode, src loc, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	errno := f.renameInner(srcParent, src, newParent, newName, flags)
	if errno == 0 {
		srcName := src.store
		if len(src.path) > 0 {
			srcName = src.path[len(src.path)-1]
		}
		// The moved node keeps its number; both names get fresh ones for newcomers.
		f.retire(srcParent, srcName)
		f.retire(newParent.EmbeddedInode(), newName)
	}
	return errno
}

func (f *FS) renameInner(srcParent *gofs.Inode, src loc, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if flags&renameExchange == 0 {
		f.keepOpen(newParent.EmbeddedInode(), newName)
	}
	if flags&renameExchange != 0 {
		return syscall.EINVAL
	}
	if errno := checkName(newName); errno != 0 {
		return errno
	}
	dst, errno := f.destLoc(newParent, newName)
	if errno != 0 {
		return errno
	}
	if dst.db.ID() != src.db.ID() {
		return syscall.EXDEV
	}
	if len(dst.path) == 0 && len(src.path) > 0 || len(dst.path) > 0 && len(src.path) == 0 {
		return syscall.EPERM // a store is not a key, nor a key a store
	}
	if len(dst.path) == 0 {
		if err := engine.CheckStoreName(newName); err != nil {
			return toErrno(err)
		}
	}
	srcName := src.store
	if len(src.path) > 0 {
		srcName = src.path[len(src.path)-1]
	}
	if slices.Equal(append([]string{src.store}, src.path...), append([]string{dst.store}, dst.path...)) {
		return 0
	}
	if len(dst.path) > len(src.path) && dst.store == src.store && slices.Equal(dst.path[:len(src.path)], src.path) {
		return syscall.EINVAL // into itself
	}
	dstParent := newParent.EmbeddedInode()
	dstNode, dstExists := f.dirEntry(dstParent, dst, newName)
	if flags&renameNoReplace != 0 && dstExists {
		return syscall.EEXIST
	}
	dstLocal := len(dst.path) > 0 && f.isLocalOnly(newName)

	// A file in memory: local-only, just created, or written and not flushed.
	if ch, fn := lockedOverlayChild(srcParent, srcName); ch != nil {
		defer fn.mu.Unlock()
		fn.cur.refresh() // what the kernel wrote to it so far
		if dstExists && dstNode.Kind == engine.OpMap {
			return syscall.EISDIR
		}
		srcStored := !fn.local && !fn.pending && !f.isHidden(src)
		if dstLocal {
			if srcStored {
				f.hide(src)
			}
			f.dropPark(fn.cur)
			fn.local, fn.pending = true, false
			fn.pinLocked()
			return 0
		}
		if errno := f.writable(dst); errno != 0 {
			return errno
		}
		if dstExists && dstNode.Kind == engine.OpValue {
			f.dropOverlay(dstParent, newName)
		}
		if node, same := f.storedEqual(dst, fn.cur); !srcStored && same {
			// sed -i that changed nothing: the key already holds these bytes, and
			// the file is that version.
			fn.local, fn.pending, fn.cur.dirty = false, false, false
			f.dropPark(fn.cur)
			fn.adoptLocked(fn.cur, dst, node)
			fn.unpinLocked()
			return 0
		}
		f.unhide(dst)
		id, errno := f.commitEntry(dst.db, engine.Journal, func(tx *engine.Tx) {
			if srcStored {
				tx.Store(src.store).Delete(src.path)
			}
			fn.cur.setValue(tx, dst.store, dst.path)
		})
		if errno == 0 {
			fn.local = false
			fn.committedLocked(fn.cur, id, dst)
			fn.unpinLocked() // an ordinary node from now on, once closed
		}
		return errno
	}

	if f.isHidden(src) {
		return syscall.ENOENT
	}
	sn, err := src.db.Stat(src.store, src.path)
	if err != nil {
		return toErrno(err)
	}
	if errno := f.writable(src); errno != 0 {
		return errno
	}
	if sn.Kind != engine.OpMap {
		if dstExists && dstNode.Kind == engine.OpMap {
			return syscall.EISDIR
		}
		full, err := src.db.Open(src.store, src.path)
		if err != nil {
			return toErrno(err)
		}
		if dstLocal && sn.Kind == engine.OpValue {
			// An editor moving the original aside: the backup lives in the overlay and
			// the key's deletion waits briefly for the new version.
			if ch := srcParent.GetChild(srcName); ch != nil {
				if fn, ok := ch.Operations().(*fileNode); ok {
					fn.mu.Lock()
					if fn.cur != nil {
						fn.loadLocked(fn.cur) // open descriptors share it
					} else if v, err := src.db.Get(src.store, src.path); err == nil {
						fn.cur = &content{data: v.Value, loaded: true, mtime: time.UnixMilli(full.Time)}
					} else {
						fn.mu.Unlock()
						return toErrno(err)
					}
					fn.local = true
					fn.pinLocked()
					fn.mu.Unlock()
					f.track(fn, true)
				}
			}
			f.hide(src)
			return 0
		}
		f.dropOverlay(dstParent, newName)
		f.unhide(dst)
		errno := f.commit(src.db, engine.Journal, func(tx *engine.Tx) {
			tx.Store(src.store).Delete(src.path)
			tx.Store(dst.store).SetNode(dst.path, full) // a large value moves by reference, unread
		})
		if errno == 0 {
			// The inode that moves with the name may stand for an older version
			// than the one copied (see the directory case below).
			f.renotify([]childRef{{dstParent, newName}})
		}
		return errno
	}

	// A directory (or a whole store): move it and everything below in one commit.
	if dstExists {
		if dstNode.Kind != engine.OpMap {
			return syscall.ENOTDIR
		}
		if f.nonEmpty(dstParent, dst) {
			return syscall.ENOTEMPTY
		}
	}
	// Files below that were created or written and not committed yet (a close that
	// commits at release may still be on its way) are committed first, so the copy
	// below includes them and no late commit lands at the old path.
	if ch := srcParent.GetChild(srcName); ch != nil {
		f.flushTree(ch)
	}
	var copyErr error
	f.unhide(dst)
	errno = f.commit(src.db, engine.Journal, func(tx *engine.Tx) {
		tx.Store(src.store).Delete(src.path)
		ds := tx.Store(dst.store)
		if dstExists {
			ds.Clear(dst.path) // replaces the (empty) directory there
		} else {
			ds.SetMap(dst.path)
		}
		copyErr = f.walk(src, func(rel []string, n engine.Node) {
			p := append(slices.Clone(dst.path), rel...)
			if n.Kind == engine.OpMap {
				ds.SetMap(p)
			} else {
				ds.SetNode(p, n) // a large value moves by reference, unread
			}
		})
	})
	if copyErr != nil {
		return toErrno(copyErr)
	}
	if errno == 0 {
		// The copy is the store's state of the tree; a file the kernel knows
		// below it may stand for an older version (a peer's change whose
		// invalidation it had not acted on yet). The moved entries are dropped
		// once the rename is done, so the next access compares (see fileNode).
		if ch := srcParent.GetChild(srcName); ch != nil {
			f.renotifyTree(ch)
		}
	}
	return errno
}

// dirEntry is what name in the directory parent (at l's parent) currently is.
func (f *FS) dirEntry(parent *gofs.Inode, l loc, name string) (engine.Node, bool) {
	if inOverlay(parent, name) {
		return engine.Node{Kind: engine.OpValue}, true
	}
	if f.isHidden(l) {
		return engine.Node{}, false
	}
	n, err := l.db.Stat(l.store, l.path)
	return n, err == nil
}

// dropOverlay discards the in-memory file called name in parent (unlinked, or about
// to be replaced by a rename) and reports whether it was local-only.
func (f *FS) dropOverlay(parent *gofs.Inode, name string) bool {
	ch, fn := lockedOverlayChild(parent, name)
	if ch == nil {
		return false
	}
	local := fn.local
	fn.local, fn.pending = false, false
	if fn.cur != nil {
		fn.cur.dirty = false
		f.dropPark(fn.cur)
	}
	fn.unpinLocked()
	fn.mu.Unlock()
	return local
}

// walk calls fn for every visible node below the map at l, with values, parents
// first. Hidden keys (moved aside to local-only names) are not visible.
func (f *FS) walk(l loc, fn func(rel []string, n engine.Node)) error {
	var rec func(rel []string) error
	rec = func(rel []string) error {
		var kids []engine.DirEntry
		if err := l.db.List(l.store, append(slices.Clone(l.path), rel...), func(e engine.DirEntry) bool {
			kids = append(kids, e)
			return true
		}); err != nil {
			return err
		}
		for _, k := range kids {
			r := append(slices.Clone(rel), k.Name)
			if f.isHiddenEntry(loc{db: l.db, store: l.store, path: append(slices.Clone(l.path), r...)}, k) {
				continue
			}
			if k.Kind == engine.OpMap {
				fn(r, k.Node)
				if err := rec(r); err != nil {
					return err
				}
				continue
			}
			n, err := l.db.Open(l.store, append(slices.Clone(l.path), r...))
			if err != nil {
				return err
			}
			fn(r, n)
		}
		return nil
	}
	return rec(nil)
}

// renameat2 flags (linux/fs.h).
const (
	renameNoReplace = 1 << 0
	renameExchange  = 1 << 1
)

func (d *dirNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
}
func (d *dirNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}
func (d *dirNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.ENOTSUP
}
func (d *dirNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) { return 0, 0 }

// Fsync on a directory makes its changes durable: each was committed (to the
// journal) when it returned, or, an unlink, recorded for a deferred delete; this
// commits the deferred deletes and syncs the journal.
func (d *dirNode) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	return toErrno(d.fsys.inst.FlushDeletes(engine.Sync))
}

// flushTree commits the buffered content of every file below in.
func (f *FS) flushTree(in *gofs.Inode) {
	for _, ch := range in.Children() {
		switch n := ch.Operations().(type) {
		case *fileNode:
			n.flush(engine.Journal)
		case *dirNode:
			f.flushTree(ch)
		}
	}
}
