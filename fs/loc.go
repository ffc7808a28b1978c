package fs

import (
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// loc is where a node lives: database, store and path inside the store.
type loc struct {
	db    *engine.Database
	store string
	path  []string
}

func (l loc) child(name string) loc {
	return loc{db: l.db, store: l.store, path: append(slices.Clone(l.path), name)}
}

func (l loc) key() string {
	return l.db.ID().String() + "\x00" + l.store + "\x00" + strings.Join(l.path, "\x00")
}

// locate finds a node's location from its place in the inode tree, so renames
// need no bookkeeping. It fails with ENOENT for a node that was unlinked, and for
// nodes that are not inside a store.
//
// A node being renamed is between its old and its new place for a moment (its
// parent is read, then the parent's child): that reads again, so a file written
// while its directory is renamed is not taken for unlinked (its data would be
// dropped at close).
func (f *FS) locate(in *gofs.Inode) (loc, syscall.Errno) {
	var names []string
	root := f.root.EmbeddedInode()
	for p := in; p != root; {
		name, parent := p.Parent()
		if parent == nil {
			return loc{}, syscall.ENOENT // unlinked
		}
		for try := 0; parent.GetChild(name) != p; try++ {
			again, againParent := p.Parent()
			if try == 100 || againParent == nil || (again == name && againParent == parent) {
				return loc{}, syscall.ENOENT // unlinked, or replaced by another node
			}
			name, parent = again, againParent // moved meanwhile: look there
		}
		names = append(names, name)
		p = parent
	}
	slices.Reverse(names)
	if len(names) < 2 {
		return loc{}, syscall.EPERM
	}
	db, err := f.inst.Database(names[0])
	if err != nil {
		return loc{}, syscall.ENOENT
	}
	return loc{db: db, store: names[1], path: names[2:]}, 0
}

// commit writes one transaction made by fn, tagged as the filesystem's own.
func (f *FS) commit(db *engine.Database, d engine.Durability, fn func(tx *engine.Tx)) syscall.Errno {
	_, errno := f.commitEntry(db, d, fn)
	return errno
}

// commitEntry is commit that also returns the new entry (zero if fn changed nothing).
func (f *FS) commitEntry(db *engine.Database, d engine.Durability, fn func(tx *engine.Tx)) (engine.ID, syscall.Errno) {
	tx := db.Begin()
	tx.SetOrigin(originFS)
	fn(tx)
	if tx.Empty() {
		return engine.ID{}, 0
	}
	id, err := tx.Commit(d)
	return id, toErrno(err)
}

func (f *FS) writable(l loc) syscall.Errno {
	if !l.db.CanWrite() {
		return syscall.EACCES
	}
	return 0
}

// A key renamed to a local-only name (an editor moving the original aside as a
// backup) is hidden at once, and its deletion committed after hideDelay unless the
// key is written again first: then the editor's save is one commit.
//
// What is hidden is the key's version at the time (its entry), not the path: once
// anything else is at that path (a directory moved there, a file a peer wrote), it
// shows, and the delayed delete leaves it alone.
//
// An unlinked key is hidden the same way while its delete is deferred
// (engine.Database.DeleteLater): the engine commits the deletes of a few
// milliseconds as one entry, so rm -r is not one signed entry per file. Such a
// key has no timer of its own (unlinkTimer flushes them all) and gen orders it
// against the flushes. It stays hidden for unlinkLinger after its delete is
// committed: a listing that began before reads the store as it was, and must
// still skip it.
type hiddenKey struct {
	l       loc
	version engine.ID
	timer   *time.Timer // nil for an unlinked key
	gen     uint64      // an unlinked key's place among unlinks (FS.unlinkGen)
	flushed time.Time   // when an unlinked key's delete was committed
}

func (f *FS) hide(l loc) {
	n, err := l.db.Stat(l.store, l.path)
	if err != nil || n.Kind == engine.OpMap {
		return // nothing stored to hide
	}
	k := l.key()
	f.mu.Lock()
	defer f.mu.Unlock()
	if h, ok := f.hidden[k]; ok {
		if h.version == n.Entry {
			return
		}
		// It hid an older version: one unlinked a moment ago (see hiddenKey).
		if h.timer != nil {
			h.timer.Stop()
		}
	}
	f.hidden[k] = &hiddenKey{l: l, version: n.Entry, timer: time.AfterFunc(hideDelay, func() { f.commitHiddenDelete(k) })}
}

// unhide cancels a pending hidden delete; the caller is about to overwrite the key.
// A delete already on its way to the engine lands before the caller's commit, or
// finds the key changed and leaves it alone (see commitHiddenDelete).
func (f *FS) unhide(l loc) {
	k := l.key()
	f.mu.Lock()
	h, ok := f.hidden[k]
	f.mu.Unlock()
	if ok && h.timer == nil {
		// An unlinked key: its delete goes first, then the caller's commit.
		l.db.FlushDeletes(engine.Journal)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if h, ok := f.hidden[k]; ok {
		if h.timer != nil {
			h.timer.Stop()
		}
		delete(f.hidden, k)
	}
}

// unlinkDelay is how long an unlinked key's delete may wait to be committed
// with the unlinks after it, as one entry; unlinkLinger how long the key stays
// hidden after that (see hiddenKey).
const (
	unlinkDelay  = 5 * time.Millisecond
	unlinkLinger = time.Second
)

// unlink removes the stored key at l, version v: the delete is deferred and the
// key hidden until it is committed.
func (f *FS) unlink(l loc, v engine.ID) syscall.Errno {
	if err := l.db.DeleteLater(l.store, l.path, v, originFS); err != nil {
		return toErrno(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unlinkedLocked(l, v)
	return 0
}

// unlinkedLocked hides version v at l for its deferred delete, and has the
// pending deletes committed shortly.
func (f *FS) unlinkedLocked(l loc, v engine.ID) {
	f.unlinkGen++
	if old, ok := f.hidden[l.key()]; ok && old.timer != nil {
		old.timer.Stop() // hid an older version, which is gone already
	}
	h := &hiddenKey{l: l, version: v, gen: f.unlinkGen}
	f.hidden[l.key()] = h
	f.unlinked = append(f.unlinked, h)
	f.flushSoonLocked()
}

// flushSoonLocked has the pending deletes committed in unlinkDelay.
func (f *FS) flushSoonLocked() {
	if f.unlinkTimer == nil {
		f.unlinkTimer = time.AfterFunc(unlinkDelay, f.flushUnlinks)
	}
}

// flushUnlinks commits the deferred deletes and forgets the keys hidden for them
// a while ago.
func (f *FS) flushUnlinks() {
	f.mu.Lock()
	gen := f.unlinkGen
	f.unlinkTimer = nil
	f.mu.Unlock()
	err := f.inst.FlushDeletes(engine.Journal)
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	// f.unlinked is in unlink order: first the flushed ones (by flush time),
	// then those still pending; each flush touches only what it changes.
	old := 0
	for old < f.unlinkedFlushed && now.Sub(f.unlinked[old].flushed) >= unlinkLinger {
		h := f.unlinked[old]
		if k := h.l.key(); f.hidden[k] == h {
			delete(f.hidden, k) // not if unhidden or hidden anew meanwhile
		}
		f.unlinked[old] = nil
		old++
	}
	f.unlinked, f.unlinkedFlushed = f.unlinked[old:], f.unlinkedFlushed-old
	for err == nil && f.unlinkedFlushed < len(f.unlinked) && f.unlinked[f.unlinkedFlushed].gen <= gen {
		f.unlinked[f.unlinkedFlushed].flushed = now
		f.unlinkedFlushed++
	}
	lingering := len(f.unlinked) > 0
	// Unlinks made during the flush get their own. (After a failure, the deletes
	// stay pending, and hidden, until the next commit, flush or open.)
	select {
	case <-f.done:
		return // unmounted
	default:
	}
	if f.unlinkTimer == nil && err == nil {
		if f.unlinkGen > gen {
			f.unlinkTimer = time.AfterFunc(unlinkDelay, f.flushUnlinks)
		} else if lingering {
			f.unlinkTimer = time.AfterFunc(unlinkLinger, f.flushUnlinks)
		}
	}
}

// hiddenVersion returns the version hidden at l, if any.
func (f *FS) hiddenVersion(l loc) (engine.ID, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h, ok := f.hidden[l.key()]
	if !ok {
		return engine.ID{}, false
	}
	return h.version, true
}

// isHidden reports whether the key at l is one renamed to a local-only name.
func (f *FS) isHidden(l loc) bool {
	v, ok := f.hiddenVersion(l)
	if !ok {
		return false
	}
	n, err := l.db.Stat(l.store, l.path)
	return err == nil && n.Entry == v
}

// isHiddenEntry is isHidden for a listed entry, without reading the key again.
func (f *FS) isHiddenEntry(l loc, e engine.DirEntry) bool {
	v, ok := f.hiddenVersion(l)
	return ok && e.Entry == v
}

// commitHiddenDelete deletes a hidden key once its delay is over, as an unlink
// does: the engine deletes it only if it still holds the hidden version, in the
// same step as the delete's commit (Database.DeleteLater). So what replaced it
// stays (a peer's write, a directory moved there), and so does a directory gone
// meanwhile, here or on a peer (a delete at a/b/c implies maps at a and a/b: the
// directory would come back, empty, at its old place).
func (f *FS) commitHiddenDelete(k string) {
	f.mu.Lock()
	h, ok := f.hidden[k]
	f.mu.Unlock()
	if !ok || h.timer == nil {
		// Gone, or replaced by an unlinked key's entry after this timer fired.
		return
	}
	err := h.l.db.DeleteLater(h.l.store, h.l.path, h.version, originFS)
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.hidden[k] != h:
		// Unhidden, or hidden anew, meanwhile: that stays. The delete, if
		// recorded, lands before the write that unhid it, or finds the key
		// changed.
		if err == nil {
			f.flushSoonLocked()
		}
	case err != nil:
		delete(f.hidden, k) // not deleted: it shows again
	default:
		f.unlinkedLocked(h.l, h.version)
	}
}
