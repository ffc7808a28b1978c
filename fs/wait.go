package fs

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ErrTimeout is what SyncViews.Wait returns when the wait's time limit passed.
var ErrTimeout = errors.New("timed out")

// waitDir is <mnt>/.sync/wait: reading wait/<entry>[@N] (entry: a unique prefix
// of its id) blocks until the entry is held by at least N peers (default 1), then
// returns them, one per line: a durability barrier for scripts. It fails with
// ETIMEDOUT after the configured limit, ENOENT for an unknown entry.
type waitDir struct {
	gofs.Inode
	fsys *FS
}

var waitName = regexp.MustCompile(`^([0-9a-fA-F]{4,64})(?:@([0-9]+))?$`)

func (w *waitDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	m := waitName.FindStringSubmatch(name)
	if m == nil {
		return nil, syscall.ENOENT
	}
	n := 1
	if m[2] != "" {
		n, _ = strconv.Atoi(m[2])
	}
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	w.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, 0, time.Now().UnixMilli())
	return w.NewInode(ctx, &waitFile{fsys: w.fsys, entry: m[1], n: n}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino('W', engine.ID{}, name, nil)}), 0
}

func (w *waitDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return gofs.NewListDirStream(nil), 0
}

func (w *waitDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	w.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	return 0
}

type waitFile struct {
	gofs.Inode
	fsys  *FS
	entry string
	n     int
}

type waitHandle struct {
	once sync.Once
	data []byte
	err  syscall.Errno
}

func (w *waitFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	w.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, 0, time.Now().UnixMilli())
	out.SetTimeout(0)
	return 0
}

func (w *waitFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return &waitHandle{}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, 0
}

func (w *waitFile) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h := f.(*waitHandle)
	h.once.Do(func() {
		if w.fsys.opts.Sync == nil {
			h.err = syscall.ENOTSUP
			return
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-w.fsys.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		data, err := w.fsys.opts.Sync.Wait(ctx, w.entry, w.n)
		switch {
		case errors.Is(err, ErrTimeout):
			h.err = syscall.ETIMEDOUT
		case errors.Is(err, engine.ErrNotFound):
			h.err = syscall.ENOENT
		case err != nil:
			h.err = syscall.EINTR
		}
		h.data = data
	})
	if h.err != 0 {
		return nil, h.err
	}
	if off >= int64(len(h.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.data[off:min(int64(len(h.data)), off+int64(len(dest)))]), 0
}
