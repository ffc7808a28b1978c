package fs

import (
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	gofs "github.com/hanwen/go-fuse/v2/fs"
)

// Pinned files.
//
// go-fuse takes a file's Inode out of its tree when the kernel forgets the inode
// (FORGET, once the kernel has evicted it: memory pressure, drop_caches, at any
// time after the last close). What the store holds is found again by name at
// the next lookup; what exists only in this process would go with the Inode: a
// local-only file (an editor's backup), and the bytes of a file whose writer has
// closed it but whose commit comes after its release (what the kernel wrote
// with passthrough_writes is committed after the last release; a file created
// and closed without a write is committed at its release). Such a commit found
// the file off the tree, took it for unlinked and dropped its bytes: a closed
// file was lost.
//
// So a file is pinned while it has a writer, is local-only or not yet
// committed, or has a commit under way or due: its Inode is persistent, which
// keeps it, and its directories, in the tree whatever the kernel forgets.
// go-fuse makes an Inode persistent only at its creation (NewPersistentInode)
// and lets go of that with ForgetPersistent; makePersistent does for an Inode
// that exists what NewPersistentInode does for a new one, under the Inode's own
// lock, as go-fuse changes the field. The layout is checked at start-up: a
// go-fuse upgrade that changes it panics there, with the field's name, and so
// fails every test of this package.

// inodeFields are the offsets, in go-fuse's Inode, of the fields makePersistent
// sets.
var inodeFields = func() struct{ mu, persistent, changeCounter uintptr } {
	t := reflect.TypeFor[gofs.Inode]()
	offset := func(name string, want reflect.Type) uintptr {
		f, ok := t.FieldByName(name)
		if !ok || f.Type != want {
			panic(fmt.Sprintf("eidefs: go-fuse's Inode has no field %s of type %v; fs/pin.go needs updating", name, want))
		}
		return f.Offset
	}
	return struct{ mu, persistent, changeCounter uintptr }{
		mu:            offset("mu", reflect.TypeFor[sync.Mutex]()),
		persistent:    offset("persistent", reflect.TypeFor[bool]()),
		changeCounter: offset("changeCounter", reflect.TypeFor[uint32]()),
	}
}()

// makePersistent makes in persistent, as NewPersistentInode would have made it.
// It does not bring back an Inode already out of the tree.
func makePersistent(in *gofs.Inode) {
	p := unsafe.Pointer(in)
	mu := (*sync.Mutex)(unsafe.Add(p, inodeFields.mu))
	mu.Lock()
	defer mu.Unlock()
	*(*bool)(unsafe.Add(p, inodeFields.persistent)) = true
	*(*uint32)(unsafe.Add(p, inodeFields.changeCounter))++ // go-fuse's rule for every change of the field
}

// pinLocked keeps the file in the tree until unpinLocked finds nothing left that
// only this process holds. The kernel must hold the inode (a handler for it is
// running), so the Inode is in the tree; or the Inode is new, not in it yet.
func (n *fileNode) pinLocked() {
	if !n.pinned {
		makePersistent(n.EmbeddedInode())
		n.pinned = true
	}
}

// unpinLocked lets go of the pin once the file has no writer, is stored and
// committed, and no commit of it is under way; the kernel may forget it then.
func (n *fileNode) unpinLocked() {
	if !n.pinned || n.writeOpen > 0 || n.committing > 0 || n.local || n.pending ||
		n.cur != nil && n.cur.dirty {
		return
	}
	n.pinned = false
	n.EmbeddedInode().ForgetPersistent()
}
