package fs

import (
	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// invalidateLoop drops kernel caches for paths changed by commits made outside
// the filesystem (entries from peers, the CLI). It runs on its own goroutine and
// holds no lock while notifying the kernel (see "Deadlocks" in go-fuse's fs/api.go).
func (f *FS) invalidateLoop() {
	for ev := range f.sub.C {
		if ev.Local && ev.Origin == originFS {
			continue
		}
		db, ok := f.inst.DatabaseByID(ev.DB)
		if !ok {
			continue
		}
		root := f.root.EmbeddedInode()
		name := db.Name()
		dbIn := root.GetChild(name)
		if dbIn == nil {
			root.NotifyEntry(name)
			continue
		}
		dbIn.NotifyContent(0, 0)
		for _, ch := range ev.Changes {
			if ch.Store == engine.SettingsStore {
				continue
			}
			f.invalidate(dbIn, append([]string{ch.Store}, ch.Path...))
		}
	}
}

// invalidate walks the kernel-known inodes down names from dir, drops the entry
// of the changed name (or of the first name the kernel never looked up below), and
// the cached listing and attributes of a changed directory. A changed file's next
// lookup gives its name a new inode (see fileNode); the old one, and what the
// kernel caches of it, stay right for the descriptors still reading it.
func (f *FS) invalidate(dir *gofs.Inode, names []string) {
	for i, name := range names {
		child := dir.GetChild(name)
		if child == nil || i == len(names)-1 {
			dir.NotifyEntry(name)
			if child != nil {
				if _, file := child.Operations().(*fileNode); !file {
					child.NotifyContent(0, 0)
				}
			}
			dir.NotifyContent(0, 0)
			return
		}
		dir = child
	}
}
