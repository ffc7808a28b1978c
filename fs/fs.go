// Package fs serves eidefs databases as a FUSE filesystem (go-fuse v2, node API):
// the root lists databases, a database lists its stores, a store holds keys as files
// and nested maps as directories; <root>/.sync and <db>/.sync hold generated,
// read-only status files.
//
// It owns the mapping from file operations to engine transactions (a file's writes
// are buffered and committed once, on close or fsync) and the kernel cache
// invalidation when entries arrive from elsewhere. It has no storage or network
// code: everything goes through engine.
package fs

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Options configure a mount.
type Options struct {
	Instance *engine.Instance
	// MaxValue is the largest file; writes past it fail with EFBIG.
	MaxValue int
	// LocalOnly are glob patterns of file names kept in a local, never replicated
	// overlay (editor swap files, sed -i temporaries).
	LocalOnly []string
	// EntryTimeout and AttrTimeout are the kernel cache lifetimes.
	EntryTimeout, AttrTimeout time.Duration
	// StatfsDir is a directory on the disk holding the data, reported by statfs.
	StatfsDir string
	// Debug logs every FUSE request.
	Debug bool
	// NoPassthrough keeps every read in this process, also where the kernel could
	// read large files' blob files directly (see passHandle).
	NoPassthrough bool
	// PassWrites lets the kernel write files created on the mount, and files
	// opened by a single writer, straight into spill files (see dirNode.Create,
	// fileNode.kernelWritesLocked), where it passes reads through. Writes past
	// MaxValue then succeed and the close fails with EFBIG (the mount's
	// default, cmd/eidefs, turns it on; see docs/design.md).
	PassWrites bool
	// Sync, if set, provides the sync views of <mnt>/.sync/.
	Sync SyncViews
	// Observe, if set, is told of FUSE requests (metrics).
	Observe Observer
}

// SyncViews is what the filesystem shows of sync, provided by whoever runs sync
// (fs does not depend on netsync). Each method returns a whole file's content.
type SyncViews interface {
	// Status is key: value lines about this node and its peers; StatusJSON the same
	// as a JSON object.
	Status() []byte
	StatusJSON() []byte
	// PeerNames lists the peers; PeerFile is one of a peer's files (see peerFiles).
	PeerNames() []string
	PeerFile(peer, file string) ([]byte, bool)
	// History is one line per sync, oldest first; it only grows (tail -f).
	History() []byte
	// DBPeers is one line per peer syncing the database, with its cursor.
	DBPeers(db engine.ID) []byte
	// DBTicket is a read-only share ticket for the database (one line).
	DBTicket(db engine.ID) []byte
	// Wait blocks until the entry whose id starts with prefix is held by n peers
	// (then lists them), the context ends, or its time limit passes (ErrTimeout).
	Wait(ctx context.Context, prefix string, n int) ([]byte, error)
	// Control runs one command written to .sync/ctl and describes the outcome.
	Control(cmd string) (string, error)
}

// FS is a mounted filesystem.
type FS struct {
	inst     *engine.Instance
	opts     Options
	uid, gid uint32
	root     *rootNode
	ctl      *ctlFile // one node, so every open sees the last command's outcome
	server   *fuse.Server
	// passthrough: the kernel serves reads of large stored files from their
	// blob files (probePassthrough).
	passthrough atomic.Bool
	// directWrites: write-only descriptors may bypass the page cache
	// (fileNode.directLocked); the kernel maps such files (Linux 6.6 and later).
	directWrites atomic.Bool
	// releasing counts file releases under way (statfsFS.Release).
	releasing atomic.Int64
	sub       *engine.Subscription
	done      chan struct{}
	// remote counts the changes from elsewhere that invalidateLoop has begun to
	// deliver to the kernel; see recheckLookup.
	remote atomic.Uint64

	mu     sync.Mutex // guards hidden, unlink*, open, gens, noPassIno and opts.LocalOnly
	hidden map[string]*hiddenKey
	// unlinkGen counts unlinks; unlinkTimer, if set, will flush them. unlinked
	// are the keys hidden for unlinks, in order, the first unlinkedFlushed of
	// them committed (see flushUnlinks).
	unlinkGen       uint64
	unlinkTimer     *time.Timer
	unlinked        []*hiddenKey
	unlinkedFlushed int
	open            map[*fileNode]bool // nodes with content in memory
	spareMu         sync.Mutex         // guards spares
	spares          []*os.File         // spill files to use again (spillFile)
	gens            map[genKey]uint32  // see childIno
	noPassIno       map[genKey]uint64  // see retireForWriter

	panics atomic.Int64
}

// recovered answers a request whose handler panicked: EIO for it, an error in
// the log, and the mount goes on serving the others.
func (f *FS) recovered(v any) fuse.Status {
	f.panics.Add(1)
	slog.Error(panicMessage, "panic", v, "stack", string(debug.Stack()))
	return fuse.EIO
}

// panicMessage starts the log line of a request that panicked; tests look for it.
const panicMessage = "filesystem request panicked"

// Panics is how many requests have panicked (and failed with EIO) so far.
func (f *FS) Panics() int64 { return f.panics.Load() }

// originFS tags the commits made by the filesystem, whose kernel caches are
// already right.
const originFS = "fs"

// hideDelay is how long a key renamed to a local-only name (an editor's backup)
// stays hidden before its deletion is committed; re-creating it in that window
// makes the save a single commit.
const hideDelay = 2 * time.Second

// Mount mounts the instance's databases at dir.
func Mount(dir string, o Options) (*FS, error) {
	if o.PassWrites && !leasesWork(o.Instance) {
		// Without write leases the mount cannot tell when nothing writes a file
		// the kernel wrote any more (othersWrite): its writes go through it.
		o.PassWrites = false
	}
	if o.MaxValue == 0 {
		o.MaxValue = 64 << 20
	}
	f := &FS{inst: o.Instance, opts: o, uid: uint32(syscall.Getuid()), gid: uint32(syscall.Getgid()),
		hidden: map[string]*hiddenKey{}, gens: map[genKey]uint32{}, noPassIno: map[genKey]uint64{}, open: map[*fileNode]bool{}, done: make(chan struct{})}
	f.root = &rootNode{fsys: f}
	f.ctl = &ctlFile{fsys: f}
	// DIRECT_IO_ALLOW_MMAP: a descriptor opened with FOPEN_DIRECT_IO can be
	// mapped (see fileNode.directLocked).
	caps := uint64(fuse.CAP_READDIRPLUS_AUTO | fuse.CAP_HANDLE_KILLPRIV_V2 | fuse.CAP_DIRECT_IO_ALLOW_MMAP)
	if o.PassWrites && !o.NoPassthrough {
		// open(O_TRUNC) arrives as one OPEN with O_TRUNC rather than an OPEN and
		// then a SETATTR to size 0: an open whose writes pass through must know
		// it need not copy the bytes it is about to cut (fileNode.Open).
		caps |= fuse.CAP_ATOMIC_O_TRUNC
	}
	entry, attr := o.EntryTimeout, o.AttrTimeout
	var neg time.Duration // no negative caching: a peer may create any name
	gopts := &gofs.Options{
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &neg,
		UID:             f.uid,
		GID:             f.gid,
		MountOptions: fuse.MountOptions{
			FsName:      "eidefs",
			Name:        "eidefs",
			DirectMount: syscall.Geteuid() == 0,
			MaxWrite:    1 << 20,
			Debug:       o.Debug,
			// The kernel sends READDIRPLUS (names with attributes) only while the
			// reader looks the names up (ls -l, find, grep -r), plain READDIR for
			// a bare ls: no inode per name when nobody asks.
			//
			// HANDLE_KILLPRIV_V2: clearing setuid/setgid bits and file
			// capabilities on a write is this filesystem's business, and there
			// are none to clear (modes are fixed, chmod u+s is EPERM, no
			// security.* xattrs). Without it the kernel asks for
			// security.capability (a GETXATTR round trip) before every write(2).
			ExtraCapabilities: caps,
			// A file's pages never go stale under the kernel: an inode stands for
			// one version (see fileNode), so what the kernel caches of it changes
			// only through it, and an open of another version drops the pages
			// (no FOPEN_KEEP_CACHE). No invalidation when mtime changes, then: a
			// file just written is reread from the page cache.
			ExplicitDataCacheControl: true,
			// A request that panics fails with EIO, as go-fuse's default does;
			// it is logged as an error with its stack, and counted (Panics).
			PanicHandler: f.recovered,
		},
	}
	// gofs.Mount's steps, so requests can be observed on their way in.
	var raw fuse.RawFileSystem = &statfsFS{RawFileSystem: gofs.NewNodeFS(f.root, gopts), fsys: f}
	if o.Observe != nil {
		raw = &observedFS{RawFileSystem: raw, observe: o.Observe}
	}
	server, err := fuse.NewServer(raw, dir, &gopts.MountOptions)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, err
	}
	f.server = server
	f.passthrough.Store(f.probePassthrough())
	f.directWrites.Store(server.KernelSettings().Flags64()&fuse.CAP_DIRECT_IO_ALLOW_MMAP != 0)
	f.sub = f.inst.Subscribe()
	go f.invalidateLoop()
	return f, nil
}

// probePassthrough reports whether the kernel lets this mount hand it files to
// serve reads from (FUSE passthrough: Linux 6.9 or later, and CAP_SYS_ADMIN):
// it registers a spill file as a backing file and takes it back.
func (f *FS) probePassthrough() bool {
	if f.opts.NoPassthrough {
		return false
	}
	file, err := f.inst.SpillFile()
	if err != nil || file == nil {
		return false // blobs in memory: no files to pass through to
	}
	defer file.Close()
	id, errno := f.server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(file.Fd())})
	if errno != 0 {
		return false
	}
	f.server.UnregisterBackingFd(id)
	return true
}

// Passthrough reports whether readers of large files read their blob files
// directly (see passHandle).
func (f *FS) Passthrough() bool { return f.passthrough.Load() }

// PassWrites reports whether the kernel writes files created here (or opened by
// a single writer) itself: Options.PassWrites, where the kernel passes files
// through and grants write leases.
func (f *FS) PassWrites() bool { return f.opts.PassWrites && f.passthrough.Load() }

// leasesWork reports whether the kernel grants write leases on spill files
// (not where fs.leases-enable is 0, or file locking is not built in).
func leasesWork(inst *engine.Instance) bool {
	f, err := inst.SpillFile()
	if err != nil || f == nil {
		return false
	}
	defer f.Close()
	return !othersWrite(f)
}

// Wait blocks until the filesystem is unmounted.
func (f *FS) Wait() { f.server.Wait() }

// Unmount commits every buffered write, then unmounts.
func (f *FS) Unmount() error {
	f.FlushAll()
	err := f.server.Unmount()
	f.stop()
	return err
}

func (f *FS) stop() {
	select {
	case <-f.done:
	default:
		close(f.done)
		f.sub.Close()
	}
	f.mu.Lock()
	var keys []string
	for k, h := range f.hidden {
		if h.timer != nil && h.timer.Stop() {
			keys = append(keys, k)
		}
	}
	f.mu.Unlock()
	for _, k := range keys {
		f.commitHiddenDelete(k)
	}
	f.flushUnlinks()
	f.spareMu.Lock()
	for _, sp := range f.spares {
		sp.Close()
	}
	f.spares = nil
	f.spareMu.Unlock()
}

// FlushAll commits the buffered writes of every open file.
func (f *FS) FlushAll() {
	f.mu.Lock()
	nodes := make([]*fileNode, 0, len(f.open))
	for n := range f.open {
		nodes = append(nodes, n)
	}
	f.mu.Unlock()
	for _, n := range nodes {
		n.flush(engine.Sync)
	}
}

func (f *FS) isLocalOnly(name string) bool {
	f.mu.Lock()
	patterns := f.opts.LocalOnly
	f.mu.Unlock()
	for _, p := range patterns {
		if ok, _ := filepath.Match(p, name); ok {
			return true
		}
	}
	return false
}

// SetLocalOnly replaces the local-only patterns (configuration reload).
func (f *FS) SetLocalOnly(patterns []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opts.LocalOnly = patterns
}

// ino derives a stable inode number from what a node is.
func ino(kind byte, db engine.ID, store string, path []string) uint64 {
	h := fnv.New64a()
	h.Write([]byte{kind})
	h.Write(db[:])
	h.Write([]byte(store))
	for _, p := range path {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	v := h.Sum64()
	if v < 16 {
		v += 16 // low numbers are the root's and go-fuse's
	}
	return v
}

type genKey struct {
	parent uint64
	name   string
}

// childIno is the inode number of name in parent: a hash of the parent's number,
// the name and the kind, so it is the same on every mount. go-fuse shares one
// inode among all lookups of a number, so a node that moved away (renamed, or
// unlinked while still open) keeps its number and the path it left gets the next
// generation's.
func (f *FS) childIno(parent *gofs.Inode, name string, kind byte) uint64 {
	p := parent.StableAttr().Ino
	f.mu.Lock()
	g := f.gens[genKey{p, name}]
	f.mu.Unlock()
	return genIno(p, name, kind, g)
}

// genIno is the number of generation g of name (of kind) in the directory
// numbered p.
func genIno(p uint64, name string, kind byte, g uint32) uint64 {
	h := fnv.New64a()
	var b [13]byte
	b[0] = kind
	binary.LittleEndian.PutUint64(b[1:], p)
	binary.LittleEndian.PutUint32(b[9:], g)
	h.Write(b[:])
	h.Write([]byte(name))
	v := h.Sum64()
	if v < 16 {
		v += 16
	}
	return v
}

// retire gives name in parent a new generation of inode numbers: its node left.
func (f *FS) retire(parent *gofs.Inode, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := genKey{parent.StableAttr().Ino, name}
	f.gens[k]++
	delete(f.noPassIno, k) // a later generation passes through again
}

// retireForWriter is retire for a writer that met readers passing through (see
// detachForWriterLocked): the file inode of the new generation refuses
// passthrough, and every lookup racing to make it agrees, since they compute the
// same number.
func (f *FS) retireForWriter(parent *gofs.Inode, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := parent.StableAttr().Ino
	k := genKey{p, name}
	f.gens[k]++
	f.noPassIno[k] = genIno(p, name, 'f', f.gens[k])
}

// refusesPass reports whether a new file inode numbered ino for name refuses
// passthrough.
func (f *FS) refusesPass(parent *gofs.Inode, name string, ino uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.noPassIno[genKey{parent.StableAttr().Ino, name}] == ino
}

// toErrno maps engine errors to errnos: the one place that does.
func toErrno(err error) syscall.Errno {
	var en syscall.Errno
	switch {
	case err == nil:
		return 0
	case errors.As(err, &en):
		return en
	case errors.Is(err, engine.ErrNotFound), errors.Is(err, engine.ErrUnknownDatabase):
		return syscall.ENOENT
	case errors.Is(err, engine.ErrNotDir):
		return syscall.ENOTDIR
	case errors.Is(err, engine.ErrIsDir):
		return syscall.EISDIR
	case errors.Is(err, engine.ErrExists):
		return syscall.EEXIST
	case errors.Is(err, engine.ErrNameTooLong):
		return syscall.ENAMETOOLONG
	case errors.Is(err, engine.ErrTooLarge):
		return syscall.EFBIG
	case errors.Is(err, engine.ErrNotAuthorized):
		return syscall.EACCES
	case errors.Is(err, engine.ErrInvalidName), errors.Is(err, engine.ErrReserved):
		return syscall.EPERM
	}
	return gofs.ToErrno(err)
}

func checkName(name string) syscall.Errno {
	if len(name) > engine.MaxNameLen {
		return syscall.ENAMETOOLONG
	}
	if name == ".sync" {
		return syscall.EPERM
	}
	return 0
}

func (f *FS) setAttr(out *fuse.Attr, mode uint32, size int64, mtimeMs int64) {
	out.Mode = mode
	out.Size = uint64(size)
	out.Blocks = (uint64(size) + 511) / 512
	// The preferred I/O size: the largest write request (MaxWrite). cp sizes its
	// buffer by it; at 64 KiB it wrote in 128 KiB requests, eight round trips per
	// MiB.
	out.Blksize = 1 << 20
	out.Nlink = 1 // unknown, as on btrfs, so find does not assume leaf dirs
	t := time.UnixMilli(mtimeMs)
	out.SetTimes(&t, &t, &t)
	out.Uid, out.Gid = f.uid, f.gid
}

const (
	modeDir  = syscall.S_IFDIR | 0o755
	modeFile = syscall.S_IFREG | 0o644
	modeLink = syscall.S_IFLNK | 0o777
)

// checkSetattr refuses real changes of mode or owner (EPERM) and accepts no-ops,
// so sed -i, editors and tar x work.
func (f *FS) checkSetattr(in *fuse.SetAttrIn, mode uint32) syscall.Errno {
	if m, ok := in.GetMode(); ok && m&0o7777 != mode&0o7777 {
		return syscall.EPERM
	}
	if u, ok := in.GetUID(); ok && u != f.uid {
		return syscall.EPERM
	}
	if g, ok := in.GetGID(); ok && g != f.gid {
		return syscall.EPERM
	}
	return 0
}

// statfsFS answers statfs for every node as for the root (`df`, and `stat -f` or
// `tail -F` on any file): go-fuse leaves nodes without a Statfs method zeroed.
type statfsFS struct {
	fuse.RawFileSystem
	fsys *FS
}

// Release brackets go-fuse's release of a file with FS.releasing: go-fuse drops a
// reference to the inode's backing file after every release, also of a descriptor
// that never held one (it passed no reads through), so a backing file registered
// for an open in between (our release done, go-fuse's drop not yet) would lose
// its reference and be unregistered before the kernel takes it (EIO for that
// open), or under the open descriptors of the inode (EIO for the next). Opens do
// not register one meanwhile (passableLocked).
func (s *statfsFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	s.fsys.releasing.Add(1)
	defer s.fsys.releasing.Add(-1)
	s.RawFileSystem.Release(cancel, in)
}

func (s *statfsFS) StatFs(cancel <-chan struct{}, in *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	return fuse.Status(s.fsys.statfs(out))
}

func (f *FS) statfs(out *fuse.StatfsOut) syscall.Errno {
	var st syscall.Statfs_t
	if f.opts.StatfsDir != "" && syscall.Statfs(f.opts.StatfsDir, &st) == nil {
		out.FromStatfsT(&st)
	} else {
		out.Bsize = 4096
	}
	out.NameLen = engine.MaxNameLen
	return 0
}
