package fs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
)

// tornValues are the values TestNoTornReads cycles through: three sizes, each
// marked at its start with its letter and sequence number, so a read that mixes
// two versions is seen by its length or its head.
func tornValue(i int) []byte {
	letter := "SML"[i%3]
	v := []byte(fmt.Sprintf("%c%05d", letter, i%100000))
	return append(v, bytes.Repeat([]byte{'x'}, tornSizes[letter]-len(v))...)
}

var tornSizes = map[byte]int{'S': 6, 'M': 1006, 'L': 20006}

// wholeValue reports what is wrong with b as a read of one tornValue, or "".
func wholeValue(b []byte) string {
	if len(b) < 6 {
		return fmt.Sprintf("%d bytes", len(b))
	}
	want, ok := tornSizes[b[0]]
	switch {
	case !ok:
		return fmt.Sprintf("starts %q", b[:6])
	case len(b) != want:
		return fmt.Sprintf("%q… is %d bytes, %d NUL", b[:6], len(b), bytes.Count(b, []byte{0}))
	case bytes.Count(b[6:], []byte{'x'}) != want-6:
		return fmt.Sprintf("%q… has %d NUL", b[:6], bytes.Count(b, []byte{0}))
	}
	return ""
}

// mountPeerKey mounts a new instance holding key d/s/k = first, and returns a
// function that sets the key as a peer's entries would (through the engine, not
// the filesystem, whose caches must then be dropped) and the key's path.
func mountPeerKey(t *testing.T, first []byte) (func(v []byte) error, string) {
	t.Helper()
	requireFUSE(t)
	inst := newBlobInstance(t)
	db, err := inst.CreateDatabase("d", "")
	if err != nil {
		t.Fatal(err)
	}
	set := func(v []byte) error {
		tx := db.Begin()
		tx.SetOrigin("peer")
		tx.Store("s").SetPath([]string{"k"}, v)
		_, err := tx.Commit(engine.Journal)
		return err
	}
	if err := set(first); err != nil {
		t.Fatal(err)
	}
	_, mnt := mountOn(t, inst)
	return set, filepath.Join(mnt, "d", "s", "k")
}

// TestNoTornReads rewrites one key from outside the mount (as a peer's entries
// arrive: through the engine, not the filesystem) every millisecond or so,
// cycling through a 6-, a 1,006- and a 20,006-byte value, while readers on the
// mount read it whole (cat), read it through a descriptor kept open and checked
// with fstat (as tail does), and replace it (write a new file, rename it over)
// and read it back. Every read must be
// one whole value some writer wrote: never one version's bytes at another's
// size, cut short or padded with NUL bytes.
func TestNoTornReads(t *testing.T) {
	set, key := mountPeerKey(t, tornValue(0))

	duration := 3 * time.Second
	if testing.Short() {
		duration = time.Second
	}
	var (
		stop           atomic.Bool
		reads, remotes atomic.Int64
		mu             sync.Mutex
		torn           []string
		seen           = map[string]bool{} // heads of the values cat read
	)
	report := func(how, what string) {
		mu.Lock()
		defer mu.Unlock()
		if len(torn) < 10 {
			torn = append(torn, how+": "+what)
		}
	}
	var wg sync.WaitGroup
	run := func(fn func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if err := fn(); err != nil {
					report("error", err.Error())
					return
				}
			}
		}()
	}
	run(func() error { // the peer
		time.Sleep(time.Millisecond)
		remotes.Add(1)
		return set(tornValue(int(remotes.Load())))
	})
	for range 2 { // cat
		run(func() error {
			b, err := os.ReadFile(key)
			if err != nil {
				return err
			}
			reads.Add(1)
			if w := wholeValue(b); w != "" {
				report("read", w)
			}
			mu.Lock()
			seen[string(b[:min(6, len(b))])] = true
			mu.Unlock()
			return nil
		})
	}
	run(func() error { // a descriptor kept open: fstat, then read that many bytes
		f, err := os.Open(key)
		if err != nil {
			return err
		}
		defer f.Close()
		for range 20 {
			st, err := f.Stat()
			if err != nil {
				return err
			}
			b := make([]byte, st.Size()+1)
			k, err := f.ReadAt(b, 0)
			if err != nil && k == 0 {
				return err
			}
			reads.Add(1)
			if w := wholeValue(b[:k]); w != "" {
				report("open descriptor", w)
			}
			if int64(k) != st.Size() {
				report("open descriptor", fmt.Sprintf("fstat said %d bytes, read %d", st.Size(), k))
			}
		}
		return nil
	})
	local := 0
	run(func() error { // a writer on the mount, replacing the file whole as editors do, reading back
		local++
		tmp := key + ".new"
		if err := os.WriteFile(tmp, tornValue(local+50000), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, key); err != nil {
			return err
		}
		b, err := os.ReadFile(key)
		if err != nil {
			return err
		}
		reads.Add(1)
		if w := wholeValue(b); w != "" {
			report("read back", w)
		}
		return nil
	})
	time.Sleep(duration)
	stop.Store(true)
	wg.Wait()
	t.Logf("%d reads (%d different values) while %d values came from outside and %d were written on the mount",
		reads.Load(), len(seen), remotes.Load(), local)
	if len(torn) > 0 {
		t.Errorf("reads that were not one whole value (first %d):\n%s", len(torn), strings.Join(torn, "\n"))
	}
	if len(seen) < int(remotes.Load())/20 {
		t.Errorf("the readers saw %d different values of %d written: they do not follow the changes", len(seen), remotes.Load())
	}

	// Reads follow: the last value from outside is what the mount shows next.
	last := tornValue(99999)
	if err := set(last); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, err := os.ReadFile(key)
		if err == nil && bytes.Equal(b, last) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("2 s after the last change the mount reads %.6q (%d bytes, %v), not %.6q", b, len(b), err, last)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestOverwriteRacingAPeer overwrites a key in place on the mount (open with
// O_TRUNC, as a shell's > does) while the same key keeps changing from outside
// (a version every millisecond) and another process reads it: an open that comes
// just after that reader's lookup gave the name a new inode for a peer's version
// must open the new inode, never fail with ENOENT. At this pace the kernel's one
// retry sometimes meets yet another version (ESTALE); that must stay rare.
func TestOverwriteRacingAPeer(t *testing.T) {
	set, key := mountPeerKey(t, []byte("first"))

	var stop atomic.Bool
	var remotes, local atomic.Int64
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(3)
	var reads, readErrs atomic.Int64
	var readErr atomic.Value
	go func() { // a reader, whose lookups give the name its new inodes
		defer wg.Done()
		for !stop.Load() {
			reads.Add(1)
			if _, err := os.ReadFile(key); err != nil {
				// It once failed with EIO, about 1 read in 16,000: a lookup that
				// found the file not yet flushed used its content after the
				// writer's close had dropped it (a panic, which go-fuse answers
				// with EIO).
				readErrs.Add(1)
				readErr.Store(err)
			}
		}
	}()
	go func() { // the peer
		defer wg.Done()
		for !stop.Load() {
			time.Sleep(time.Millisecond)
			if err := set(fmt.Appendf(nil, "peer %d", remotes.Add(1))); err != nil {
				errs <- err
				return
			}
		}
	}()
	var stale atomic.Int64
	go func() { // the writer on the mount
		defer wg.Done()
		for !stop.Load() {
			err := os.WriteFile(key, fmt.Appendf(nil, "local %d", local.Add(1)), 0o644)
			if errors.Is(err, syscall.ESTALE) {
				// The kernel's one retry raced a further version too (docs/design.md).
				stale.Add(1)
				continue
			}
			if err != nil {
				errs <- fmt.Errorf("overwrite #%d: %w", local.Load(), err)
				return
			}
		}
	}()
	time.Sleep(2 * time.Second)
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d overwrites on the mount (%d ESTALE) and %d reads (%d failed, the last with %v) while %d versions came from outside",
		local.Load(), stale.Load(), reads.Load(), readErrs.Load(), readErr.Load(), remotes.Load())
	if stale.Load()*50 > local.Load() {
		t.Errorf("%d of %d overwrites failed with ESTALE: the retry should make that rare", stale.Load(), local.Load())
	}
	if readErrs.Load() > 0 {
		t.Errorf("%d of %d reads failed, the last with %v", readErrs.Load(), reads.Load(), readErr.Load())
	}
}
