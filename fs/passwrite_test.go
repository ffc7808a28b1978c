package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
)

// TestLargeWritesPassThrough: a file created on the mount, or opened by its only
// writer, is written by the kernel straight into a file of the mount's (FUSE
// passthrough): no write reaches the mount's process. A large one is parked at its close and committed
// after its last writer is gone; until then, and around it, the file behaves as
// on a disk:
//   - it reads back right after the close, and the store has it moments later;
//   - a reader and a second writer opened while the first writer is open share
//     its bytes;
//   - a write through a descriptor still open after another one was closed
//     (dup) is committed too;
//   - renamed while being written, it ends up whole under the new name only;
//   - fsync commits it while it is still open;
//   - removed right after its close, it is not committed at all;
//
// and nothing stays parked.
func TestLargeWritesPassThrough(t *testing.T) {
	requireFUSE(t)
	var writes atomic.Int64
	inst := newBlobInstance(t)
	f, mnt := mountWith(t, Options{Instance: inst, PassWrites: true, Observe: counting("write", &writes)})
	pass := passingThrough(t, f)
	if !pass {
		t.Log("this kernel has no FUSE passthrough: writes go through the mount; checking the rest")
	}
	for _, d := range []string{"d", "d/s"} {
		if err := os.Mkdir(filepath.Join(mnt, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	big := randBytes(5 << 20)
	at := func(name string) string { return filepath.Join(mnt, "d", "s", name) }
	stored := func(name string, want []byte) {
		t.Helper()
		if got := storedWithin(inst, name, want); got != string(want) {
			t.Fatalf("%s: the store holds %d bytes, want %d", name, len(got), len(want))
		}
	}
	const create = os.O_CREATE | os.O_EXCL | os.O_WRONLY
	// opened opens name with flag and writes b through the descriptor it returns.
	opened := func(name string, flag int, b []byte) *os.File {
		t.Helper()
		f, err := os.OpenFile(at(name), flag, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		return f
	}
	check := func(name string, want []byte) {
		t.Helper()
		if got, err := os.ReadFile(at(name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s reads %d bytes, %v; want %d", name, len(got), err, len(want))
		}
		stored(name, want)
	}

	// Written and read back.
	if err := os.WriteFile(at("one"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	check("one", big)
	if pass && writes.Load() != 0 {
		t.Errorf("%d write requests reached the mount; want none", writes.Load())
	}

	// A stored file written again, from the start (O_TRUNC) and at its end (>>).
	other := randBytes(4 << 20)
	if err := os.WriteFile(at("one"), other, 0o644); err != nil {
		t.Fatal(err)
	}
	check("one", other)
	if err := opened("one", os.O_WRONLY|os.O_APPEND, big[:1000]).Close(); err != nil {
		t.Fatal(err)
	}
	check("one", append(bytes.Clone(other), big[:1000]...))
	if pass && writes.Load() != 0 {
		t.Errorf("%d write requests reached the mount; want none", writes.Load())
	}
	if err := os.WriteFile(at("one"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	check("one", big)

	// O_RDONLY|O_TRUNC cuts a file on Linux too (with atomic O_TRUNC it comes as
	// an open, not as a truncate).
	if err := os.WriteFile(at("cut"), big[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := os.OpenFile(at("cut"), os.O_RDONLY|os.O_TRUNC, 0); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	check("cut", nil)

	// A reader and a second writer share the first writer's bytes.
	w1 := opened("two", create, big[:3<<20])
	r, err := os.Open(at("two"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(big)+1)
	if n, _ := r.ReadAt(buf, 0); n != 3<<20 || !bytes.Equal(buf[:n], big[:n]) {
		t.Errorf("a reader opened while the writer is open read %d bytes; want %d", n, 3<<20)
	}
	w2 := opened("two", os.O_WRONLY|os.O_APPEND, big[3<<20:])
	for _, c := range []*os.File{w1, w2} {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := r.ReadAt(buf, 0); n != len(big) || !bytes.Equal(buf[:n], big) {
		t.Errorf("the reader read %d bytes after the writers closed; want %d", n, len(big))
	}
	r.Close()
	check("two", big)

	// A write after another descriptor of the file was closed (its close parked
	// the file) is committed too.
	w := opened("dup", create, big[:2<<20])
	fd2, err := syscall.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := syscall.Pwrite(fd2, big[2<<20:], 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Close(fd2); err != nil {
		t.Fatal(err)
	}
	check("dup", big)

	// Renamed while being written.
	w = opened("old", create, big[:1<<20])
	if err := os.Rename(at("old"), at("new")); err != nil {
		t.Fatalf("rename while written: %v", err)
	}
	w.Write(big[1<<20:])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	check("new", big)
	if _, err := os.Stat(at("old")); !os.IsNotExist(err) {
		t.Errorf("the old name after the rename: %v; want ENOENT", err)
	}
	stored("old", nil)

	// fsync commits while the file is open.
	w = opened("synced", create, big)
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if got := readBack(inst, "d", "synced"); got != string(big) {
		t.Errorf("after fsync the store holds %d bytes; want %d", len(got), len(big))
	}
	w.Write(big[:10])
	w.Close()
	check("synced", append(bytes.Clone(big), big[:10]...))

	// Removed after a close parked it (a second descriptor keeps it from being
	// committed yet): never committed.
	d, err := inst.Database("d")
	if err != nil {
		t.Fatal(err)
	}
	entries := d.Info().Entries
	w = opened("gone", create, big)
	if fd2, err = syscall.Dup(int(w.Fd())); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if n := inst.Parked(); n != 1 {
		t.Errorf("%d values parked after the close; want 1", n)
	}
	if err := os.Remove(at("gone")); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd2)
	time.Sleep(200 * time.Millisecond)
	if got := d.Info().Entries; got != entries {
		t.Errorf("%d entries after a file was parked and removed; want %d, as before", got, entries)
	}
	if n := inst.Parked(); n != 0 {
		t.Errorf("%d values still parked", n)
	}
	if pass && writes.Load() != 0 {
		t.Errorf("%d write requests reached the mount; want none", writes.Load())
	}
}

// TestPassedWritesPastTheLimit: with writes passing through, the mount cannot
// refuse a write past the value limit; the close fails with EFBIG instead and
// nothing is committed.
func TestPassedWritesPastTheLimit(t *testing.T) {
	requireFUSE(t)
	inst := newBlobInstance(t)
	f, mnt := mountWith(t, Options{Instance: inst, PassWrites: true, MaxValue: 1 << 20})
	if !passingThrough(t, f) {
		t.Skip("no FUSE passthrough: writes past the limit fail as they are made (TestFileTooLarge)")
	}
	for _, d := range []string{"d", "d/s"} {
		if err := os.Mkdir(filepath.Join(mnt, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(mnt, "d", "s", "big")
	w, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(make([]byte, 1<<20+1)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("close of a file past the limit: %v, want EFBIG", err)
	}
	time.Sleep(100 * time.Millisecond)
	if got := readBack(inst, "d", "big"); got != "" {
		t.Errorf("the store holds %d bytes of a file past the limit", len(got))
	}
	if n := inst.Parked(); n != 0 {
		t.Errorf("%d values still parked", n)
	}
}

// TestPassedWritesThroughAMapping: a file created on the mount, sized with
// ftruncate, mapped shared and written through the mapping after its descriptor
// was closed (the kernel may release a passed-through descriptor while a mapping
// of its backing file still writes to it): the store ends with what the mapping
// wrote, and every blob is what its name says.
func TestPassedWritesThroughAMapping(t *testing.T) {
	inst, dir := mountPassedWrites(t)
	for _, size := range []int{3 << 20, 5000} {
		mappedFile(t, inst, filepath.Join(dir, fmt.Sprint("mapped", size)), size)
	}
}

// storedWithin waits up to 5 s for key of store s of database d to hold want (a
// file the kernel writes is committed after its last writer's release) and
// returns what it holds then.
func storedWithin(inst *engine.Instance, key string, want []byte) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := readBack(inst, "d", key)
		if got == string(want) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mountPassedWrites mounts an instance that keeps blobs on disk with passed
// writes and returns it and the directory of store s of database d.
func mountPassedWrites(t *testing.T) (*engine.Instance, string) {
	t.Helper()
	requireFUSE(t)
	inst := newBlobInstance(t)
	_, mnt := mountWith(t, Options{Instance: inst, PassWrites: true})
	dir := filepath.Join(mnt, "d", "s")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return inst, dir
}

func mappedFile(t *testing.T, inst *engine.Instance, p string, size int) {
	t.Helper()
	key := filepath.Base(p)
	w, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	m, err := syscall.Mmap(int(w.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // any commit after the release is done
	want := randBytes(size)
	copy(m, want)
	if err := syscall.Munmap(m); err != nil {
		t.Fatal(err)
	}
	if got := storedWithin(inst, key, want); got != string(want) {
		t.Fatalf("the store holds %d bytes, not what the mapping wrote (first difference at %d)", len(got), firstDifference([]byte(got), want))
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the mount shows %d bytes, %v", len(got), err)
	}
	d, _ := inst.Database("d")
	n, err := d.Stat("s", []string{key})
	if err != nil {
		t.Fatal(err)
	}
	if sum := engine.BlobSum(want); size > engine.BlobMin && !bytes.Equal(n.Blob, sum[:]) {
		t.Errorf("the stored version names blob %x, but its bytes hash to %x: a blob changed after its commit", n.Blob[:8], sum[:8])
	}
}

// TestPassedWritesReuseSpillFiles: small files created on the mount one after
// another (their spill files are emptied and used again) each hold their own
// bytes; a file a reader mapped while it was being written, and one mapped by
// its writer, keep theirs while newer files are created and the mappings last.
func TestPassedWritesReuseSpillFiles(t *testing.T) {
	inst, dir := mountPassedWrites(t)
	content := func(i int) []byte { return bytes.Repeat([]byte{byte('a' + i%26)}, 100+i*37%3000) }

	// A reader maps a file while its writer has it open; its writer maps another.
	w, err := os.OpenFile(filepath.Join(dir, "read-mapped"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(content(1000))
	r, err := os.Open(filepath.Join(dir, "read-mapped"))
	if err != nil {
		t.Fatal(err)
	}
	rm, err := syscall.Mmap(int(r.Fd()), 0, len(content(1000)), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(rm)
	r.Close()
	w.Close()
	wf, err := os.OpenFile(filepath.Join(dir, "write-mapped"), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	wf.Write(content(1001))
	wm, err := syscall.Mmap(int(wf.Fd()), 0, len(content(1001)), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(wm)
	wf.Close()

	for i := range 300 {
		p := filepath.Join(dir, fmt.Sprint("f", i))
		if err := os.WriteFile(p, content(i), 0o644); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			j := (i * 7) % i
			if got, err := os.ReadFile(filepath.Join(dir, fmt.Sprint("f", j))); err != nil || !bytes.Equal(got, content(j)) {
				t.Fatalf("f%d read back after f%d was written: %q..., %v", j, i, got[:min(len(got), 20)], err)
			}
		}
	}
	for i := range 300 {
		if got := readBack(inst, "d", fmt.Sprint("f", i)); got != string(content(i)) {
			t.Fatalf("f%d: the store holds %q...", i, got[:min(len(got), 20)])
		}
	}
	if !bytes.Equal(rm, content(1000)) {
		t.Errorf("a reader's mapping shows other bytes after newer files were created")
	}
	if !bytes.Equal(wm, content(1001)) {
		t.Errorf("a writer's mapping shows other bytes after newer files were created")
	}
}

// TestPassedWritesCutByOTrunc: an open with O_TRUNC of a file the kernel has
// written through another descriptor since the mount last looked cuts those
// bytes (TestModelPassedWrites found the open comparing with the size it had
// seen before them, and cutting nothing).
func TestPassedWritesCutByOTrunc(t *testing.T) {
	inst, dir := mountPassedWrites(t)
	for _, size := range []int{16269, 3 << 20} {
		p := filepath.Join(dir, fmt.Sprint("f", size))
		first, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := first.Write(randBytes(size)); err != nil {
			t.Fatal(err)
		}
		want := []byte("the second writer's bytes\n")
		if err := os.WriteFile(p, want, 0o644); err != nil { // O_TRUNC
			t.Fatal(err)
		}
		if fi, err := os.Stat(p); err != nil || fi.Size() != int64(len(want)) {
			t.Errorf("%d bytes cut by O_TRUNC: stat says %v %v, want %d bytes", size, fi, err, len(want))
		}
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%d bytes cut by O_TRUNC: read back %d bytes, %v", size, len(got), err)
		}
		if got := storedWithin(inst, filepath.Base(p), want); got != string(want) {
			t.Errorf("%d bytes cut by O_TRUNC: the store holds %d bytes", size, len(got))
		}
	}
}
