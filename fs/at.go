package fs

import (
	"context"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// atDir is <db>/.sync/at: `at/<entry-id>/` (any unique prefix of at least 4 hex
// digits) is a read-only snapshot of the whole database as it was right after that
// entry, browsable with ls, cat and diff -r. Listing at/ itself shows nothing: the
// ids are in .sync/log.
type atDir struct {
	gofs.Inode
	readOnlyDir
	fsys *FS
	db   engine.ID

	mu    sync.Mutex // guards snaps
	snaps map[engine.ID]*engine.Snapshot
}

var _ = (gofs.NodeLookuper)((*atDir)(nil))

func (a *atDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	db, ok := a.fsys.inst.DatabaseByID(a.db)
	if !ok {
		return nil, syscall.ENOENT
	}
	id, err := db.FindEntry(name)
	if err != nil {
		return nil, syscall.ENOENT
	}
	a.mu.Lock()
	snap := a.snaps[id]
	a.mu.Unlock()
	if snap == nil {
		if snap, err = db.At(id); err != nil {
			return nil, toErrno(err)
		}
		a.mu.Lock()
		if len(a.snaps) >= 16 {
			clear(a.snaps) // snapshots are rebuilt on demand; keep memory bounded
		}
		a.snaps[id] = snap
		a.mu.Unlock()
	}
	a.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	return a.NewInode(ctx, &snapDir{fsys: a.fsys, snap: snap, db: a.db}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino('A', a.db, name, nil)}), 0
}

func (a *atDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return gofs.NewListDirStream(nil), 0
}

func (a *atDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	a.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	return 0
}

// snapDir is a directory in a snapshot: the database (store == "") or a map.
type snapDir struct {
	gofs.Inode
	readOnlyDir
	fsys  *FS
	snap  *engine.Snapshot
	db    engine.ID
	store string
	path  []string
}

var (
	_ = (gofs.NodeLookuper)((*snapDir)(nil))
	_ = (gofs.NodeReaddirer)((*snapDir)(nil))
)

func (s *snapDir) childIno(kind byte, name string) uint64 {
	return ino(kind, s.db, s.snap.Entry.String()+"\x00"+s.store, append(slices.Clone(s.path), name))
}

func (s *snapDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if s.store == "" {
		if !slices.Contains(s.snap.Stores(), name) {
			return nil, syscall.ENOENT
		}
		s.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, 0)
		return s.NewInode(ctx, &snapDir{fsys: s.fsys, snap: s.snap, db: s.db, store: name}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: s.childIno('d', name)}), 0
	}
	p := append(slices.Clone(s.path), name)
	n, err := s.snap.Get(s.store, p)
	if err != nil {
		return nil, toErrno(err)
	}
	if n.Kind == engine.OpMap {
		s.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, n.Time)
		return s.NewInode(ctx, &snapDir{fsys: s.fsys, snap: s.snap, db: s.db, store: s.store, path: p}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: s.childIno('d', name)}), 0
	}
	value := n.Value
	s.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, int64(len(value)), n.Time)
	return s.NewInode(ctx, &genFile{fsys: s.fsys, gen: func() []byte { return value }}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: s.childIno('f', name)}), 0
}

func (s *snapDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	var list []fuse.DirEntry
	if s.store == "" {
		for _, st := range s.snap.Stores() {
			list = append(list, fuse.DirEntry{Name: st, Mode: syscall.S_IFDIR, Ino: s.childIno('d', st)})
		}
		return gofs.NewListDirStream(list), 0
	}
	err := s.snap.List(s.store, s.path, func(e engine.DirEntry) bool {
		if e.Kind == engine.OpMap {
			list = append(list, fuse.DirEntry{Name: e.Name, Mode: syscall.S_IFDIR, Ino: s.childIno('d', e.Name)})
		} else {
			list = append(list, fuse.DirEntry{Name: e.Name, Mode: syscall.S_IFREG, Ino: s.childIno('f', e.Name)})
		}
		return true
	})
	if err != nil {
		return nil, toErrno(err)
	}
	return gofs.NewListDirStream(list), 0
}

func (s *snapDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	s.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	return 0
}
