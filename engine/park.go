package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/eidefs/eidefs/kv"
	"golang.org/x/sys/unix"
)

// Parked values. A large file closed on the mount must survive a kill -9 at once,
// but its commit need not hold up the close: hashing 64 MiB takes ~10 ms, longer
// than writing it. Park keeps such a value safe in two cheap steps: it links the
// file holding the bytes (a SpillFile) under blobs/park/<seq>, and records where
// the value goes in a small local record (in the journal like a commit; never
// sent to peers). The caller then commits it (a Tx that calls Unpark: the record
// goes in the same kv write as the entry) or drops it (DropPark).
//
// Parked values a killed process left are committed when the instance opens, each
// as an entry of its own with the time recorded at Park. Unlike deferred deletes
// (later.go) they keep no order with other commits: a parked value is committed
// when its writer is done with it, as if the close had come then.

// parkRec is a parked value's record, under pPark.
type parkRec struct {
	D ID       `cbor:"1,keyasint"`
	S string   `cbor:"2,keyasint"`
	P []string `cbor:"3,keyasint"`
	T int64    `cbor:"4,keyasint"` // the value's time (ms): the entry's
	O string   `cbor:"5,keyasint,omitempty"`
}

func parkKey(seq uint64) []byte { return key(pPark, binary.BigEndian.AppendUint64(nil, seq)) }

// parkDir is where parked files are linked; "" when blobs are kept in memory.
func (in *Instance) parkDir() string {
	d, ok := in.blobs.(dirBlobs)
	if !ok {
		return ""
	}
	return filepath.Join(d.dir, "park")
}

func (in *Instance) parkPath(seq uint64) string {
	return filepath.Join(in.parkDir(), strconv.FormatUint(seq, 10))
}

// ErrNoPark is Park's error when a value cannot be parked: blobs are kept in
// memory, or the file cannot be given a name (an unnamed file that had one and
// lost it again). The caller commits instead.
var ErrNoPark = errors.New("engine: the value cannot be parked")

// Park keeps the bytes of f, a SpillFile, as the value at path in store until
// they are committed with Unpark or dropped with DropPark, and returns the
// record's number. It returns once they survive a kill -9. f may still be
// written meanwhile: what it holds when the value is committed is the value.
func (d *Database) Park(store string, path []string, f *os.File, tm time.Time, origin string) (uint64, error) {
	if err := CheckStoreName(store); err != nil {
		return 0, err
	}
	if err := checkKeyPath(path); err != nil {
		return 0, err
	}
	in := d.in
	dir := in.parkDir()
	if dir == "" {
		return 0, ErrNoPark
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	in.laterMu.Lock()
	in.laterSeq++
	seq := in.laterSeq
	in.laterMu.Unlock()
	if err := linkFile(f, in.parkPath(seq)); err != nil {
		if errors.Is(err, unix.ENOENT) {
			// An O_TMPFILE file can be linked while it never had a name; one
			// parked (or committed) before and unlinked since cannot.
			return 0, fmt.Errorf("%w: %v", ErrNoPark, err)
		}
		return 0, fmt.Errorf("parking a value: %w", err)
	}
	rec := parkRec{D: d.id, S: store, P: slices.Clone(path), T: tm.UnixMilli(), O: origin}
	var b kv.Batch
	b.Put(parkKey(seq), marshal(&rec))
	if err := in.kv.Write(&b, false); err != nil {
		os.Remove(in.parkPath(seq))
		return 0, err
	}
	in.blobMu.Lock()
	if in.unsyncedParks == nil {
		in.unsyncedParks = map[uint64]bool{}
	}
	in.unsyncedParks[seq] = true
	in.blobMu.Unlock()
	return seq, nil
}

// Unpark makes the commit take parked value seq off the records: in the same kv
// write, so the value is either parked or committed, never both nor neither.
// The value itself is staged as usual (SetPathFile of the same file).
func (t *Tx) Unpark(seq uint64) { t.unpark = append(t.unpark, seq) }

// DropPark forgets parked value seq without committing it (the file was removed
// before its commit).
func (in *Instance) DropPark(seq uint64) error {
	var b kv.Batch
	b.Delete(parkKey(seq))
	if err := in.kv.Write(&b, false); err != nil {
		return err
	}
	in.unparked([]uint64{seq})
	return nil
}

// unparked removes the files of parked values whose records are gone.
func (in *Instance) unparked(seqs []uint64) {
	in.blobMu.Lock()
	for _, s := range seqs {
		delete(in.unsyncedParks, s)
	}
	in.blobMu.Unlock()
	for _, s := range seqs {
		os.Remove(in.parkPath(s))
	}
}

// syncParks makes the parked files durable (with syncBlobs): a record that
// survives a power cut must not name a file that did not.
func (in *Instance) syncParks() error {
	in.blobMu.Lock()
	seqs := in.unsyncedParks
	in.unsyncedParks = nil
	in.blobMu.Unlock()
	if len(seqs) == 0 {
		return nil
	}
	for s := range seqs {
		f, err := os.Open(in.parkPath(s))
		if errors.Is(err, os.ErrNotExist) {
			continue // committed or dropped meanwhile
		}
		if err == nil {
			err = f.Sync()
			f.Close()
		}
		if err != nil {
			return fmt.Errorf("syncing a parked value: %w", err)
		}
	}
	return syncDir(in.parkDir())
}

// commitParked commits the values a previous run parked and did not commit (it
// was killed), and removes parked files that have no record.
func (in *Instance) commitParked() error {
	type parked struct {
		seq uint64
		rec parkRec
	}
	var ps []parked
	var bad kv.Batch
	err := in.kv.Iterate([]byte{pPark}, false, func(k, v []byte) bool {
		var p parked
		if len(k) != 1+8 || decMode.Unmarshal(v, &p.rec) != nil {
			bad.Delete(k)
			return true
		}
		p.seq = binary.BigEndian.Uint64(k[1:])
		in.laterSeq = max(in.laterSeq, p.seq)
		ps = append(ps, p)
		return true
	})
	if err != nil {
		return err
	}
	if err := in.kv.Write(&bad, false); err != nil {
		return err
	}
	for _, p := range ps {
		if err := in.commitOneParked(p.seq, p.rec); err != nil {
			return err
		}
	}
	if dir := in.parkDir(); dir != "" {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			os.Remove(filepath.Join(dir, e.Name())) // no record: committed, or never recorded
		}
	}
	return nil
}

func (in *Instance) commitOneParked(seq uint64, rec parkRec) error {
	db, ok := in.DatabaseByID(rec.D)
	f, ferr := os.Open(in.parkPath(seq))
	if !ok || ferr != nil {
		// The database is gone, or the file is (it did not survive a power cut
		// that the record survived): nothing to commit.
		if f != nil {
			f.Close()
		}
		return in.DropPark(seq)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	tx := db.Begin()
	tx.SetOrigin(rec.O)
	tx.SetTime(time.UnixMilli(rec.T))
	tx.Store(rec.S).SetPathFile(rec.P, f, fi.Size())
	tx.Unpark(seq)
	if _, err := tx.Commit(Journal); err != nil {
		if errors.Is(err, ErrNotAuthorized) || errors.Is(err, ErrTooLarge) || errors.Is(err, ErrInvalidName) {
			return in.DropPark(seq) // refusals that last
		}
		return fmt.Errorf("committing a parked value: %w", err)
	}
	return nil
}

// Parked returns how many values are parked and not committed yet.
func (in *Instance) Parked() int {
	n := 0
	in.kv.Iterate([]byte{pPark}, false, func(k, v []byte) bool { n++; return true })
	return n
}
