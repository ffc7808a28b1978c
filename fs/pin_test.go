package fs

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestInodeLayout: the fields makePersistent sets, found by name at start-up
// (where the package panics if one is gone), are three distinct fields.
func TestInodeLayout(t *testing.T) {
	if inodeFields.persistent == inodeFields.mu || inodeFields.persistent == inodeFields.changeCounter {
		t.Fatalf("go-fuse Inode field offsets overlap: %+v", inodeFields)
	}
}

// TestForgottenFilesKeepTheirPlace: the kernel may forget any inode nobody has
// open (memory pressure, drop_caches), and go-fuse then takes it off its tree.
// What exists only here must survive that: local-only files (a stored file
// renamed to one, a file created under one, one written and then renamed to
// one), and files closed whose commit comes after their release (large files
// the kernel wrote, a file created and closed without a write). Before, such a
// commit took the file for unlinked and dropped it, and each local-only file was
// gone. The kernel is made to forget everything below the database directory
// right after each close (the entry of the database directory is dropped,
// which drops the entries below it, as drop_caches does).
func TestForgottenFilesKeepTheirPlace(t *testing.T) {
	requireFUSE(t)
	inst := newBlobInstance(t)
	f, mnt := mountWith(t, Options{Instance: inst, PassWrites: true})
	dir := filepath.Join(mnt, "d", "s")
	if err := os.MkdirAll(filepath.Join(dir, "deep", "er"), 0o755); err != nil {
		t.Fatal(err)
	}
	forget := func() {
		if d := f.root.EmbeddedInode().GetChild("d"); d != nil {
			d.NotifyEntry("s")
		}
		f.root.EmbeddedInode().NotifyEntry("d")
		// Then every unused dentry and inode of the machine (not its page cache).
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
			t.Fatalf("dropping the kernel's dentries and inodes: %v", err)
		}
	}
	write := func(name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	rename := func(from, to string) {
		t.Helper()
		if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string][]byte{}

	// Local-only files, three ways.
	write("a", []byte("stored first"))
	write("deep/er/q", []byte("stored below"))
	if got := storedWithin(inst, "a", []byte("stored first")); got != "stored first" {
		t.Fatalf("a: stored %q", got)
	}
	rename("a", "a~")
	rename("deep/er/q", "deep/er/q~")
	write("c~", []byte("created local-only"))
	write("tmp", []byte("written, then renamed"))
	rename("tmp", "t~")
	want["a~"], want["deep/er/q~"] = []byte("stored first"), []byte("stored below")
	want["c~"], want["t~"] = []byte("created local-only"), []byte("written, then renamed")
	check := func(names ...string) {
		t.Helper()
		time.Sleep(100 * time.Millisecond) // the FORGETs are on their way
		forget()
		for name, b := range want {
			got, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil || !bytes.Equal(got, b) {
				t.Errorf("%s after the kernel forgot it: %d bytes, %v (want %d bytes)", name, len(got), err, len(b))
			}
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
		}
		if !slices.Equal(got, names) {
			t.Errorf("listing %v, want %v", got, names)
		}
	}
	forget()
	check("a~", "c~", "deep", "t~")

	// Files committed after their release.
	var big []string
	for i := range 3 {
		b := make([]byte, 8<<20)
		rand.Read(b)
		name := "big" + string(rune('0'+i))
		write(name, b)
		forget()
		want[name] = b
		big = append(big, name)
	}
	fd, err := os.OpenFile(filepath.Join(dir, "empty"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fd.Close()
	forget()
	want["empty"] = []byte{}

	check("a~", "big0", "big1", "big2", "c~", "deep", "empty", "t~")
	for _, name := range append(big, "empty") {
		if got := storedWithin(inst, name, want[name]); got != string(want[name]) {
			t.Errorf("%s: the store has %d bytes, want %d", name, len(got), len(want[name]))
		}
	}
}
