package fs

import (
	"time"

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
		f.remote.Add(1)
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
		// A change below a name the kernel knows as a file or link made it a
		// directory (a write at a/b makes a a map): that entry goes too.
		notDir := child != nil && !child.IsDir()
		if child == nil || i == len(names)-1 || notDir {
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

// A lookup that read the store before a change from elsewhere and answers after
// its invalidation reached the kernel would leave the kernel holding the name's
// old entry for a whole entry timeout: the kernel drops only entries it has, and
// one still being looked up is not there yet. So a lookup that saw a remote
// change begin while it ran drops its own answer again once it is delivered: the
// next access looks the name up afresh. (Attributes need no such care: the
// kernel discards attributes older than an invalidation of their inode.)
func (f *FS) lookupFrom() uint64 { return f.remote.Load() }

// recheckLookup drops the kernel's entry for name in parent shortly after the
// lookup that answered it, if a remote change began since start (lookupFrom).
// Twice: once right after the answer is delivered, once later, for an answer
// delivered late on a loaded machine. It never blocks the handler calling it.
func (f *FS) recheckLookup(start uint64, parent *gofs.Inode, name string) {
	if f.remote.Load() == start {
		return
	}
	f.renotify([]childRef{{parent, name}})
}

type childRef struct {
	parent *gofs.Inode
	name   string
}

// renotify drops the kernel's entries for refs after the handler running now
// has answered (it may not notify the kernel itself: the kernel waits for it).
// A file that lives in memory (local-only, or not committed yet) is left alone:
// its entry is right, and an inode the kernel forgets may take the only copy of
// a scratch file with it; so is a directory with such a file below it.
func (f *FS) renotify(refs []childRef) {
	for _, d := range recheckDelays {
		time.AfterFunc(d, func() {
			for _, r := range refs {
				select {
				case <-f.done:
					return
				default:
				}
				if ch := r.parent.GetChild(r.name); ch != nil && holdsMemory(ch, 0) {
					continue
				}
				r.parent.NotifyEntry(r.name)
			}
		})
	}
}

// holdsMemory reports whether in is, or is a directory with below it, a file that
// lives in memory: dropping a directory's entry makes the kernel forget the
// entries below it too.
func holdsMemory(in *gofs.Inode, depth int) bool {
	if fn, ok := in.Operations().(*fileNode); ok {
		return fn.inMemory()
	}
	if !in.IsDir() || depth > 64 {
		return false
	}
	for _, ch := range in.Children() {
		if holdsMemory(ch, depth+1) {
			return true
		}
	}
	return false
}

// renotifyTree renotifies the entries of every file and link the kernel knows
// below dir. Not those of directories: a directory's entry is never stale (it
// has no version), and the kernel, dropping it, would forget the entries below it
// too, among them those of local-only files that exist nowhere else.
func (f *FS) renotifyTree(dir *gofs.Inode) {
	var refs []childRef
	var walk func(d *gofs.Inode, depth int)
	walk = func(d *gofs.Inode, depth int) {
		for name, ch := range d.Children() {
			if !ch.IsDir() {
				refs = append(refs, childRef{d, name})
			} else if depth < 64 {
				walk(ch, depth+1)
			}
		}
	}
	walk(dir, 0)
	if len(refs) > 0 {
		f.renotify(refs)
	}
}

var recheckDelays = []time.Duration{5 * time.Millisecond, 200 * time.Millisecond}
