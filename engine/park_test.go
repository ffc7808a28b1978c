package engine

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"
)

// parkedFile is a spill file holding b, parked as the value at s/k of db.
func parkedFile(t *testing.T, in *Instance, db *Database, k string, b []byte, tm time.Time) (*os.File, uint64) {
	t.Helper()
	f, err := in.SpillFile()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	seq, err := db.Park("s", []string{k}, f, tm, "")
	if err != nil {
		t.Fatal(err)
	}
	return f, seq
}

// A parked value survives its writer being killed (the instance closed without
// committing it, its file descriptors gone): the next open commits it, with what
// the file held last (a write after Park included) and the time given to Park,
// and leaves no record or file behind. A value committed with Unpark, or dropped,
// is not committed again.
func TestParkedValueSurvivesAKill(t *testing.T) {
	dir, id := t.TempDir(), NewIdentity()
	in, closeIn := diskInstanceAt(t, dir, id)
	db, _ := in.CreateDatabase("d", "")
	tm := time.UnixMilli(1_700_000_000_123)

	killed := bigValue(3*BlobMin, 1)
	f1, _ := parkedFile(t, in, db, "killed", killed[:BlobMin+1], tm)
	if _, err := f1.WriteAt(killed[BlobMin+1:], BlobMin+1); err != nil {
		t.Fatal(err)
	}

	done := bigValue(2*BlobMin, 2)
	f2, seq2 := parkedFile(t, in, db, "done", done, tm)
	tx := db.Begin()
	tx.Store("s").SetPathFile([]string{"done"}, f2, int64(len(done)))
	tx.Unpark(seq2)
	mustCommit(t, tx)

	f3, seq3 := parkedFile(t, in, db, "dropped", bigValue(2*BlobMin, 3), tm)
	if err := in.DropPark(seq3); err != nil {
		t.Fatal(err)
	}
	before := db.Info().Entries
	for _, f := range []*os.File{f1, f2, f3} {
		f.Close()
	}
	closeIn()

	in, closeIn = diskInstanceAt(t, dir, id)
	defer closeIn()
	db, _ = in.Database("d")
	n, err := db.Get("s", []string{"killed"})
	if err != nil || !bytes.Equal(n.Value, killed) || n.Time != tm.UnixMilli() {
		t.Fatalf("killed: %d bytes, time %d, %v; want %d bytes, time %d", len(n.Value), n.Time, err, len(killed), tm.UnixMilli())
	}
	if n, err := db.Get("s", []string{"done"}); err != nil || !bytes.Equal(n.Value, done) {
		t.Fatalf("done: %d bytes, %v", len(n.Value), err)
	}
	if _, err := db.Get("s", []string{"dropped"}); err == nil {
		t.Fatal("a dropped value was committed")
	}
	if got := db.Info().Entries; got != before+1 {
		t.Fatalf("%d entries after the reopen, want %d: only the killed value committed again", got, before+1)
	}
	if ents, _ := os.ReadDir(in.parkDir()); len(ents) != 0 {
		t.Fatalf("%d parked files left", len(ents))
	}
	recs := 0
	in.kv.Iterate([]byte{pPark}, false, func(k, v []byte) bool { recs++; return true })
	if recs != 0 {
		t.Fatalf("%d park records left", recs)
	}
}

// An instance without a blob directory cannot park: the caller commits instead.
func TestParkNeedsABlobDirectory(t *testing.T) {
	in := newInstance(t, NewIdentity())
	db, _ := in.CreateDatabase("d", "")
	f, _ := os.CreateTemp(t.TempDir(), "v")
	defer f.Close()
	if _, err := db.Park("s", []string{"k"}, f, time.Now(), ""); err != ErrNoPark {
		t.Fatalf("Park without blobs: %v, want ErrNoPark", err)
	}
}

// A file parked and dropped (its name removed) cannot be linked again: a second
// Park says ErrNoPark, and the caller commits instead.
func TestParkAgainAfterDrop(t *testing.T) {
	dir, id := t.TempDir(), NewIdentity()
	in, closeIn := diskInstanceAt(t, dir, id)
	defer closeIn()
	db, _ := in.CreateDatabase("d", "")
	f, seq := parkedFile(t, in, db, "k", bigValue(2*BlobMin, 1), time.Now())
	defer f.Close()
	if err := in.DropPark(seq); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Park("s", []string{"k"}, f, time.Now(), ""); !errors.Is(err, ErrNoPark) {
		t.Fatalf("parking a file again after its record was dropped: %v, want ErrNoPark", err)
	}
	if n := in.Parked(); n != 0 {
		t.Fatalf("%d parked", n)
	}
}
