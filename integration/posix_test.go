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
