package fs

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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

// counting is an Observer that counts the FUSE requests called op.
func counting(op string, n *atomic.Int64) Observer {
	return func(name string, _ time.Duration, _ bool) {
		if name == op {
			n.Add(1)
		}
	}
}

// passingThrough reports whether f passes reads and writes through to files of
// its own; the test fails where the kernel could (Linux 6.9 and later) and f
// does not.
func passingThrough(t *testing.T, f *FS) bool {
	t.Helper()
	pass := f.Passthrough()
	if !pass && kernelAtLeast(t, 6, 9) {
		t.Fatal("the kernel has FUSE passthrough, but the mount does not use it")
	}
	return pass
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
	var reads atomic.Int64
	inst := newBlobInstance(t)
	f, mnt := mountWith(t, Options{Instance: inst, NoPassthrough: noPass, Observe: counting("read", &reads)})
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
	r1 := openReader(t, f, mnt, pass, "d", "s", "f")
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

	// The name's new inode was made for a writer that met readers passing
	// through: while it is in use, and a second after, its readers go through
	// the mount and see what is written, as on a disk.
	r2, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 1<<20); err != nil {
		t.Fatalf("truncate(2) while a reader has it open: %v", err)
	}
	if n, _ := r2.ReadAt(buf, 0); n != 1<<20 || !bytes.Equal(buf[:n], orig[:1<<20]) {
		t.Errorf("a reader of the writer's new inode read %d bytes after truncate(2); want %d", n, 1<<20)
	}
	r2.Close()
	time.Sleep(passQuiet + 100*time.Millisecond)
	before = reads.Load()
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, orig[:1<<20]) {
		t.Fatalf("after truncate(2): %d bytes, %v; want the first %d", len(got), err, 1<<20)
	}
	readsFrom("a second after the last close", before)

	// truncate(2) while a reader passes through.
	g := filepath.Join(mnt, "d", "s", "g")
	if err := os.WriteFile(g, appended, 0o644); err != nil {
		t.Fatal(err)
	}
	r3 := openReader(t, f, mnt, pass, "d", "s", "g")
	defer r3.Close()
	if err := os.Truncate(g, 1<<20); err != nil {
		t.Fatalf("truncate(2) while a reader has it open: %v", err)
	}
	if got, err := os.ReadFile(g); err != nil || !bytes.Equal(got, orig[:1<<20]) {
		t.Fatalf("after truncate(2): %d bytes, %v; want the first %d", len(got), err, 1<<20)
	}
	want = orig[:1<<20]
	if pass {
		want = appended
	}
	if n, _ := r3.ReadAt(buf, 0); n != len(want) || !bytes.Equal(buf[:n], want) {
		t.Errorf("the reader opened before truncate(2) read %d bytes; want %d", n, len(want))
	}
	if err := os.WriteFile(path, orig, 0o644); err != nil {
		t.Fatal(err)
	}

	// truncate(2) to the size it has changes nothing, also while readers pass
	// through: the name keeps its inode.
	same := filepath.Join(mnt, "d", "s", "same")
	if err := os.WriteFile(same, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	r4 := openReader(t, f, mnt, pass, "d", "s", "same")
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(same, &sa); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(same, int64(len(orig))); err != nil {
		t.Fatalf("truncate(2) to the same size: %v", err)
	}
	if err := syscall.Stat(same, &sb); err != nil || sb.Ino != sa.Ino || sb.Size != int64(len(orig)) {
		t.Errorf("truncate(2) to the same size: inode %d -> %d, size %d, %v", sa.Ino, sb.Ino, sb.Size, err)
	}
	// Renamed over (sed -i, mv): the open reader reads what it opened, whole.
	other := filepath.Join(mnt, "d", "s", "other")
	if err := os.WriteFile(other, tail, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, same); err != nil {
		t.Fatal(err)
	}
	if n, _ := r4.ReadAt(buf, 0); n != len(orig) || !bytes.Equal(buf[:n], orig) {
		t.Errorf("a reader of a file renamed over read %d bytes; want the %d it opened", n, len(orig))
	}
	if got, err := os.ReadFile(same); err != nil || !bytes.Equal(got, tail) {
		t.Errorf("the name renamed over holds %q, %v; want %q", got, err, tail)
	}
	r4.Close()

	// Written, closed and opened for reading at once, many times: the reader's
	// open comes while the writer's release is under way, and must not fail.
	for i := range 200 {
		p := filepath.Join(mnt, "d", "s", fmt.Sprintf("quick%d", i))
		if err := os.WriteFile(p, orig[:100_000], 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := os.Open(p)
		if err != nil {
			t.Fatalf("opening a file for reading just after writing it (%d): %v", i, err)
		}
		r.Close()
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

	// mmap (in a helper process: see mapFile).
	if mapped, err := mapOnce(path, len(orig)); err != nil {
		t.Errorf("mmap: %v", err)
	} else if !bytes.Equal(mapped, orig) {
		t.Errorf("mmap shows other bytes than the file's (first difference at %d)", firstDifference(mapped, orig))
	}

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

// openReader opens the file at mnt/rel... for reading. With passthrough on it
// retries until the mount passes it through: a writer's last close is released
// just after close(2) returns, and until then readers join the writer's mode.
func openReader(t *testing.T, f *FS, mnt string, pass bool, rel ...string) *os.File {
	t.Helper()
	for try := 0; ; try++ {
		r, err := os.Open(filepath.Join(append([]string{mnt}, rel...)...))
		if err != nil {
			t.Fatal(err)
		}
		if !pass {
			return r
		}
		in := f.root.EmbeddedInode()
		for _, name := range rel {
			if in = in.GetChild(name); in == nil {
				t.Fatalf("%s: not in the mount's tree", filepath.Join(rel...))
			}
		}
		n := in.Operations().(*fileNode)
		n.mu.Lock()
		passing := n.passOpen > 0
		n.mu.Unlock()
		if passing {
			return r
		}
		r.Close()
		if try == 100 {
			t.Fatalf("%s: a reader does not pass through", filepath.Join(rel...))
		}
		time.Sleep(10 * time.Millisecond)
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

// TestLargeFilesStress: goroutines read (whole, through a descriptor held a
// while, through mmap), overwrite, append to, truncate, pwrite into and replace
// (a new file renamed over it) three large files at random, with passthrough on,
// also for the writes of new files: no call fails (the kernel answers EIO to an
// open whose I/O mode conflicts with the inode's other descriptors, ETXTBSY or
// ESTALE would reach a writer), and at the end each file, on the mount and in
// the engine, holds what its last writer wrote, and nothing stays parked.
func TestLargeFilesStress(t *testing.T) {
	requireFUSE(t)
	t.Run("reads", func(t *testing.T) { testLargeFilesStress(t, false) })
	t.Run("writes", func(t *testing.T) { testLargeFilesStress(t, true) })
}

func testLargeFilesStress(t *testing.T, passWrites bool) {
	inst := newBlobInstance(t)
	f, mnt := mountWith(t, Options{Instance: inst, PassWrites: passWrites})
	passingThrough(t, f)
	if err := os.MkdirAll(filepath.Join(mnt, "d", "s"), 0o755); err != nil {
		t.Fatal(err)
	}
	type file struct {
		mu   sync.Mutex // held by writers: want is what the file holds
		path string
		want []byte
	}
	files := make([]*file, 3)
	for i := range files {
		files[i] = &file{path: filepath.Join(mnt, "d", "s", fmt.Sprintf("f%d", i)), want: randBytes(100_000 + 50_000*i)}
		if err := os.WriteFile(files[i].path, files[i].want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	var wg sync.WaitGroup
	var ops atomic.Int64
	errs := make(chan error, 100)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := newRand(uint64(g))
			for time.Now().Before(deadline) {
				fl := files[rng.IntN(len(files))]
				if err := stressOp(rng, fl.path, &fl.mu, &fl.want); err != nil {
					errs <- err
					return
				}
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d operations", ops.Load())
	db, err := inst.Database("d")
	if err != nil {
		t.Fatal(err)
	}
	for i, fl := range files {
		if got, err := os.ReadFile(fl.path); err != nil || !bytes.Equal(got, fl.want) {
			t.Errorf("f%d: the mount shows %d bytes (%v), want %d (first difference at %d)", i, len(got), err, len(fl.want), firstDifference(got, fl.want))
		}
		// A file's last commit may follow its last close by a few milliseconds
		// (a parked file is committed after its release).
		deadline := time.Now().Add(5 * time.Second)
		for {
			v, err := db.Get("s", []string{fmt.Sprintf("f%d", i)})
			if err == nil && bytes.Equal(v.Value, fl.want) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("f%d: the engine holds %d bytes (%v), want %d", i, len(v.Value), err, len(fl.want))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if n := inst.Parked(); n != 0 {
		t.Errorf("%d values still parked", n)
	}
}

// stressOp does one random operation on the file at path; writers hold mu and
// keep *want, the file's content, up to date.
func stressOp(rng *mrand.Rand, path string, mu *sync.Mutex, want *[]byte) error {
	switch op := rng.IntN(8); op {
	case 0: // read it whole
		_, err := os.ReadFile(path)
		return wrap("read", err)
	case 1: // hold a reader a while
		r, err := os.Open(path)
		if err != nil {
			return wrap("open to hold", err)
		}
		defer r.Close()
		// A file being overwritten is short for a moment (O_TRUNC, then the
		// write), as on a disk: EOF is no failure.
		buf := make([]byte, 4096)
		if _, err := r.ReadAt(buf, 0); err != nil && err != io.EOF {
			return wrap("read held", err)
		}
		time.Sleep(time.Duration(rng.IntN(3000)) * time.Microsecond)
		if _, err = r.ReadAt(buf, 60_000); err != io.EOF {
			return wrap("read held later", err)
		}
		return nil
	case 2: // mmap (in a helper process: see mapFile)
		_, err := mapOnce(path, 65536)
		if errors.Is(err, errShortMapping) {
			err = nil // overwritten (O_TRUNC) meanwhile: short for a moment, as on a disk
		}
		return wrap("mmap", err)
	}
	mu.Lock()
	defer mu.Unlock()
	switch rng.IntN(5) {
	case 4: // replace: a new file renamed over it (sed -i, rsync)
		b := randBytes(70_000 + rng.IntN(300_000))
		if err := os.WriteFile(path+".new", b, 0o644); err != nil {
			return wrap("write the replacement", err)
		}
		if err := os.Rename(path+".new", path); err != nil {
			return wrap("rename the replacement", err)
		}
		*want = b
	case 0: // overwrite
		b := randBytes(70_000 + rng.IntN(300_000))
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return wrap("overwrite", err)
		}
		*want = b
	case 1: // append
		b := randBytes(1 + rng.IntN(20_000))
		w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return wrap("open to append", err)
		}
		_, err = w.Write(b)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return wrap("append", err)
		}
		*want = append(*want, b...)
	case 2: // truncate(2), staying large
		n := 66_000 + rng.IntN(len(*want))
		if err := os.Truncate(path, int64(n)); err != nil {
			return wrap("truncate", err)
		}
		if n <= len(*want) {
			*want = (*want)[:n:n]
		} else {
			*want = append(*want, make([]byte, n-len(*want))...)
		}
	case 3: // pwrite into the middle
		b := randBytes(1 + rng.IntN(5000))
		off := rng.IntN(len(*want))
		w, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return wrap("open to pwrite", err)
		}
		_, err = w.WriteAt(b, int64(off))
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return wrap("pwrite", err)
		}
		nw := append([]byte(nil), *want...)
		if end := off + len(b); end > len(nw) {
			nw = append(nw, make([]byte, end-len(nw))...)
		}
		copy(nw[off:], b)
		*want = nw
	}
	return nil
}

func wrap(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func newRand(seed uint64) *mrand.Rand { return mrand.New(mrand.NewPCG(seed, 0x1a5)) }

// TestReadersCloseWithoutFlush: a reader's close(2) sends no FLUSH (it would
// commit nothing), a writer's does: `grep -r` over many small files paid a
// round trip per file for it.
func TestReadersCloseWithoutFlush(t *testing.T) {
	requireFUSE(t)
	var flushes atomic.Int64
	_, mnt := mountWith(t, Options{Instance: newBlobInstance(t), Observe: counting("flush", &flushes)})
	dir := filepath.Join(mnt, "d", "s")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	small, large := filepath.Join(dir, "small"), filepath.Join(dir, "large")
	for p, n := range map[string]int{small: 100, large: 1 << 20} {
		if err := os.WriteFile(p, randBytes(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if flushes.Load() == 0 {
		t.Fatal("writers' closes sent no FLUSH")
	}
	time.Sleep(50 * time.Millisecond) // the writers' releases
	before := flushes.Load()
	for range 3 {
		for _, p := range []string{small, large} {
			if _, err := os.ReadFile(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := flushes.Load() - before; n != 0 {
		t.Errorf("readers' closes sent %d FLUSH requests; want none", n)
	}
}
