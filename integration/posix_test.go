package integration

import (
	"os"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// TestPosixSubset runs the part of go-fuse's POSIX conformance suite that applies
// to eidefs, each test in a fresh store. Left out: links and symlinks
// (Link, LinkUnlinkRename, SymlinkReadlink, SetattrSymlink, OpenSymlinkRace),
// extended attributes (XAttr, XAttrLarge), file locks (FcntlFlock*), Fallocate,
// and FileBasic, which expects a file created with mode 0755 to keep it.
func TestPosixSubset(t *testing.T) {
	m := mount(t, mountOpts{})
	if err := os.Mkdir(m.Path("posix"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{
		"AppendWrite", "DirSeek", "DirectIO", "FdLeak", "FileLarge", "FstatDeleted",
		"LseekEnxioCheck", "LseekHoleSeeksToEOF", "MkdirRmdir", "NlinkZero", "OpenAt",
		"ParallelFileOpen", "ReadDirBasic", "ReadDirConsistency", "RenameOpenDir",
		"RenameOverwriteDestExist", "RenameOverwriteDestNoExist", "TruncateFile", "TruncateNoFile",
	} {
		fn := posixtest.All[name]
		if fn == nil {
			t.Errorf("posixtest has no test %s", name)
			continue
		}
		t.Run(name, func(t *testing.T) {
			dir := m.Path("posix", name)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			fn(t, dir)
		})
	}
}

// TestRemovedDirectoryDescriptor: a directory replaced by a rename while a
// descriptor holds it, and one removed while it is a shell's working directory,
// are still directories to fstat and stat ".", with no links, as on the local
// disk the same script runs on (TestModel found fstat answering ENOENT).
func TestRemovedDirectoryDescriptor(t *testing.T) {
	m := mount(t, mountOpts{})
	store := newStore(t, m, "notes", "todo")
	// The sleep outlasts the kernel's attribute cache (1 s), so the stats reach the mount.
	const script = `mkdir a b e && exec 3<a && mv -T e a && cd b && rmdir ../b && sleep 1.2 &&
stat -L -c '%F %h' /proc/self/fd/3 && stat -c '%F %h' .`
	want := mustSh(t, t.TempDir(), script)
	if got := mustSh(t, store, script); got != want {
		t.Errorf("on the mount:\n%s\non the disk:\n%s", got, want)
	}
}
