package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
	"github.com/eidefs/eidefs/kv/kvtest"
)

// requireFUSE skips a test that mounts when this machine cannot (not root, no
// /dev/fuse), and fails it under CI, which must be able to.
func requireFUSE(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "mounting in-process needs root"
	} else if _, err := os.Stat("/dev/fuse"); err != nil {
		why = "no /dev/fuse: " + err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// newBlobInstance opens an instance on disk that keeps large values as blob
// files, closed when the test ends.
func newBlobInstance(t *testing.T) *engine.Instance {
	t.Helper()
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
	return inst
}

// mountOn mounts inst at a new directory and unmounts it when the test ends,
// also when it fails.
func mountOn(t *testing.T, inst *engine.Instance) (*FS, string) {
	t.Helper()
	return mountWith(t, Options{Instance: inst})
}

// mountWith is mountOn with options (entry and attribute lifetimes of 1 s, where
// o leaves them zero).
func mountWith(t *testing.T, o Options) (*FS, string) {
	t.Helper()
	if o.EntryTimeout == 0 {
		o.EntryTimeout = time.Second
	}
	if o.AttrTimeout == 0 {
		o.AttrTimeout = time.Second
	}
	mnt := t.TempDir()
	f, err := Mount(mnt, o)
	if err != nil {
		t.Fatalf("mounting: %v", err)
	}
	t.Cleanup(func() {
		if n := f.Panics(); n > 0 {
			t.Errorf("%d filesystem requests panicked (and failed with EIO); see the log", n)
		}
		if err := f.Unmount(); err != nil {
			// MNT_FORCE aborts the FUSE connection, so nothing stays blocked on it.
			syscall.Unmount(mnt, syscall.MNT_FORCE|syscall.MNT_DETACH)
			t.Errorf("unmounting: %v", err)
		}
	})
	return f, mnt
}

// within runs fn, which touches the mount, and fails the test if it does not
// return in time: the mount is then forced off, which fails what blocks on it.
func within(t *testing.T, d time.Duration, mnt string, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(d):
		syscall.Unmount(mnt, syscall.MNT_FORCE|syscall.MNT_DETACH)
		<-done
		t.Fatalf("file operations on the mount took more than %v", d)
	}
}

// fsyncPath opens path read-only and fsyncs it, as `sync FILE` does; for a
// directory, that is fsync(2) of the directory.
func fsyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// TestFsyncSurvivesPowerCut writes through a mount in the ways programs make data
// durable and, right after each, cuts the power (kvtest.Disk, a clean cut): on a
// new instance over what the disk kept, what was fsync'd is there. Cases: a file
// fsync'd before close; closed, then opened and fsync'd; rewritten, closed and
// fsync'd read-only; the write-temp, fsync, rename, fsync-directory pattern; an
// unlink, a mkdir, a new store and a new database, each followed by an fsync of
// its directory. A file only closed is lost, which shows that the cut drops what
// was not synced.
func TestFsyncSurvivesPowerCut(t *testing.T) {
	requireFUSE(t)
	disk := kvtest.NewDisk()
	small := kv.Options{Memtable: 1 << 20}
	store, err := kv.OpenStorage(disk, small)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		store.Compact() // no compaction left running into Close
		store.Close()
	})
	id := engine.NewIdentity()
	inst, err := engine.Open(store, engine.Options{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	if _, err := inst.CreateDatabase("d", ""); err != nil {
		t.Fatal(err)
	}
	if err := inst.SyncJournal(); err != nil {
		t.Fatal(err)
	}
	fsys, mnt := mountOn(t, inst)
	s := filepath.Join(mnt, "d", "s")
	type want struct {
		db, key string // key "" checks that the database exists
		value   string // "" for absent, "/" for a directory
	}
	cases := []struct {
		name  string
		steps []func() error
		want  []want
	}{
		{"mkdir a store, fsync the database", []func() error{
			func() error { return os.Mkdir(s, 0o755) },
			func() error { return fsyncPath(filepath.Join(mnt, "d")) },
		}, nil}, // checked by every case below
		{"fsync before close", []func() error{
			func() error { return writeFsync(filepath.Join(s, "a"), "a1") },
		}, []want{{"d", "a", "a1"}}},
		{"close, open, fsync", []func() error{
			func() error { return os.WriteFile(filepath.Join(s, "b"), []byte("b1"), 0o644) },
			func() error { return fsyncPath(filepath.Join(s, "b")) },
		}, []want{{"d", "b", "b1"}}},
		{"rewrite, close, fsync", []func() error{
			func() error { return os.WriteFile(filepath.Join(s, "a"), []byte("a2"), 0o644) },
			func() error { return fsyncPath(filepath.Join(s, "a")) },
		}, []want{{"d", "a", "a2"}}},
		{"write temp, fsync, rename, fsync the directory", []func() error{
			func() error { return writeFsync(filepath.Join(s, "c.tmp"), "c1") },
			func() error { return os.Rename(filepath.Join(s, "c.tmp"), filepath.Join(s, "c")) },
			func() error { return fsyncPath(s) },
		}, []want{{"d", "c", "c1"}, {"d", "c.tmp", ""}}},
		{"unlink, fsync the directory", []func() error{
			func() error { return os.Remove(filepath.Join(s, "b")) },
			func() error { return fsyncPath(s) },
		}, []want{{"d", "b", ""}}},
		{"mkdir, fsync the directory", []func() error{
			func() error { return os.Mkdir(filepath.Join(s, "sub"), 0o755) },
			func() error { return fsyncPath(s) },
		}, []want{{"d", "sub", "/"}}},
		{"new database, fsync the root", []func() error{
			func() error { return os.Mkdir(filepath.Join(mnt, "d2"), 0o755) },
			func() error { return fsyncPath(mnt) },
		}, []want{{"d2", "", "/"}}},
		{"close only", []func() error{
			func() error { return os.WriteFile(filepath.Join(s, "closed"), []byte("j"), 0o644) },
		}, []want{{"d", "closed", ""}}},
	}
	cuts := make([]*kvtest.Disk, len(cases))
	within(t, 30*time.Second, mnt, func() error {
		for i, c := range cases {
			if err := steps(c.steps...); err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			cuts[i] = disk.PowerCut(nil)
		}
		return nil
	})
	within(t, 30*time.Second, mnt, fsys.Unmount)

	for i, c := range cases {
		store, err := kv.OpenStorage(cuts[i], small)
		if err != nil {
			t.Fatalf("%s: opening the store after the cut: %v", c.name, err)
		}
		inst, err := engine.Open(store, engine.Options{Identity: id})
		if err != nil {
			store.Close()
			t.Fatalf("%s: opening the instance after the cut: %v", c.name, err)
		}
		for _, w := range append(c.want, want{"d", "", "/"}) {
			if got := readBack(inst, w.db, w.key); got != w.value {
				t.Errorf("%s: after the cut %s is %q, want %q", c.name, filepath.Join(w.db, "s", w.key), got, w.value)
			}
		}
		inst.Close()
		store.Compact() // no compaction left running into Close
		store.Close()
	}
}

// readBack is what a cut left at key of store s of database db: its value, "/"
// for a directory (or, for key "", a database that has store s or is new), ""
// if absent, or the error.
func readBack(inst *engine.Instance, db, key string) string {
	d, err := inst.Database(db)
	if errors.Is(err, engine.ErrUnknownDatabase) {
		return ""
	} else if err != nil {
		return err.Error()
	}
	var path []string
	if key != "" {
		path = []string{key}
	} else if db != "d" {
		return "/"
	}
	n, err := d.Get("s", path)
	switch {
	case errors.Is(err, engine.ErrNotFound):
		return ""
	case err != nil:
		return err.Error()
	case n.Kind == engine.OpMap:
		return "/"
	}
	return string(n.Value)
}

// steps runs fns in order until one fails.
func steps(fns ...func() error) error {
	for _, fn := range fns {
		if err := fn(); err != nil {
			return err
		}
	}
	return nil
}

// writeFsync creates path with data and fsyncs it before closing it.
func writeFsync(path, data string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
