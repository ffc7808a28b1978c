package fs

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Observer is told of every FUSE request of the common kinds: its name, how long it
// took, and whether it failed (metrics).
type Observer func(op string, took time.Duration, failed bool)

// observedFS times requests on their way to go-fuse's node bridge.
type observedFS struct {
	fuse.RawFileSystem
	observe Observer
}

func (o *observedFS) done(op string, start time.Time, st fuse.Status) fuse.Status {
	o.observe(op, time.Since(start), !st.Ok() && st != fuse.ENOENT)
	return st
}

func (o *observedFS) Lookup(c <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	return o.done("lookup", time.Now(), o.RawFileSystem.Lookup(c, h, name, out))
}
func (o *observedFS) GetAttr(c <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	return o.done("getattr", time.Now(), o.RawFileSystem.GetAttr(c, in, out))
}
func (o *observedFS) SetAttr(c <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	return o.done("setattr", time.Now(), o.RawFileSystem.SetAttr(c, in, out))
}
func (o *observedFS) Mkdir(c <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return o.done("mkdir", time.Now(), o.RawFileSystem.Mkdir(c, in, name, out))
}
func (o *observedFS) Unlink(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return o.done("unlink", time.Now(), o.RawFileSystem.Unlink(c, h, name))
}
func (o *observedFS) Rmdir(c <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return o.done("rmdir", time.Now(), o.RawFileSystem.Rmdir(c, h, name))
}
func (o *observedFS) Rename(c <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	return o.done("rename", time.Now(), o.RawFileSystem.Rename(c, in, oldName, newName))
}
func (o *observedFS) Create(c <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return o.done("create", time.Now(), o.RawFileSystem.Create(c, in, name, out))
}
func (o *observedFS) Open(c <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return o.done("open", time.Now(), o.RawFileSystem.Open(c, in, out))
}
func (o *observedFS) Read(c <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	start := time.Now()
	r, st := o.RawFileSystem.Read(c, in, buf)
	o.done("read", start, st)
	return r, st
}
func (o *observedFS) Write(c <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	start := time.Now()
	n, st := o.RawFileSystem.Write(c, in, data)
	o.done("write", start, st)
	return n, st
}
func (o *observedFS) Flush(c <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return o.done("flush", time.Now(), o.RawFileSystem.Flush(c, in))
}
func (o *observedFS) Fsync(c <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	return o.done("fsync", time.Now(), o.RawFileSystem.Fsync(c, in))
}
func (o *observedFS) ReadDir(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return o.done("readdir", time.Now(), o.RawFileSystem.ReadDir(c, in, out))
}
func (o *observedFS) ReadDirPlus(c <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return o.done("readdirplus", time.Now(), o.RawFileSystem.ReadDirPlus(c, in, out))
}
