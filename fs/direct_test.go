package fs

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestWritersBypassThePageCache: a write-only descriptor's writes skip the
// inode's page cache (FOPEN_DIRECT_IO), so a file written with `>`, cp or dd is
// not also copied into the mount's pages; around such writers every reader still
// reads what was written, as on a disk:
//   - a reader opened while the writer appends reads the new bytes, not the old
//     end or zeros (`tail -f` of a file being copied);
//   - a reader opened before the writer, whose pages the kernel keeps, too;
//   - a file read (its pages cached) and then partly overwritten in place
//     (dd conv=notrunc) reads back with the new bytes;
//   - a file so written can be mapped and read.
func TestWritersBypassThePageCache(t *testing.T) {
	requireFUSE(t)
	for _, size := range []int{5000, 3 << 20} {
		t.Run(map[int]string{5000: "small", 3 << 20: "large"}[size], func(t *testing.T) {
			_, mnt := mountOn(t, newBlobInstance(t))
			dir := filepath.Join(mnt, "d", "s")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			testDirectWriters(t, dir, size)
		})
	}
}

func testDirectWriters(t *testing.T, dir string, size int) {
	p := filepath.Join(dir, "f")
	first, more := randBytes(size), randBytes(size)

	// A reader opened while the writer appends.
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() }) // (also when the test fails: the mount must unmount)
	mustWrite(t, w, first)
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	expectRead(t, "a reader opened during the writes", r, 0, first)
	m := mapFile(t, p, len(first), false) // a reader's mapping while the writer writes
	if got := m.bytes(t); !bytes.Equal(got, first) {
		t.Fatalf("the mapping differs at byte %d", firstDifference(got, first))
	}
	mustWrite(t, w, more)
	expectRead(t, "the same reader after more writes", r, 0, append(append([]byte{}, first...), more...))
	// A write in place reaches the mapping, a few milliseconds after it returns
	// (on a disk, as it returns).
	first[10] ^= 0xff
	if _, err := w.WriteAt(first[10:11], 10); err != nil {
		t.Fatal(err)
	}
	m.await(t, first, "a write")
	m.close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	want := append(append([]byte{}, first...), more...)
	expectFile(t, "after the close", p, want)

	// Mapped and read.
	if got, err := mapOnce(p, len(want)); err != nil {
		t.Errorf("mapping the file: %v", err)
	} else if !bytes.Equal(got, want) {
		t.Errorf("the mapping differs at byte %d", firstDifference(got, want))
	}

	// The file's pages cached by a reader that has closed, then a writer in
	// place alone (dd conv=notrunc).
	expectFile(t, "read again", p, want)
	patch := bytes.Repeat([]byte{'x'}, 3000)
	w, err = os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(patch, int64(size)); err != nil {
		t.Fatal(err)
	}
	copy(want[size:], patch)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	expectFile(t, "after a lone writer in place", p, want)

	// A reader opened before the writer (its pages cached), then a writer in
	// place, without O_TRUNC. (A reader of a large file passing through goes on
	// reading the version it opened: TestLargeReadsPassThrough.)
	if size > 64<<10 {
		return
	}
	r, err = os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	expectRead(t, "a reader before the writer", r, 0, want)
	w, err = os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(patch, 1000); err != nil {
		t.Fatal(err)
	}
	copy(want[1000:], patch)
	expectRead(t, "the earlier reader after a write in place", r, 0, want)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	expectFile(t, "after the write in place", p, want)

}

// TestWrittenBytesNotCachedTwice: a large file written by a write-only
// descriptor leaves none of its pages in the mount's page cache (they would be
// a second copy of what the mount keeps), as mincore(2) of a mapping shows; a
// file written through a read-write descriptor does, as ever, and a small one
// written by a write-only descriptor is handed to the kernel at its commit, so
// reading it right after is served from the page cache. (The mount does not
// pass reads through here: a mapping would show the blob file's pages.)
func TestWrittenBytesNotCachedTwice(t *testing.T) {
	requireFUSE(t)
	f, mnt := mountWith(t, Options{Instance: newBlobInstance(t), NoPassthrough: true})
	dir := filepath.Join(mnt, "d", "s")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		size   int
		flags  int
		cached bool
	}{
		{"large-write-only", 1 << 20, os.O_WRONLY, false},
		{"large-read-write", 1 << 20, os.O_RDWR, true},
		{"small-write-only", 40 << 10, os.O_WRONLY, true},
	} {
		size := tc.size
		p := filepath.Join(dir, tc.name)
		w, err := os.OpenFile(p, tc.flags|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, w, randBytes(size))
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		// A reader opening before the writer's release would bypass the page
		// cache too (directLocked), and mapping such a descriptor drops the pages.
		waitReleased(t, f, "d", "s", tc.name)
		r, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		m, err := unix.Mmap(int(r.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatal(err)
		}
		vec := make([]byte, size/os.Getpagesize())
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			t.Fatal(e)
		}
		resident := 0
		for _, v := range vec {
			resident += int(v & 1)
		}
		unix.Munmap(m)
		r.Close()
		if got := resident > 0; got != tc.cached {
			t.Errorf("%s: %d of %d pages in the page cache after the close; want cached=%v", tc.name, resident, len(vec), tc.cached)
		}
	}
}

// waitReleased returns once no descriptor of the file at names (below the
// mount's root) is open: the kernel sends a descriptor's release after its
// close(2) has returned.
func waitReleased(t *testing.T, f *FS, names ...string) {
	t.Helper()
	for try := 0; ; try++ {
		in := f.root.EmbeddedInode()
		for _, name := range names {
			if in = in.GetChild(name); in == nil {
				t.Fatalf("the mount does not know %v", names)
			}
		}
		n := in.Operations().(*fileNode)
		n.mu.Lock()
		open := n.passOpen + n.cacheOpen
		n.mu.Unlock()
		if open == 0 {
			return
		}
		if try == 500 {
			t.Fatalf("%v: %d descriptors still open 5 s after the last close", names, open)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustWrite(t *testing.T, f *os.File, b []byte) {
	t.Helper()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// expectRead fails the test unless f reads want from off to its end.
func expectRead(t *testing.T, what string, f *os.File, off int64, want []byte) {
	t.Helper()
	got, err := io.ReadAll(io.NewSectionReader(f, off, 1<<40))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: read %d bytes, want %d; first difference at byte %d", what, len(got), len(want), firstDifference(got, want))
	}
}

func expectFile(t *testing.T, what, p string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: read %d bytes, want %d; first difference at byte %d", what, len(got), len(want), firstDifference(got, want))
	}
}

// TestMappingFollowsDirectWrites: a mapping read over and over while a
// write-only descriptor writes in place ends up showing what was written.
func TestMappingFollowsDirectWrites(t *testing.T) {
	requireFUSE(t)
	_, mnt := mountOn(t, newBlobInstance(t))
	dir := filepath.Join(mnt, "d", "s")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "f")
	want := randBytes(32 << 10)
	w, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	mustWrite(t, w, want)
	m := mapFile(t, p, len(want), true) // reads it over and over, while w is open
	m.bytes(t)                          // (mapped)
	rng := newRand(7)
	for range 3000 {
		off := rng.IntN(len(want) - 16)
		b := randBytes(1 + rng.IntN(16))
		copy(want[off:], b)
		if _, err := w.WriteAt(b, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	m.await(t, want, "the writes")
}

// TestToolsWriteInLargeRequests: files report st_blksize of 1 MiB, the largest
// write request the mount takes, so `cp` (which sizes its buffer by it) writes
// a large file in 1 MiB requests, not 128 KiB ones: a 64 MiB copy took 63–78 ms
// instead of 84–117 (docs/performance.md).
func TestToolsWriteInLargeRequests(t *testing.T) {
	requireFUSE(t)
	cp, err := exec.LookPath("cp")
	if err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int64
	_, mnt := mountWith(t, Options{Instance: newBlobInstance(t), Observe: counting("write", &writes)})
	dir := filepath.Join(mnt, "d", "s")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(t.TempDir(), "src")
	want := randBytes(8 << 20)
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(cp, src, filepath.Join(dir, "f")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	expectFile(t, "the copy", filepath.Join(dir, "f"), want)
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blksize != 1<<20 {
		t.Errorf("st_blksize %d, want %d", st.Blksize, 1<<20)
	}
	if n := writes.Load(); n > 8+1 {
		t.Errorf("cp of 8 MiB sent %d write requests; want 8", n)
	}
}
