package engine

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"testing/cryptotest"
	"time"

	"github.com/eidefs/eidefs/internal/fuzzcorpus"
)

// The engine decodes two things that arrive from peers: entries and version
// vectors. These fuzz targets hold that decoding never panics and that what it
// accepts is canonical. Their seeds are real entries from an instance; a copy of
// the seeds is committed under testdata/fuzz, rewritten with
//
//	go test -run TestFuzzSeedCorpus ./engine -write-seeds

var writeSeeds = flag.Bool("write-seeds", false, "rewrite the fuzz seed corpus under testdata/fuzz")

// fuzzSeed is one fuzz input; valid ones decode without error.
type fuzzSeed struct {
	name  string
	data  []byte
	valid bool
}

// entrySeeds are the entries of a real database: its root, an entry touching
// several stores with every op kind, a large value (big bytes), a delete, a link
// and a grant; then damaged copies of the several-stores entry.
func entrySeeds(tb testing.TB, big int) []fuzzSeed {
	in := newInstance(tb, nil)
	db, err := in.CreateDatabase("seeds", "fuzz seeds")
	if err != nil {
		tb.Fatal(err)
	}
	commit := func(stage func(tx *Tx)) ID {
		tx := db.Begin()
		stage(tx)
		return mustCommit(tb, tx)
	}
	ids := map[string]ID{"root": db.ID()}
	ids["stores"] = commit(func(tx *Tx) {
		tx.Store("docs").SetPath([]string{"a", "b", "c.txt"}, []byte("hello"))
		tx.Store("docs").SetMap([]string{"empty"})
		tx.Store("notes").Set("k", []byte("v"))
		tx.Store("notes").SetLink([]string{"ln"}, "../docs/a")
		tx.Store("notes").Delete([]string{"gone"})
	})
	ids["large"] = commit(func(tx *Tx) {
		tx.Store("docs").Set("big", bytes.Repeat([]byte("0123456789abcdef"), big/16))
	})
	ids["delete"] = commit(func(tx *Tx) { tx.Store("docs").Delete([]string{"a"}) })
	ids["link"] = commit(func(tx *Tx) { tx.Store("docs").SetLink([]string{"a"}, "/elsewhere") })
	if ids["grant"], err = db.Grant(NewIdentity().Public().String(), "peer", PermWrite); err != nil {
		tb.Fatal(err)
	}
	var seeds []fuzzSeed
	for _, name := range []string{"root", "stores", "large", "delete", "link", "grant"} {
		raw, err := in.Entry(ids[name])
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, fuzzSeed{name: name, data: raw, valid: true})
	}
	return append(seeds, damaged(seeds[1].data)...)
}

// damaged are copies of a valid entry cut short, with a flipped bit in the body or
// the signature, and with a byte too many.
func damaged(raw []byte) []fuzzSeed {
	flip := func(i int) []byte {
		b := bytes.Clone(raw)
		b[i] ^= 0x04
		return b
	}
	return []fuzzSeed{
		{name: "truncated", data: bytes.Clone(raw[:len(raw)/2])},
		{name: "short-signature", data: bytes.Clone(raw[:len(raw)-1])},
		{name: "flipped-body", data: flip(len(raw) / 3)},
		{name: "flipped-signature", data: flip(len(raw) - 5)},
		{name: "trailing-byte", data: append(bytes.Clone(raw), 0)},
	}
}

// vvSeeds are version vectors: a real database's, one of three authors with small,
// large and maximal sequences, the empty one, and broken lengths.
func vvSeeds(tb testing.TB) []fuzzSeed {
	in := newInstance(tb, nil)
	db, err := in.CreateDatabase("seeds", "")
	if err != nil {
		tb.Fatal(err)
	}
	tx := db.Begin()
	tx.Store("s").Set("k", []byte("v"))
	mustCommit(tb, tx)
	three := EncodeVersionVector(VersionVector{
		NewIdentity().Public(): 1,
		NewIdentity().Public(): 1 << 40,
		NewIdentity().Public(): ^uint64(0),
	})
	return []fuzzSeed{
		{name: "database", data: EncodeVersionVector(db.VersionVector()), valid: true},
		{name: "three-authors", data: three, valid: true},
		{name: "empty", data: []byte{}, valid: true},
		{name: "short", data: three[:len(three)-1]},
		{name: "pair-and-a-half", data: three[:60]},
	}
}

// fuzzSigner signs entries the fuzzer builds; any fixed key will do.
var fuzzSigner = IdentityFromPrivate(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)))

// FuzzDecodeEntry: DecodeEntry (run through Verify, the path received entries
// take) never panics, fails only with ErrInvalidEntry, and accepts only canonical
// encodings whose id is their hash. Whatever decodes as an entry's structure,
// signed by its author, is accepted exactly when its shape is valid.
func FuzzDecodeEntry(f *testing.F) {
	for _, s := range entrySeeds(f, 70000) {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkDecode(t, raw)
		checkResigned(t, raw)
	})
}

func checkDecode(t *testing.T, raw []byte) {
	d := Verify(raw).ds[0] // DecodeEntry, as the instance runs it on what it receives
	e, id, err := d.e, d.id, d.err
	if err != nil {
		if !errors.Is(err, ErrInvalidEntry) {
			t.Fatalf("error does not wrap ErrInvalidEntry: %v", err)
		}
		return
	}
	if again := marshal(e); !bytes.Equal(again, raw) {
		t.Fatalf("accepted entry re-encodes differently:\n got %x\nwant %x", again, raw)
	}
	if id != hashID(raw) {
		t.Fatalf("id %s is not the hash of the entry", id.Short())
	}
	if err := e.checkShape(); err != nil {
		t.Fatalf("accepted entry has a bad shape: %v", err)
	}
}

// checkResigned signs whatever raw decodes to (ignoring canonical form and
// signature), so the fuzzer reaches the shape checks behind the signature.
func checkResigned(t *testing.T, raw []byte) {
	var e Entry
	if decMode.Unmarshal(raw, &e) != nil {
		return
	}
	signed, id := e.sign(fuzzSigner)
	shapeErr := e.checkShape()
	got, gotID, err := DecodeEntry(signed)
	switch {
	case shapeErr != nil && err == nil:
		t.Fatalf("accepted an entry of bad shape (%v)", shapeErr)
	case shapeErr == nil && err != nil:
		t.Fatalf("rejected a well-formed entry signed by its author: %v", err)
	case err == nil && (gotID != id || !bytes.Equal(marshal(got), signed)):
		t.Fatalf("signed entry %s decodes as %s", id.Short(), gotID.Short())
	}
}

// FuzzApplyEntry: whatever decodes as an entry's structure, made a child of a
// database or a root, and signed by that database's admin (so it passes every
// check a remote writer can pass), applies or is rejected without panicking. An
// applied entry leaves paths that read back without errors other than "not
// found" and "not a directory", and a store that reopens to the same state.
func FuzzApplyEntry(f *testing.F) {
	for _, s := range entrySeeds(f, 5000) {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var e Entry
		if decMode.Unmarshal(raw, &e) != nil {
			return
		}
		defer hangWatchdog()()
		in := newInstance(t, fuzzSigner)
		db, err := in.CreateDatabase("d", "")
		if err != nil {
			t.Fatal(err)
		}
		authorize(&e, db)
		signed, id := e.sign(fuzzSigner)
		res, err := in.Apply("fuzz", signed)
		if err != nil {
			t.Fatalf("apply: %v", err)
		}
		for _, r := range res.Rejected {
			if !errors.Is(r.Err, ErrInvalidEntry) && !errors.Is(r.Err, ErrNotAuthorized) {
				t.Fatalf("rejected with an unexpected error: %v", r.Err)
			}
		}
		if len(res.Applied) == 0 {
			return
		}
		applied, ok := in.DatabaseByID(e.DatabaseID(id))
		if !ok {
			t.Fatalf("entry %s applied, its database is missing", id.Short())
		}
		readBack(t, applied, &e)
		checkReopen(t, in, applied)
	})
}

// authorize makes e an entry fuzzSigner may write: a child of db (which it owns),
// or a root whose settings first make it the admin.
func authorize(e *Entry, db *Database) {
	if !e.IsRoot() {
		e.Root, e.Parents, e.Height, e.Entropy = db.ID(), db.Tips(), db.Info().Height+1, nil
		for i := range e.Stores {
			e.Stores[i].Parents = nil
		}
		return
	}
	grant := grantOps(fuzzSigner.Public().String(), "", PermAdmin)
	if sn := e.Store(SettingsStore); sn != nil {
		sn.Ops = append(grant, sn.Ops...)
	} else {
		e.Stores = append(e.Stores, StoreNode{Name: SettingsStore, Ops: grant})
	}
}

// applyTimeout bounds one FuzzApplyEntry input; the seeds take milliseconds.
const applyTimeout = 30 * time.Second

// hangWatchdog crashes the test process if the input takes longer than
// applyTimeout: the fuzzer then keeps the input as a failing one, which a test
// that failed while the instance hangs would not give (its cleanup would hang).
// Calling the returned function disarms it.
func hangWatchdog() (disarm func()) {
	tm := time.AfterFunc(applyTimeout, func() {
		panic(fmt.Sprintf("one input took over %v", applyTimeout))
	})
	return func() { tm.Stop() }
}

// readBack reads every path the entry names, lists its parent, and walks the
// database's conflicts and settings.
func readBack(t *testing.T, db *Database, e *Entry) {
	ok := func(err error) bool {
		return err == nil || errors.Is(err, ErrNotFound) || errors.Is(err, ErrNotDir)
	}
	for _, s := range e.Stores {
		for _, op := range s.Ops {
			if _, err := db.Get(s.Name, op.Path); !ok(err) {
				t.Fatalf("get %q %q: %v", s.Name, op.Path, err)
			}
			dir := op.Path[:max(len(op.Path)-1, 0)]
			if err := db.List(s.Name, dir, func(DirEntry) bool { return true }); !ok(err) {
				t.Fatalf("list %q %q: %v", s.Name, dir, err)
			}
		}
	}
	if err := db.Conflicts(func(Conflict) bool { return true }); err != nil {
		t.Fatalf("conflicts: %v", err)
	}
	if _, err := db.Settings(); err != nil {
		t.Fatalf("settings: %v", err)
	}
	db.Stores()
}

// checkReopen opens a second instance on the same store: loading decodes the
// stored entries and settings again, and must find the same database.
func checkReopen(t *testing.T, in *Instance, db *Database) {
	again, err := Open(in.kv, Options{Identity: fuzzSigner})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer again.Close()
	db2, ok := again.DatabaseByID(db.ID())
	if !ok {
		t.Fatalf("database %s missing after reopen", db.ID().Short())
	}
	if db2.Count() != db.Count() || !slices.Equal(db2.Tips(), db.Tips()) {
		t.Fatalf("after reopen: %d entries, tips %v; before: %d, %v", db2.Count(), db2.Tips(), db.Count(), db.Tips())
	}
	if _, err := db2.Settings(); err != nil {
		t.Fatalf("settings after reopen: %v", err)
	}
}

// FuzzDecodeVersionVector: DecodeVersionVector never panics, accepts exactly the
// whole numbers of (key, sequence) pairs, and round-trips: the encoding of what it
// returns decodes to the same vector, and equals the input when the input's keys
// are strictly ascending (the form EncodeVersionVector writes).
func FuzzDecodeVersionVector(f *testing.F) {
	for _, s := range vvSeeds(f) {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		vv, err := DecodeVersionVector(b)
		if (err == nil) != (len(b)%40 == 0) {
			t.Fatalf("%d bytes: error %v", len(b), err)
		}
		if err != nil {
			return
		}
		if len(vv) > len(b)/40 {
			t.Fatalf("%d pairs decode to %d authors", len(b)/40, len(vv))
		}
		enc := EncodeVersionVector(vv)
		back, err := DecodeVersionVector(enc)
		if err != nil || !reflect.DeepEqual(back, vv) {
			t.Fatalf("re-encoded vector decodes to %v, %v; want %v", back, err, vv)
		}
		if ascendingKeys(b) && !bytes.Equal(enc, b) {
			t.Fatalf("canonical vector re-encodes differently:\n got %x\nwant %x", enc, b)
		}
	})
}

func ascendingKeys(b []byte) bool {
	for i := 40; i < len(b); i += 40 {
		if bytes.Compare(b[i-40:i-8], b[i:i+32]) >= 0 {
			return false
		}
	}
	return true
}

// fuzzSeeds are the committed seeds per fuzz target.
func fuzzSeeds(tb testing.TB) map[string][]fuzzSeed {
	return map[string][]fuzzSeed{
		"FuzzDecodeEntry":         entrySeeds(tb, 5000),
		"FuzzDecodeVersionVector": vvSeeds(tb),
		"FuzzApplyEntry":          entrySeeds(tb, 5000),
	}
}

// TestFuzzSeedCorpus checks that the committed seed corpus has every seed and that
// the valid ones still decode (an encoding change would otherwise quietly leave the
// fuzzer with nothing but rejects to start from). With -write-seeds it rewrites the
// corpus from a fixed random stream, so rewriting an unchanged corpus changes nothing.
func TestFuzzSeedCorpus(t *testing.T) {
	if *writeSeeds {
		cryptotest.SetGlobalRandom(t, 1)
	}
	for target, seeds := range fuzzSeeds(t) {
		dir := filepath.Join("testdata", "fuzz", target)
		if *writeSeeds {
			var cs []fuzzcorpus.Seed
			for _, s := range seeds {
				cs = append(cs, fuzzcorpus.Seed{Name: s.name, Arg: s.data})
			}
			if err := fuzzcorpus.Rewrite(dir, cs); err != nil {
				t.Fatal(err)
			}
			continue
		}
		for _, s := range seeds {
			path := fuzzcorpus.Path(dir, s.name)
			data, err := fuzzcorpus.ReadBytes(path)
			if err != nil {
				t.Fatalf("%v (rewrite the corpus: go test -run TestFuzzSeedCorpus ./engine -write-seeds)", err)
			}
			if s.valid {
				checkSeedDecodes(t, target, path, data)
			}
		}
	}
}

func checkSeedDecodes(t *testing.T, target, path string, data []byte) {
	var err error
	switch target {
	case "FuzzDecodeEntry", "FuzzApplyEntry":
		_, _, err = DecodeEntry(data)
	case "FuzzDecodeVersionVector":
		_, err = DecodeVersionVector(data)
	}
	if err != nil {
		t.Errorf("%s no longer decodes: %v (rewrite the corpus: go test -run TestFuzzSeedCorpus ./engine -write-seeds)", path, err)
	}
}
