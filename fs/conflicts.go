package fs

import (
	"context"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// conflictsDir is <db>/.sync/conflicts and the directories below it: one directory
// per key that lost a concurrent write and has not been written since
// (conflicts/<store>/<path…>/), holding each losing version as a file named
// <entry>.<author> and `winner`, the current value. Writing the key itself resolves
// the conflict: it disappears from here. Read-only (EROFS).
type conflictsDir struct {
	gofs.Inode
	readOnlyDir
	fsys   *FS
	db     engine.ID
	prefix []string // store, then path names
}

var (
	_ = (gofs.NodeLookuper)((*conflictsDir)(nil))
	_ = (gofs.NodeReaddirer)((*conflictsDir)(nil))
)

type conflictEntry struct {
	name  string
	dir   bool
	value func() []byte
}

// entries lists what is at this level: subdirectories towards conflicted keys and,
// when the prefix is a conflicted key, its versions.
func (c *conflictsDir) entries() []conflictEntry {
	db, ok := c.fsys.inst.DatabaseByID(c.db)
	if !ok {
		return nil
	}
	dirs := map[string]bool{}
	var files []conflictEntry
	db.Conflicts(func(cf engine.Conflict) bool {
		if cf.Resolved || cf.Store == engine.SettingsStore {
			return true
		}
		full := append([]string{cf.Store}, cf.Path...)
		if len(full) > len(c.prefix) && slices.Equal(full[:len(c.prefix)], c.prefix) {
			dirs[full[len(c.prefix)]] = true
		} else if slices.Equal(full, c.prefix) {
			value := slices.Clone(cf.Value)
			if cf.Kind == engine.OpDelete {
				value = []byte("(deleted)\n")
			}
			files = append(files, conflictEntry{name: cf.Loser.Short() + "." + cf.Author.Short()[len("ed25519:"):], value: func() []byte { return value }})
		}
		return true
	})
	var out []conflictEntry
	for d := range dirs {
		out = append(out, conflictEntry{name: d, dir: true})
	}
	if len(files) > 0 {
		store, path := c.prefix[0], slices.Clone(c.prefix[1:])
		out = append(out, files...)
		out = append(out, conflictEntry{name: "winner", value: func() []byte {
			n, err := db.Get(store, path)
			if err != nil {
				return []byte("(deleted)\n")
			}
			return n.Value
		}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (c *conflictsDir) child(ctx context.Context, e conflictEntry, out *fuse.EntryOut) *gofs.Inode {
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	id := ino('C', c.db, strings.Join(append(slices.Clone(c.prefix), e.name), "\x00"), nil)
	if e.dir {
		c.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
		return c.NewInode(ctx, &conflictsDir{fsys: c.fsys, db: c.db, prefix: append(slices.Clone(c.prefix), e.name)}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: id})
	}
	c.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, int64(len(e.value())), time.Now().UnixMilli())
	return c.NewInode(ctx, &genFile{fsys: c.fsys, gen: e.value}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: id})
}

func (c *conflictsDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	for _, e := range c.entries() {
		if e.name == name {
			return c.child(ctx, e, out), 0
		}
	}
	return nil, syscall.ENOENT
}

func (c *conflictsDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	var list []fuse.DirEntry
	for _, e := range c.entries() {
		mode := uint32(syscall.S_IFREG)
		if e.dir {
			mode = syscall.S_IFDIR
		}
		list = append(list, fuse.DirEntry{Name: e.name, Mode: mode, Ino: ino('C', c.db, strings.Join(append(slices.Clone(c.prefix), e.name), "\x00"), nil)})
	}
	return gofs.NewListDirStream(list), 0
}

func (c *conflictsDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	c.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	out.SetTimeout(0)
	return 0
}
