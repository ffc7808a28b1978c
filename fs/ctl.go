package fs

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ctlFile is <mnt>/.sync/ctl, the one writable file under .sync: each line written
// is a command (sync, sync PEER, connect ADDR, peer add KEY@ADDR [NAME]) run before
// the write returns. A bad or failed command fails the write with EINVAL; reading
// ctl shows the outcome of the last command (`cat .sync/ctl`).
type ctlFile struct {
	gofs.Inode
	fsys *FS

	mu   sync.Mutex // guards last
	last string
}

var (
	_ = (gofs.NodeOpener)((*ctlFile)(nil))
	_ = (gofs.NodeReader)((*ctlFile)(nil))
	_ = (gofs.NodeWriter)((*ctlFile)(nil))
	_ = (gofs.NodeSetattrer)((*ctlFile)(nil))
)

type ctlHandle struct {
	mu      sync.Mutex // guards partial
	partial string     // a line not ended yet
}

func (c *ctlFile) text() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return []byte(c.last)
}

func (c *ctlFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	c.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o644, int64(len(c.text())), time.Now().UnixMilli())
	out.SetTimeout(0)
	return 0
}

// Setattr accepts the truncation `echo cmd > ctl` does, and nothing else.
func (c *ctlFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && sz != 0 {
		return syscall.EINVAL
	}
	if errno := c.fsys.checkSetattr(in, syscall.S_IFREG|0o644); errno != 0 {
		return errno
	}
	return c.Getattr(ctx, f, out)
}

func (c *ctlFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return &ctlHandle{}, fuse.FOPEN_DIRECT_IO, 0
}

func (c *ctlFile) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	data := c.text()
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(data[off:min(int64(len(data)), off+int64(len(dest)))]), 0
}

func (c *ctlFile) Write(ctx context.Context, f gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h := f.(*ctlHandle)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.partial += string(data)
	for {
		line, rest, ok := strings.Cut(h.partial, "\n")
		if !ok {
			break
		}
		h.partial = rest
		if errno := c.run(strings.TrimSpace(line)); errno != 0 {
			return 0, errno
		}
	}
	return uint32(len(data)), 0
}

// Flush runs a last command written without a newline.
func (c *ctlFile) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	h := f.(*ctlHandle)
	h.mu.Lock()
	line := strings.TrimSpace(h.partial)
	h.partial = ""
	h.mu.Unlock()
	return c.run(line)
}

func (c *ctlFile) run(cmd string) syscall.Errno {
	if cmd == "" {
		return 0
	}
	var out string
	var err error
	if c.fsys.opts.Sync == nil {
		err = errNoSync
	} else {
		out, err = c.fsys.opts.Sync.Control(cmd)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.last = cmd + ": error: " + err.Error() + "\n"
		slog.Warn("ctl command failed", "command", cmd, "err", err)
		return syscall.EINVAL
	}
	c.last = cmd + ": ok\n" + out
	return 0
}

type ctlError string

func (e ctlError) Error() string { return string(e) }

const errNoSync = ctlError("this mount runs no sync")
