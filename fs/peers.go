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

// peerFiles are the files of <mnt>/.sync/peers/<name>/.
var peerFiles = []string{"info", "addresses", "status", "databases", "cursor", "metadata", "history"}

// peersDir is <mnt>/.sync/peers (one directory per peer) or one peer's directory.
type peersDir struct {
	gofs.Inode
	readOnlyDir
	fsys *FS
	peer string // "" for the list of peers
}

var (
	_ = (gofs.NodeLookuper)((*peersDir)(nil))
	_ = (gofs.NodeReaddirer)((*peersDir)(nil))
)

func (p *peersDir) names() []string {
	if p.peer == "" {
		return p.fsys.opts.Sync.PeerNames()
	}
	return peerFiles
}

func (p *peersDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !slices.Contains(p.names(), name) {
		return nil, syscall.ENOENT
	}
	out.SetEntryTimeout(0)
	out.SetAttrTimeout(0)
	id := ino('P', engine.ID{}, p.peer, []string{name})
	if p.peer == "" {
		p.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
		return p.NewInode(ctx, &peersDir{fsys: p.fsys, peer: name}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: id}), 0
	}
	peer, file := p.peer, name
	gen := func() []byte {
		b, _ := p.fsys.opts.Sync.PeerFile(peer, file)
		return b
	}
	p.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, int64(len(gen())), time.Now().UnixMilli())
	return p.NewInode(ctx, &genFile{fsys: p.fsys, gen: gen}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: id}), 0
}

func (p *peersDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	var list []fuse.DirEntry
	mode := uint32(syscall.S_IFREG)
	if p.peer == "" {
		mode = syscall.S_IFDIR
	}
	for _, n := range p.names() {
		list = append(list, fuse.DirEntry{Name: n, Mode: mode, Ino: ino('P', engine.ID{}, p.peer, []string{n})})
	}
	return gofs.NewListDirStream(list), 0
}

func (p *peersDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	p.fsys.setAttr(&out.Attr, syscall.S_IFDIR|0o555, 0, time.Now().UnixMilli())
	out.SetTimeout(0)
	return 0
}
