package fs

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/eidefs/eidefs/engine"
)

// TestAppendHasher: the hash computed in the background as writes append to a
// file is the blob hash of the file's bytes, whatever the sizes of the writes
// and however far the goroutine lags; if the file is closed under it, it says
// it has no hash rather than a wrong one.
func TestAppendHasher(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 8 {
		f, err := os.Create(filepath.Join(t.TempDir(), "spill"))
		if err != nil {
			t.Fatal(err)
		}
		prefix := make([]byte, rng.IntN(1000))
		for i := range prefix {
			prefix[i] = byte(rng.Uint32())
		}
		all := append([]byte(nil), prefix...)
		f.Write(prefix)
		a := newAppendHasher(prefix)
		for range rng.IntN(60) {
			chunk := make([]byte, rng.IntN(300<<10))
			for i := range chunk {
				chunk[i] = byte(rng.Uint32())
			}
			if _, err := f.WriteAt(chunk, int64(len(all))); err != nil {
				t.Fatal(err)
			}
			all = append(all, chunk...)
			a.extend(f, int64(len(all)))
			if rng.IntN(10) == 0 {
				a.wait()
			}
		}
		got, ok := a.sum(int64(len(all)))
		if !ok || got != engine.BlobSum(all) {
			t.Fatalf("round %d: %d bytes: hash %x (%v), want %x", round, len(all), got, ok, engine.BlobSum(all))
		}
		if _, ok := a.sum(int64(len(all)) + 1); ok {
			t.Fatalf("round %d: a hash for more bytes than were hashed", round)
		}
		a.reset()
		if got, ok := a.sum(0); !ok || got != engine.BlobSum(nil) {
			t.Fatalf("round %d: after reset: %x, %v", round, got, ok)
		}
		f.Close()
	}

	// The file closed while the bytes are being read: no hash, never a wrong one.
	f, err := os.Create(filepath.Join(t.TempDir(), "spill"))
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 32<<20)
	f.Write(big)
	a := newAppendHasher(nil)
	a.extend(f, int64(len(big)))
	f.Close()
	if got, ok := a.sum(int64(len(big))); ok && got != engine.BlobSum(big) {
		t.Fatalf("a closed file gave a wrong hash")
	}
}
