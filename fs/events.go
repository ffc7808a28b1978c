package fs

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// eventsFile is <mnt>/.sync/events: each open subscribes to the engine's events
// and reading blocks until changes come, one JSON line per changed key, until the
// reader closes it (`cat .sync/events | jq`). Direct I/O: the size is unknown.
type eventsFile struct {
	gofs.Inode
	fsys *FS
}

var (
	_ = (gofs.NodeOpener)((*eventsFile)(nil))
	_ = (gofs.NodeReader)((*eventsFile)(nil))
	_ = (gofs.NodeReleaser)((*eventsFile)(nil))
)

type eventsHandle struct {
	sub  *engine.Subscription
	mu   sync.Mutex // guards buf
	buf  []byte     // encoded lines not read yet
	once sync.Once
}

// eventLine is one line of .sync/events.
type eventLine struct {
	DB     string `json:"db"`
	DBID   string `json:"db_id"`
	Store  string `json:"store"`
	Key    string `json:"key"` // path in the store, names joined by "/"
	Op     string `json:"op"`  // value, map, delete, link
	Entry  string `json:"entry"`
	Author string `json:"author"`
	Origin string `json:"origin"` // "local", or the peer's key the entry came from
	Time   string `json:"time"`
}

func (e *eventsFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	e.fsys.setAttr(&out.Attr, syscall.S_IFREG|0o444, 0, time.Now().UnixMilli())
	out.SetTimeout(0)
	return 0
}

func (e *eventsFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (e *eventsFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return &eventsHandle{sub: e.fsys.inst.Subscribe()}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NONSEEKABLE, 0
}

func (e *eventsFile) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h := f.(*eventsHandle)
	for {
		h.mu.Lock()
		if len(h.buf) > 0 {
			n := copy(dest, h.buf)
			h.buf = h.buf[n:]
			h.mu.Unlock()
			return fuse.ReadResultData(dest[:n]), 0
		}
		h.mu.Unlock()
		select {
		case ev, ok := <-h.sub.C:
			if !ok {
				return fuse.ReadResultData(nil), 0 // unmounting: end of file
			}
			lines := e.fsys.eventLines(ev)
			h.mu.Lock()
			h.buf = append(h.buf, lines...)
			h.mu.Unlock()
		case <-ctx.Done():
			return nil, syscall.EINTR
		case <-e.fsys.done:
			return fuse.ReadResultData(nil), 0
		}
	}
}

func (e *eventsFile) Release(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	h := f.(*eventsHandle)
	h.once.Do(h.sub.Close)
	return 0
}

func (f *FS) eventLines(ev engine.Event) []byte {
	name := ev.DB.Short()
	if d, ok := f.inst.DatabaseByID(ev.DB); ok {
		name = d.Name()
	}
	origin := "local"
	if !ev.Local {
		origin = ev.Origin
	}
	var b []byte
	for _, c := range ev.Changes {
		if c.Store == engine.SettingsStore {
			continue
		}
		line, _ := json.Marshal(eventLine{DB: name, DBID: ev.DB.String(), Store: c.Store, Key: strings.Join(c.Path, "/"),
			Op: c.Kind.String(), Entry: ev.Entry.String(), Author: ev.Author.String(), Origin: origin,
			Time: time.UnixMilli(ev.Time).UTC().Format(time.RFC3339Nano)})
		b = append(append(b, line...), '\n')
	}
	return b
}
