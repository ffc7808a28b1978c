package fs

import (
	"context"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// genDir is a read-only directory of generated files (.sync). Everything that
// would change it fails with EROFS.
type genDir struct {
	gofs.Inode
	readOnlyDir
	fsys  *FS
	kind  byte
	id    engine.ID
	files map[string]func() []byte
}

var (
	_ = (gofs.NodeLookuper)((*genDir)(nil))
	_ = (gofs.NodeReaddirer)((*genDir)(nil))
)

func (f *FS) genDirInode(ctx context.Context, parent *gofs.Inode, kind byte, id engine.ID, files map[string]func() []byte, out *fuse.EntryOut) *gofs.Inode {
	f.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	return parent.NewInode(ctx, &genDir{fsys: f, kind: kind, id: id, files: files}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino(kind, id, "", nil)})
}

func (g *genDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if g.kind == 'S' && name == "at" {
		g.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
		return g.NewInode(ctx, &atDir{fsys: g.fsys, db: g.id, snaps: map[engine.ID]*engine.Snapshot{}}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino('A', g.id, "", nil)}), 0
	}
	if g.kind == 'S' && name == "conflicts" {
		out.SetEntryTimeout(0)
		out.SetAttrTimeout(0)
		g.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
		return g.NewInode(ctx, &conflictsDir{fsys: g.fsys, db: g.id}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino('C', g.id, "", nil)}), 0
	}
	if g.kind == 'G' && name == "peers" && g.fsys.opts.Sync != nil {
		out.SetEntryTimeout(0)
		out.SetAttrTimeout(0)
		g.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
		return g.NewInode(ctx, &peersDir{fsys: g.fsys}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino('P', engine.ID{}, "", nil)}), 0
	}
	if g.kind == 'G' && name == "wait" {
		g.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
		return g.NewInode(ctx, &waitDir{fsys: g.fsys}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino('W', engine.ID{}, "", nil)}), 0
	}
	if g.kind == 'G' && name == "ctl" {
		out.SetEntryTimeout(0)
		out.SetAttrTimeout(0)
		g.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o644, 0, time.Now().UnixMilli())
		return g.NewPersistentInode(ctx, g.fsys.ctl, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(g.kind, g.id, name, nil)}), 0
	}
	if g.kind == 'G' && name == "events" {
		out.SetEntryTimeout(0)
		out.SetAttrTimeout(0)
		g.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, 0, time.Now().UnixMilli())
		return g.NewInode(ctx, &eventsFile{fsys: g.fsys}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(g.kind, g.id, name, nil)}), 0
	}
	gen, ok := g.files[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	g.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, int64(len(gen())), time.Now().UnixMilli())
	return g.NewInode(ctx, &genFile{fsys: g.fsys, gen: gen}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(g.kind, g.id, name, nil)}), 0
}

func (g *genDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	var names []string
	for n := range g.files {
		names = append(names, n)
	}
	if g.kind == 'G' {
		names = append(names, "events", "ctl")
	}
	sort.Strings(names)
	var entries []fuse.DirEntry
	for _, n := range names {
		entries = append(entries, fuse.DirEntry{Name: n, Mode: syscall.S_IFREG, Ino: ino(g.kind, g.id, n, nil)})
	}
	if g.kind == 'G' && g.fsys.opts.Sync != nil {
		entries = append(entries, fuse.DirEntry{Name: "peers", Mode: syscall.S_IFDIR, Ino: ino('P', engine.ID{}, "", nil)},
			fuse.DirEntry{Name: "wait", Mode: syscall.S_IFDIR, Ino: ino('W', engine.ID{}, "", nil)})
	}
	if g.kind == 'S' {
		entries = append(entries, fuse.DirEntry{Name: "conflicts", Mode: syscall.S_IFDIR, Ino: ino('C', g.id, "", nil)},
			fuse.DirEntry{Name: "at", Mode: syscall.S_IFDIR, Ino: ino('A', g.id, "", nil)})
	}
	return gofs.NewListDirStream(entries), 0
}

func (g *genDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	g.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	return 0
}

// readOnlyDir gives a generated directory the refusals of a read-only one: every
// change fails with EROFS. Embed it next to gofs.Inode.
type readOnlyDir struct{}

func (readOnlyDir) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}
func (readOnlyDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (readOnlyDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}
func (readOnlyDir) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }
func (readOnlyDir) Rmdir(ctx context.Context, name string) syscall.Errno  { return syscall.EROFS }
func (readOnlyDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}
func (readOnlyDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (readOnlyDir) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (readOnlyDir) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

// genFile is a generated file: its true size at getattr, a fresh snapshot per open,
// read with direct I/O so the kernel never serves a stale copy.
type genFile struct {
	gofs.Inode
	fsys *FS
	gen  func() []byte
}

var (
	_ = (gofs.NodeOpener)((*genFile)(nil))
	_ = (gofs.NodeReader)((*genFile)(nil))
)

type genHandle struct {
	mu   sync.Mutex // guards data
	data []byte
}

// Getattr reports the true size now, also to an open descriptor: `tail -f` watches
// the size of the file it holds open.
func (g *genFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size := len(g.gen())
	g.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, int64(size), time.Now().UnixMilli())
	out.SetTimeout(0)
	return 0
}

func (g *genFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (g *genFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return &genHandle{data: g.gen()}, fuse.FOPEN_DIRECT_IO, 0
}

// Read serves the snapshot taken at open; a read at or past its end takes a new
// one, so a reader that keeps the file open (tail -f on history) sees what was
// added since.
func (g *genFile) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h := f.(*genHandle)
	h.mu.Lock()
	if off >= int64(len(h.data)) {
		h.data = g.gen()
	}
	data := h.data
	h.mu.Unlock()
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(data[off:min(int64(len(data)), off+int64(len(dest)))]), 0
}

func (g *genDir) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno { return 0 }
