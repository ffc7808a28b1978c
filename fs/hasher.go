package fs

import (
	"hash"
	"os"
	"sync"

	"github.com/eidefs/eidefs/engine"
)

// appendHasher computes the blob hash of a spill file while writes append to it,
// on a goroutine of its own: a write request returns once its bytes are in the
// file, the hash reads them back from the page cache on another core, and the
// commit at close finds it done but for the last write. (Hashing in the request
// cost a large file's writer a fifth of its time.)
type appendHasher struct {
	mu      sync.Mutex
	idle    sync.Cond // signalled when the goroutine stops
	h       hash.Hash // used by the goroutine alone while running
	file    *os.File  // the spill file the bytes are read from
	done    int64     // bytes hashed
	upto    int64     // bytes written, to be hashed
	running bool
	failed  bool // a read failed: the hash is lost
}

// newAppendHasher returns a hasher that has hashed prefix, the bytes at the
// start of the file it will be given.
func newAppendHasher(prefix []byte) *appendHasher {
	a := &appendHasher{h: engine.NewBlobHasher()}
	a.idle.L = &a.mu
	a.h.Write(prefix)
	a.done, a.upto = int64(len(prefix)), int64(len(prefix))
	return a
}

var hashBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// extend records that f holds the bytes up to n: they are hashed in the
// background.
func (a *appendHasher) extend(f *os.File, n int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.file, a.upto = f, n
	if !a.running && !a.failed {
		a.running = true
		go a.run()
	}
}

func (a *appendHasher) run() {
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	buf := *bp
	a.mu.Lock()
	for a.done < a.upto && !a.failed {
		f, off, k := a.file, a.done, min(int64(len(buf)), a.upto-a.done)
		a.mu.Unlock()
		m, _ := f.ReadAt(buf[:k], off)
		if int64(m) == k {
			a.h.Write(buf[:m])
		}
		a.mu.Lock()
		if int64(m) != k {
			a.failed = true
			break
		}
		a.done += k
	}
	a.running = false
	a.idle.Broadcast()
	a.mu.Unlock()
}

// wait returns once the bytes written so far are hashed (or the hash is lost).
// Whoever closes or replaces the file waits first.
func (a *appendHasher) wait() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.running {
		a.idle.Wait()
	}
}

// sum returns the hash of the first size bytes, once they are hashed; false
// when the hasher does not have exactly those.
func (a *appendHasher) sum(size int64) ([32]byte, bool) {
	var s [32]byte
	a.wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failed || a.done != size {
		return s, false
	}
	a.h.Sum(s[:0])
	return s, true
}

// reset starts over at an empty file (truncated to zero).
func (a *appendHasher) reset() {
	a.wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.h.Reset()
	a.done, a.upto, a.failed = 0, 0, false
}
