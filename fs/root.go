package fs

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// rootNode lists the databases and .sync; mkdir creates a database.
type rootNode struct {
	gofs.Inode
	fsys *FS
}

var (
	_ = (gofs.NodeLookuper)((*rootNode)(nil))
	_ = (gofs.NodeReaddirer)((*rootNode)(nil))
	_ = (gofs.NodeMkdirer)((*rootNode)(nil))
)

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name == ".sync" {
		return r.fsys.genDirInode(ctx, r.EmbeddedInode(), 'G', engine.ID{}, r.fsys.globalSyncFiles(), out), 0
	}
	db, err := r.fsys.inst.Database(name)
	if err != nil || db.Name() != name {
		return nil, syscall.ENOENT
	}
	return r.fsys.dbInode(ctx, r.EmbeddedInode(), db, out), 0
}

func (f *FS) dbInode(ctx context.Context, parent *gofs.Inode, db *engine.Database, out *fuse.EntryOut) *gofs.Inode {
	f.setAttr(&out.Attr, modeDir, 0, int64(db.Info().Height))
	if ch := parent.GetChild(db.Name()); ch != nil {
		if d, ok := ch.Operations().(*dbNode); ok && d.id == db.ID() {
			// The kernel forgot it, and go-fuse kept it for what is pinned below
			// (see pin.go): a new inode would leave those files off the tree.
			return ch
		}
	}
	return parent.NewInode(ctx, &dbNode{fsys: f, id: db.ID()}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino('b', db.ID(), "", nil)})
}

func (r *rootNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	entries := []fuse.DirEntry{{Name: ".sync", Mode: syscall.S_IFDIR, Ino: ino('G', engine.ID{}, "", nil)}}
	for _, d := range r.fsys.inst.Databases() {
		entries = append(entries, fuse.DirEntry{Name: d.Name, Mode: syscall.S_IFDIR, Ino: ino('b', d.ID, "", nil)})
	}
	return gofs.NewListDirStream(entries), 0
}

func (r *rootNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name == ".sync" {
		return nil, syscall.EEXIST
	}
	if errno := checkName(name); errno != 0 {
		return nil, errno
	}
	db, err := r.fsys.inst.CreateDatabase(name, "")
	if err != nil {
		return nil, toErrno(err)
	}
	return r.fsys.dbInode(ctx, r.EmbeddedInode(), db, out), 0
}

func (r *rootNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.fsys.setAttr(&out.Attr, modeDir, 0, time.Now().UnixMilli())
	return 0
}

func (r *rootNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := r.fsys.checkSetattr(in, modeDir); errno != 0 {
		return errno
	}
	return r.Getattr(ctx, f, out)
}

// Files directly in the root, and removing or renaming databases, are refused.
func (r *rootNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}
func (r *rootNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	if name == ".sync" {
		return syscall.EROFS
	}
	return syscall.EPERM
}
func (r *rootNode) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EISDIR }
func (r *rootNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

// dbNode is one database: it lists its stores and .sync; mkdir creates a store.
type dbNode struct {
	gofs.Inode
	fsys *FS
	id   engine.ID
}

var (
	_ = (gofs.NodeLookuper)((*dbNode)(nil))
	_ = (gofs.NodeReaddirer)((*dbNode)(nil))
	_ = (gofs.NodeMkdirer)((*dbNode)(nil))
	_ = (gofs.NodeRmdirer)((*dbNode)(nil))
	_ = (gofs.NodeRenamer)((*dbNode)(nil))
)

func (d *dbNode) db() (*engine.Database, syscall.Errno) {
	db, ok := d.fsys.inst.DatabaseByID(d.id)
	if !ok {
		return nil, syscall.ENOENT
	}
	return db, 0
}

func (d *dbNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	start := d.fsys.lookupFrom()
	defer d.fsys.recheckLookup(start, d.EmbeddedInode(), name)
	db, errno := d.db()
	if errno != 0 {
		return nil, errno
	}
	if name == ".sync" {
		return d.fsys.genDirInode(ctx, d.EmbeddedInode(), 'S', d.id, d.fsys.dbSyncFiles(db), out), 0
	}
	if engine.CheckStoreName(name) != nil {
		return nil, syscall.ENOENT
	}
	n, err := db.Stat(name, nil)
	if err != nil {
		return nil, toErrno(err)
	}
	return d.fsys.newChild(ctx, d.EmbeddedInode(), loc{db: db, store: name}, n, out), 0
}

func (d *dbNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	db, errno := d.db()
	if errno != 0 {
		return nil, errno
	}
	entries := []fuse.DirEntry{{Name: ".sync", Mode: syscall.S_IFDIR, Ino: ino('S', d.id, "", nil)}}
	for _, s := range db.Stores() {
		entries = append(entries, fuse.DirEntry{Name: s, Mode: syscall.S_IFDIR, Ino: d.fsys.childIno(d.EmbeddedInode(), s, 'd')})
	}
	return gofs.NewListDirStream(entries), 0
}

func (d *dbNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	db, errno := d.db()
	if errno != 0 {
		return nil, errno
	}
	if name == ".sync" {
		return nil, syscall.EEXIST
	}
	if err := engine.CheckStoreName(name); err != nil {
		return nil, toErrno(err)
	}
	l := loc{db: db, store: name}
	if _, err := db.Stat(name, nil); err == nil {
		return nil, syscall.EEXIST
	}
	if errno := d.fsys.writable(l); errno != 0 {
		return nil, errno
	}
	if errno := d.fsys.commit(db, engine.Journal, func(tx *engine.Tx) { tx.Store(name).SetMap(nil) }); errno != 0 {
		return nil, errno
	}
	return d.fsys.newChild(ctx, d.EmbeddedInode(), l, engine.Node{Kind: engine.OpMap, Time: time.Now().UnixMilli()}, out), 0
}

func (d *dbNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	db, errno := d.db()
	if errno != 0 {
		return errno
	}
	if name == ".sync" {
		return syscall.EROFS
	}
	if engine.CheckStoreName(name) != nil {
		return syscall.ENOENT
	}
	return d.fsys.rmdir(d.EmbeddedInode(), loc{db: db, store: name})
}

func (d *dbNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	db, errno := d.db()
	if errno != 0 {
		return errno
	}
	if name == ".sync" {
		return syscall.EROFS
	}
	return d.fsys.rename(d.EmbeddedInode(), loc{db: db, store: name}, newParent, newName, flags)
}

func (d *dbNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	db, errno := d.db()
	if errno != 0 {
		return errno
	}
	d.fsys.setAttr(&out.Attr, modeDir, 0, int64(db.Info().Height))
	return 0
}

func (d *dbNode) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if errno := d.fsys.checkSetattr(in, modeDir); errno != 0 {
		return errno
	}
	return d.Getattr(ctx, f, out)
}

// A database holds stores (directories) only.
func (d *dbNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}
func (d *dbNode) Unlink(ctx context.Context, name string) syscall.Errno {
	if name == ".sync" {
		return syscall.EROFS
	}
	return syscall.EISDIR
}
func (d *dbNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// dbSyncFiles are the generated files of <db>/.sync. Those about the history
// commit the database's deferred deletes first (see FS.unlink): `rm f; tail
// .sync/log` shows the delete, as it shows a write.
func (f *FS) dbSyncFiles(db *engine.Database) map[string]func() []byte {
	fresh := func(gen func() []byte) func() []byte {
		return func() []byte {
			db.FlushDeletes(engine.Journal)
			return gen()
		}
	}
	files := map[string]func() []byte{
		"id": func() []byte { return []byte(db.ID().String() + "\n") },
		"tips": fresh(func() []byte {
			var b strings.Builder
			for _, t := range db.Tips() {
				b.WriteString(t.String() + "\n")
			}
			return []byte(b.String())
		}),
		"height":  fresh(func() []byte { return []byte(fmt.Sprintf("%d\n", db.Info().Height)) }),
		"entries": fresh(func() []byte { return []byte(fmt.Sprintf("%d\n", db.Info().Entries)) }),
		"log": fresh(func() []byte {
			var b strings.Builder
			err := db.Log(func(e engine.LogEntry) bool {
				fmt.Fprintf(&b, "%s %d %s %s %s %s\n", e.ID, e.Height, time.UnixMilli(e.Time).UTC().Format(time.RFC3339Nano), e.Author,
					strings.Join(e.Stores, ","), f.keysTouched(e.ID))
				return true
			})
			if err != nil {
				fmt.Fprintf(&b, "error: %v\n", err)
			}
			return []byte(b.String())
		}),
		"log.json": fresh(func() []byte {
			type js struct {
				ID      engine.ID        `json:"id"`
				Height  uint64           `json:"height"`
				Time    string           `json:"time"`
				Author  engine.PublicKey `json:"author"`
				Stores  []string         `json:"stores"`
				Parents []engine.ID      `json:"parents"`
				Ops     int              `json:"ops"`
			}
			out := []js{}
			db.Log(func(e engine.LogEntry) bool {
				out = append(out, js{e.ID, e.Height, time.UnixMilli(e.Time).UTC().Format(time.RFC3339Nano), e.Author, e.Stores, e.Parents, e.Ops})
				return true
			})
			b, _ := json.MarshalIndent(out, "", "  ")
			return append(b, '\n')
		}),
	}
	if f.opts.Sync != nil {
		files["peers"] = func() []byte { return f.opts.Sync.DBPeers(db.ID()) }
		files["ticket"] = func() []byte { return f.opts.Sync.DBTicket(db.ID()) }
	}
	return files
}

func (f *FS) globalSyncFiles() map[string]func() []byte {
	files := map[string]func() []byte{
		"id": func() []byte { return []byte(f.inst.Identity().Public().String() + "\n") },
	}
	if f.opts.Sync != nil {
		files["status"] = f.opts.Sync.Status
		files["status.json"] = f.opts.Sync.StatusJSON
		files["history"] = f.opts.Sync.History
	}
	return files
}

// Fsync on the root makes database creations durable (see dirNode.Fsync).
func (r *rootNode) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	return toErrno(r.fsys.inst.SyncJournal())
}

// Fsync on a database makes store creations and removals durable (see dirNode.Fsync).
func (d *dbNode) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	return toErrno(d.fsys.inst.SyncJournal())
}

// keysTouched is "store/path,…" of an entry's changes ("-" if none): the sixth
// field of .sync/log. '%', space, comma, tab and newline in names are written %25,
// %20, %2C, %09 and %0A, so fields never hold spaces (awk) and keys never commas.
func (f *FS) keysTouched(id engine.ID) string {
	changes, err := f.inst.Changes(id)
	if err != nil || len(changes) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(changes))
	for _, c := range changes {
		keys = append(keys, logEscaper.Replace(strings.Join(append([]string{c.Store}, c.Path...), "/")))
	}
	return strings.Join(keys, ",")
}

var logEscaper = strings.NewReplacer("%", "%25", " ", "%20", ",", "%2C", "\t", "%09", "\n", "%0A")
