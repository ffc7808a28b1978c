package kvtest

import (
	"errors"
	"io"
	"math/rand"
	"os"
	"testing"

	"github.com/syndtr/goleveldb/leveldb/storage"
)

var (
	journal  = storage.FileDesc{Type: storage.TypeJournal, Num: 1}
	manifest = storage.FileDesc{Type: storage.TypeManifest, Num: 2}
	table    = storage.FileDesc{Type: storage.TypeTable, Num: 3}
)

func create(t *testing.T, d *Disk, fd storage.FileDesc, data string, sync bool) storage.Writer {
	t.Helper()
	w, err := d.Create(fd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := w.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// content reads fd from s; ok is false if there is no such file.
func content(t *testing.T, s storage.Storage, fd storage.FileDesc) (string, bool) {
	t.Helper()
	r, err := s.Open(fd)
	if errors.Is(err, os.ErrNotExist) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

// TestCleanCutKeepsWhatWasSynced: bytes up to a file's last Sync, names up to the
// last directory sync (a manifest's Sync, SetMeta, SyncDir), the last SetMeta.
func TestCleanCutKeepsWhatWasSynced(t *testing.T) {
	d := NewDisk()
	j := create(t, d, journal, "synced", true)
	create(t, d, manifest, "m", true) // syncs the directory: the journal's name too
	if err := d.SetMeta(manifest); err != nil {
		t.Fatal(err)
	}
	j.Write([]byte("+unsynced"))
	create(t, d, table, "table", true) // synced, but its name is not
	cut := d.PowerCut(nil)
	if got, ok := content(t, cut, journal); !ok || got != "synced" {
		t.Fatalf("journal after the cut: %q (exists %v), want the synced part", got, ok)
	}
	if _, ok := content(t, cut, table); ok {
		t.Fatal("a table whose name was never synced survived")
	}
	if fd, err := cut.GetMeta(); err != nil || fd != manifest {
		t.Fatalf("meta after the cut: %v %v", fd, err)
	}

	if err := d.Remove(journal); err != nil {
		t.Fatal(err)
	}
	if _, ok := content(t, d.PowerCut(nil), journal); !ok {
		t.Fatal("a removal that no directory sync followed is durable")
	}
	if err := d.SyncDir(); err != nil {
		t.Fatal(err)
	}
	cut = d.PowerCut(nil)
	if _, ok := content(t, cut, journal); ok {
		t.Fatal("a removal followed by a directory sync is undone")
	}
	if got, ok := content(t, cut, table); !ok || got != "table" {
		t.Fatalf("table after a directory sync: %q (exists %v)", got, ok)
	}
}

// TestTornCutKeepsSyncedPrefix: a torn cut keeps at least what a clean cut keeps,
// and at most as many bytes as were written; how many varies.
func TestTornCutKeepsSyncedPrefix(t *testing.T) {
	d := NewDisk()
	w := create(t, d, journal, "synced", true)
	if err := d.SyncDir(); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("0123456789"))
	lengths := map[int]bool{}
	for seed := int64(0); seed < 200; seed++ {
		got, ok := content(t, d.PowerCut(rand.New(rand.NewSource(seed))), journal)
		if !ok || len(got) < len("synced") || len(got) > len("synced0123456789") || got[:6] != "synced" {
			t.Fatalf("seed %d: torn journal %q (exists %v)", seed, got, ok)
		}
		lengths[len(got)] = true
	}
	if len(lengths) < 5 {
		t.Fatalf("torn cuts kept only lengths %v", lengths)
	}
}
