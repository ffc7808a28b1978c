// Command lbnopass is go-fuse's loopback filesystem (example/loopback) with FUSE
// passthrough turned off: every read and write of a file goes through this
// process, as the writes to an eidefs mount do. bench/fs.sh mounts it beside the
// real loopback, so the cost of that path shows on its own.
//
// Usage: lbnopass [-directmount] MOUNTPOINT ORIGINAL
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is a loopback node whose files do not pass through, nor do its children's.
type node struct{ *gofs.LoopbackNode }

func (n *node) WrapChild(ctx context.Context, ops gofs.InodeEmbedder) gofs.InodeEmbedder {
	if ln, ok := ops.(*gofs.LoopbackNode); ok {
		return &node{ln}
	}
	return ops
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	return noPass(fh), fl, errno
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	in, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	return in, noPass(fh), fl, errno
}

// file is a loopback file that declines passthrough.
type file struct{ *gofs.LoopbackFile }

func (file) PassthroughFd() (int, bool) { return 0, false }

func noPass(fh gofs.FileHandle) gofs.FileHandle {
	if lf, ok := fh.(*gofs.LoopbackFile); ok {
		return file{lf}
	}
	return fh
}

func main() {
	direct := flag.Bool("directmount", false, "call mount(2) instead of fusermount")
	flag.Parse()
	if flag.NArg() != 2 {
		log.Fatal("usage: lbnopass [-directmount] MOUNTPOINT ORIGINAL")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(flag.Arg(1), &st); err != nil {
		log.Fatal(err)
	}
	r := &gofs.LoopbackRoot{Path: flag.Arg(1), Dev: uint64(st.Dev)}
	root := &node{&gofs.LoopbackNode{RootData: r}}
	r.RootNode = root
	sec := time.Second
	// The same options as example/loopback.
	server, err := gofs.Mount(flag.Arg(0), root, &gofs.Options{
		AttrTimeout:     &sec,
		EntryTimeout:    &sec,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			DirectMount: *direct,
			FsName:      flag.Arg(1),
			Name:        "lbnopass",
		},
	})
	if err != nil {
		log.Fatalf("mount: %v", err)
	}
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-c
		server.Unmount()
	}()
	server.Wait()
}
