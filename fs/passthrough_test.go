package fs

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// kernelAtLeast reports whether the running kernel is major.minor or later.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var rel []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel = append(rel, byte(c))
	}
	var ma, mi int
	if _, err := fmt.Sscanf(string(rel), "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q: %v", rel, err)
	}
	return ma > major || ma == major && mi >= minor
}

// TestLargeReadsPassThrough: the kernel reads a large stored file from its blob
// file (FUSE passthrough, Linux 6.9 and later): none of its reads reaches the
// mount's process. Around such readers the file still behaves as on a disk: it
// is read back right after it was written; a writer (>>) succeeds while it is
// open for reading and everyone who opens it afterwards reads what was written,
// while the open reader goes on reading the version it opened, whole, as after
// `sed -i`; truncate(2) likewise; mmap reads it. Readers looping over the file
// while it is appended to never fail, and every read is one whole version.
// The same runs on a mount told not to pass through, where the open reader sees
// the writes, as on a disk.
func TestLargeReadsPassThrough(t *testing.T) {
	requireFUSE(t)
	t.Run("passthrough", func(t *testing.T) { testLargeReads(t, false) })
	t.Run("no-passthrough", func(t *testing.T) { testLargeReads(t, true) })
}

func testLargeReads(t *testing.T, noPass bool) {
	dir := t.TempDir()
	store, err := kv.Open(filepath.Join(dir, "kv"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	inst, err := engine.Open(store, engine.Options{Identity: engine.NewIdentity(), BlobDir: filepath.Join(dir, "blobs")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	var reads atomic.Int64
	mnt := t.TempDir()
	f, err := Mount(mnt, Options{Instance: inst, EntryTimeout: time.Second, AttrTimeout: time.Second, NoPassthrough: noPass,
		Observe: func(op string, _ time.Duration, _ bool) {
			if op == "read" {
				reads.Add(1)
			}
		}})
	if err != nil {
		t.Fatalf("mounting: %v", err)
	}
	t.Cleanup(func() {
		if n := f.Panics(); n > 0 {
			t.Errorf("%d filesystem requests panicked (and failed with EIO); see the log", n)
		}
		if err := f.Unmount(); err != nil {
			syscall.Unmount(mnt, syscall.MNT_FORCE|syscall.MNT_DETACH)
			t.Errorf("unmounting: %v", err)
		}
	})
	pass := f.Passthrough()
	switch {
	case noPass:
		if pass {
			t.Fatal("told not to pass through, the mount does")
		}
	case !pass && kernelAtLeast(t, 6, 9):
		t.Fatal("the kernel has FUSE passthrough, but the mount does not use it")
	case !pass:
		t.Log("this kernel has no FUSE passthrough: reads go through the mount; checking the rest")
	}
	for _, d := range []string{"d", "d/s"} {
		if err := os.Mkdir(filepath.Join(mnt, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(mnt, "d", "s", "f")
	orig := make([]byte, 3<<20)
	rand.Read(orig)
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	readsFrom := func(what string, before int64) {
		t.Helper()
		if n := reads.Load() - before; pass && n != 0 {
			t.Errorf("%s: %d reads reached the mount's process; want 0 (passthrough)", what, n)
		}
	}
	before := reads.Load()
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, orig) {
		t.Fatalf("read back right after writing: %d bytes, %v; want the %d written", len(got), err, len(orig))
	}
	readsFrom("reading back", before)

	var st0 syscall.Stat_t
	if err := syscall.Stat(path, &st0); err != nil {
		t.Fatal(err)
	}
	r1, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	tail := []byte("appended while a reader has it open\n")
	a, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatalf("opening for append while a reader has it open: %v", err)
	}
	if _, err := a.Write(tail); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	appended := append(bytes.Clone(orig), tail...)
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, appended) {
		t.Fatalf("after the append: %d bytes, %v; want %d", len(got), err, len(appended))
	}
	// The open reader has the version it opened, whole (passing through), or
	// sees the write, as on a disk.
	want := appended
	if pass {
		want = orig
	}
	before = reads.Load()
	buf := make([]byte, len(appended)+10)
	if n, _ := r1.ReadAt(buf, 0); n != len(want) || !bytes.Equal(buf[:n], want) {
		t.Errorf("the reader opened before the append read %d bytes; want %d", n, len(want))
	}
	if fi, err := r1.Stat(); err != nil || fi.Size() != int64(len(want)) {
		t.Errorf("fstat of the reader opened before the append: %v, %v; want size %d", fi.Size(), err, len(want))
	}
	readsFrom("the earlier reader", before)
	var st1 syscall.Stat_t
	if err := syscall.Stat(path, &st1); err != nil {
		t.Fatal(err)
	}
	if pass == (st1.Ino == st0.Ino) {
		t.Errorf("inode %d before the append, %d after; want a new one only while readers pass through", st0.Ino, st1.Ino)
	}

	// truncate(2) while a reader passes through.
	r2, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatalf("truncate(2) while a reader has it open: %v", err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, orig[:1<<20]) {
		t.Fatalf("after truncate(2): %d bytes, %v; want the first %d", len(got), err, 1<<20)
	}
	want = orig[:1<<20]
	if pass {
		want = appended
	}
	if n, _ := r2.ReadAt(buf, 0); n != len(want) || !bytes.Equal(buf[:n], want) {
		t.Errorf("the reader opened before truncate(2) read %d bytes; want %d", n, len(want))
	}
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}

	// A reader in the page cache's mode that outlives the writer it opened
	// beside: readers opening after it must join its mode (the kernel refuses to
	// mix them: EIO).
	fresh := filepath.Join(mnt, "d", "s", "fresh")
	if err := os.WriteFile(fresh, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(fresh, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	cached, err := os.Open(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(tail); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if got, err := os.ReadFile(fresh); err != nil || !bytes.Equal(got, appended) {
		t.Errorf("reading a file while a reader opened beside its writer is open: %d bytes, %v; want %d", len(got), err, len(appended))
	}
	cached.Close()

	// mmap.
	m, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := syscall.Mmap(int(m.Fd()), 0, len(orig), syscall.PROT_READ, syscall.MAP_SHARED)
	m.Close()
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	if !bytes.Equal(mapped, orig) {
		t.Errorf("mmap shows other bytes than the file's (first difference at %d)", firstDifference(mapped, orig))
	}
	syscall.Munmap(mapped)

	// Readers over and over while a writer appends: every open succeeds, and
	// every read is a whole version (a prefix of the last, at a size written).
	const appends = 30
	final := bytes.Clone(orig)
	sizes := map[int]bool{len(final): true}
	chunk := make([]byte, 1000)
	for i := range appends {
		for j := range chunk {
			chunk[j] = byte('a' + i%26)
		}
		final = append(final, chunk...)
		sizes[len(final)] = true
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var mu sync.Mutex
	var got [][]byte
	var readErrs []error
	for i := range 4 {
		short := i%2 == 1
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var b []byte
				var err error
				if short {
					// Opens, holds and closes over and over: most appends find
					// the file open, and a writer's retried open must not meet
					// a reader's open of the new inode.
					var r *os.File
					if r, err = os.Open(path); err == nil {
						head := make([]byte, 16)
						_, err = r.Read(head)
						time.Sleep(200 * time.Microsecond)
						r.Close()
					}
				} else {
					b, err = os.ReadFile(path)
				}
				mu.Lock()
				if err != nil {
					readErrs = append(readErrs, err)
				} else if !short && len(got) < 2000 {
					got = append(got, b)
				}
				mu.Unlock()
			}
		}()
	}
	for i := range appends {
		w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("append %d while readers loop: %v", i, err)
		}
		if _, err := w.Write(final[len(orig)+i*len(chunk) : len(orig)+(i+1)*len(chunk)]); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("append %d: close: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	for _, err := range readErrs {
		t.Errorf("a reader: %v", err)
	}
	for _, b := range got {
		if !sizes[len(b)] || !bytes.Equal(b, final[:len(b)]) {
			t.Fatalf("a reader read %d bytes that are no version written (first difference at %d)", len(b), firstDifference(b, final))
		}
	}
	t.Logf("%d whole reads while %d appends", len(got), appends)
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, final) {
		t.Fatalf("at the end: %d bytes, %v; want %d", len(b), err, len(final))
	}
	db, err := inst.Database("d")
	if err != nil {
		t.Fatal(err)
	}
	if v, err := db.Get("s", []string{"f"}); err != nil || !bytes.Equal(v.Value, final) {
		t.Fatalf("the key holds %d bytes, %v; want %d", len(v.Value), err, len(final))
	}
}

func firstDifference(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
