package netsync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/internal/fuzzcorpus"
	"github.com/eidefs/eidefs/kv"
)

// A node decodes frames and request streams from peers and tickets from users.
// These fuzz targets hold that it never panics, never hangs on a stream that ends,
// and never stores anything a peer could not have signed. Their seeds derive from
// a small committed fixture (fixturePath), so that seeds and crashers name the
// same database on every run; TestFuzzSeedCorpus holds the committed corpus to the
// seeds, and
//
//	go test -run TestFuzzSeedCorpus ./netsync -write-seeds
//
// makes a new fixture and rewrites the corpus.

var writeSeeds = flag.Bool("write-seeds", false, "make a new fuzz fixture and rewrite the seed corpus under testdata/fuzz")

const fixturePath = "testdata/fuzz-fixture"

// fuzzFixture is a database as a node serves it (Entries, parents first: an owner
// granted a writer and a reader, and both wrote), and the entries of a database
// the node does not have (Foreign).
type fuzzFixture struct {
	Entries [][]byte `cbor:"1,keyasint"`
	Foreign [][]byte `cbor:"2,keyasint"`
}

func makeFixture(t *testing.T) fuzzFixture {
	owner, writer, other := newTestNode(t), newTestNode(t), newTestNode(t)
	db, err := owner.inst.CreateDatabase("notes", "fuzz fixture")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Grant(writer.key().String(), "writer", engine.PermWrite); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Grant(engine.NewIdentity().Public().String(), "reader", engine.PermRead); err != nil {
		t.Fatal(err)
	}
	tx := db.Begin()
	tx.Store("s").SetPath([]string{"dir", "y"}, []byte("nested")).SetLink([]string{"ln"}, "dir/y")
	if _, err := tx.Commit(engine.Journal); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.inst.Apply("owner", storedEntries(db)...); err != nil {
		t.Fatal(err)
	}
	wdb, ok := writer.inst.DatabaseByID(db.ID())
	if !ok {
		t.Fatal("writer did not get the database")
	}
	write(t, wdb, "x", "from the writer")
	junk, err := other.inst.CreateDatabase("junk", "")
	if err != nil {
		t.Fatal(err)
	}
	write(t, junk, "z", "foreign")
	return fuzzFixture{Entries: storedEntries(wdb), Foreign: storedEntries(junk)}
}

func storedEntries(db *engine.Database) [][]byte {
	var raws [][]byte
	db.Entries(0, func(_ engine.ID, raw []byte) bool { raws = append(raws, bytes.Clone(raw)); return true })
	return raws
}

func loadFixture(tb testing.TB) fuzzFixture {
	f, err := os.Open(fixturePath)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var fx fuzzFixture
	if _, err := readFrame(f, &fx); err != nil {
		tb.Fatalf("%s: %v", fixturePath, err)
	}
	return fx
}

// fuzzServer serves the fixture database to three peers: its writer, its reader
// and a stranger.
type fuzzServer struct {
	p     *proto
	db    engine.ID
	peers []engine.PublicKey
}

func newFuzzServer(tb testing.TB, fx fuzzFixture) *fuzzServer {
	store, err := kv.OpenMemory()
	if err != nil {
		tb.Fatal(err)
	}
	inst, err := engine.Open(store, engine.Options{Identity: engine.NewIdentity()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { inst.Close(); store.Close() })
	st, err := openState(store)
	if err != nil {
		tb.Fatal(err)
	}
	res, err := inst.Apply("fixture", fx.Entries...)
	if err != nil || len(res.Applied) != len(fx.Entries) {
		tb.Fatalf("applying the fixture: %d of %d applied, %v", len(res.Applied), len(fx.Entries), err)
	}
	s := &fuzzServer{db: res.Applied[0]}
	db, _ := inst.DatabaseByID(s.db)
	settings, err := db.Settings()
	if err != nil {
		tb.Fatal(err)
	}
	for _, perm := range []engine.Permission{engine.PermWrite, engine.PermRead} {
		for _, a := range settings.Keys {
			if k, err := engine.ParsePublicKey(a.Key); err == nil && a.Perm == perm {
				s.peers = append(s.peers, k)
			}
		}
	}
	if len(s.peers) != 2 {
		tb.Fatalf("fixture grants %d keys write or read, want 2", len(s.peers))
	}
	s.peers = append(s.peers, engine.NewIdentity().Public())
	s.p = &proto{inst: inst, name: "server", addrs: func() []string { return []string{"127.0.0.1:7000"} }, redeem: st.redeem}
	return s
}

// holding is everything the server's instance holds, to compare before and after.
func (s *fuzzServer) holding() string {
	return fmt.Sprint(s.p.inst.Databases(), s.p.inst.Missing())
}

// replayStream is a request stream whose peer sent data and then closed its side;
// what the server writes is kept.
type replayStream struct {
	r   *bytes.Reader
	out bytes.Buffer
}

func (s *replayStream) Read(b []byte) (int, error)  { return s.r.Read(b) }
func (s *replayStream) Write(b []byte) (int, error) { return s.out.Write(b) }
func (s *replayStream) CloseWrite() error           { return nil }
func (s *replayStream) Close() error                { return nil }

// serveTimeout bounds one serve of a replayed stream, which ends at the data's
// end; the seeds take milliseconds.
const serveTimeout = 30 * time.Second

// FuzzServe: serving any request stream, from a writer, a reader or a stranger,
// returns within serveTimeout without panicking, stores nothing (the fuzzer cannot
// sign entries; the seeds carry only entries the server has and entries of a
// database it does not have), and answers, if at all, with a response frame.
func FuzzServe(f *testing.F) {
	fx := loadFixture(f)
	for _, s := range serveSeeds(f, fx) {
		f.Add(s.arg.([]byte))
	}
	srv := newFuzzServer(f, fx)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, peer := range srv.peers {
			before := srv.holding()
			s := &replayStream{r: bytes.NewReader(data)}
			// A serve that hangs crashes the process: the fuzzer then keeps the
			// input, which a failed test whose cleanup waits on the hung instance
			// would not give.
			watchdog := time.AfterFunc(serveTimeout, func() {
				panic(fmt.Sprintf("serving %s did not return within %v", peer.Short(), serveTimeout))
			})
			srv.p.serve(s, peer)
			watchdog.Stop()
			if after := srv.holding(); after != before {
				t.Fatalf("serving %s changed what the node holds:\nbefore %s\n after %s", peer.Short(), before, after)
			}
			if s.out.Len() > 0 {
				var resp response
				if _, err := readFrame(&s.out, &resp); err != nil {
					t.Fatalf("serving %s: the answer does not start with a response: %v", peer.Short(), err)
				}
			}
		}
	})
}

// FuzzReadFrame: reading any bytes as a frame of each message type never panics;
// it fails with io.EOF on no data and with ErrProtocol otherwise; what it reads
// was within the data, and encodes to a frame that reads back and encodes the same.
func FuzzReadFrame(f *testing.F) {
	for _, s := range frameSeeds(f, loadFixture(f)) {
		f.Add(s.arg.([]byte))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, v := range []any{&request{}, &response{}, &batch{}, &ack{}} {
			checkFrame(t, data, v)
		}
	})
}

func checkFrame(t *testing.T, data []byte, v any) {
	n, err := readFrame(bytes.NewReader(data), v)
	if err != nil {
		if !(len(data) == 0 && err == io.EOF) && !errors.Is(err, ErrProtocol) {
			t.Fatalf("%T from %d bytes: error is neither io.EOF nor a protocol error: %v", v, len(data), err)
		}
		return
	}
	if n < 4 || n > len(data) || n != 4+int(binary.BigEndian.Uint32(data)) {
		t.Fatalf("%T: read %d bytes of %d, frame header says %d", v, n, len(data), binary.BigEndian.Uint32(data))
	}
	var first bytes.Buffer
	if err := writeFrame(&first, v); err != nil {
		t.Fatalf("%T read, then does not encode: %v", v, err)
	}
	again := reflect.New(reflect.TypeOf(v).Elem()).Interface()
	if _, err := readFrame(bytes.NewReader(first.Bytes()), again); err != nil {
		t.Fatalf("%T: re-encoded frame does not read: %v", v, err)
	}
	var second bytes.Buffer
	if err := writeFrame(&second, again); err != nil || !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Fatalf("%T encodes differently after a round trip (%v):\n%x\n%x", v, err, first.Bytes(), second.Bytes())
	}
}

// FuzzParseTicket: parsing any string never panics, and a parsed ticket has an
// address and re-serialises to a string that parses to the same ticket.
func FuzzParseTicket(f *testing.F) {
	for _, s := range ticketSeeds(f, loadFixture(f)) {
		f.Add(s.arg.(string))
	}
	f.Fuzz(func(t *testing.T, s string) {
		tk, err := ParseTicket(s)
		if err != nil {
			return
		}
		if len(tk.Addrs) == 0 {
			t.Fatal("parsed a ticket without addresses")
		}
		str := tk.String()
		again, err := ParseTicket(str)
		if err != nil {
			t.Fatalf("re-serialised ticket %q does not parse: %v", str, err)
		}
		if again.DB != tk.DB || again.Name != tk.Name || again.Owner != tk.Owner ||
			!slices.Equal(again.Addrs, tk.Addrs) || !bytes.Equal(again.Invite, tk.Invite) {
			t.Fatalf("ticket changed in a round trip:\n%+v\n%+v", tk, again)
		}
		if again.String() != str {
			t.Fatalf("ticket serialises differently after a round trip: %q, %q", str, again.String())
		}
	})
}

// TestFrameLengthIsNotTrusted: a frame header announcing the largest frame, with
// little behind it, costs about what arrived, not what was announced.
func TestFrameLengthIsNotTrusted(t *testing.T) {
	data := binary.BigEndian.AppendUint32(nil, maxFrame)
	data = append(data, make([]byte, 1000)...)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	_, err := readFrame(bytes.NewReader(data), &batch{})
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("truncated frame: %v, want a protocol error", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 4<<20 {
		t.Fatalf("reading 1000 bytes of an announced %d-byte frame allocated %d bytes", maxFrame, got)
	}
}

// fuzzSeed is one fuzz input (a []byte or a string).
type fuzzSeed struct {
	name string
	arg  any
}

// encodeFrames encodes messages as consecutive frames.
func encodeFrames(tb testing.TB, msgs ...any) []byte {
	var b bytes.Buffer
	for _, m := range msgs {
		if err := writeFrame(&b, m); err != nil {
			tb.Fatal(err)
		}
	}
	return b.Bytes()
}

// fixtureIDs are the fixture's database id, its owner and the ids of its entries.
func fixtureIDs(tb testing.TB, raws [][]byte) (engine.ID, engine.PublicKey, []engine.ID) {
	var ids []engine.ID
	var owner engine.PublicKey
	for i, raw := range raws {
		e, id, err := engine.DecodeEntry(raw)
		if err != nil {
			tb.Fatalf("fixture entry %d: %v", i, err)
		}
		if i == 0 {
			owner = e.Author
		}
		ids = append(ids, id)
	}
	return ids[0], owner, ids
}

// serveSeeds are request streams: each request kind, syncs and pushes with the
// uploads that follow them (duplicates, a tampered entry, another database's
// entries), a bootstrap with an unknown invite, and broken streams.
func serveSeeds(tb testing.TB, fx fuzzFixture) []fuzzSeed {
	db, owner, ids := fixtureIDs(tb, fx.Entries)
	_, _, foreign := fixtureIDs(tb, fx.Foreign)
	v := ProtocolVersion
	last := fx.Entries[len(fx.Entries)-1]
	tampered := bytes.Clone(last)
	tampered[len(tampered)-5] ^= 0x10 // in the signature
	done := &batch{Done: true}
	hello := encodeFrames(tb, &request{Op: "hello", Version: v, Name: "peer", Addrs: []string{"127.0.0.1:7001"}})
	return []fuzzSeed{
		{"hello", hello},
		{"discover", encodeFrames(tb, &request{Op: "discover", Version: v})},
		{"sync-full", encodeFrames(tb, &request{Op: "sync", Version: v, DB: db}, done)},
		{"sync-partial", encodeFrames(tb, &request{Op: "sync", Version: v, DB: db,
			VV: engine.EncodeVersionVector(engine.VersionVector{owner: 2}), Tips: ids[1:2]},
			&batch{Entries: [][]byte{last}}, done)},
		{"push-duplicates", encodeFrames(tb, &request{Op: "push", Version: v, DB: db}, &batch{Entries: fx.Entries}, done)},
		{"push-tampered", encodeFrames(tb, &request{Op: "push", Version: v, DB: db}, &batch{Entries: [][]byte{tampered}}, done)},
		{"push-foreign", encodeFrames(tb, &request{Op: "push", Version: v, DB: db}, &batch{Entries: fx.Foreign}, done)},
		{"get", encodeFrames(tb, &request{Op: "get", Version: v, DB: db, IDs: append(slices.Clone(ids[len(ids)-2:]), foreign[0], engine.ID{1})})},
		{"bootstrap", encodeFrames(tb, &request{Op: "bootstrap", Version: v, DB: db, Invite: bytes.Repeat([]byte{9}, 16), Name: "joiner"}, done)},
		{"unknown-op", encodeFrames(tb, &request{Op: "gossip", Version: v})},
		{"other-version", encodeFrames(tb, &request{Op: "hello", Version: v + 1})},
		{"truncated", hello[:len(hello)-3]},
		{"oversized", []byte{0xff, 0xff, 0xff, 0xff, 0xa0}},
		{"empty", []byte{}},
	}
}

// frameSeeds are one frame of each message type, an empty and an oversized frame,
// and broken headers.
func frameSeeds(tb testing.TB, fx fuzzFixture) []fuzzSeed {
	db, owner, ids := fixtureIDs(tb, fx.Entries)
	vv := engine.EncodeVersionVector(engine.VersionVector{owner: uint64(len(ids))})
	return []fuzzSeed{
		{"request", encodeFrames(tb, &request{Op: "sync", Version: ProtocolVersion, DB: db, VV: vv, Tips: ids[len(ids)-1:], Name: "n", Addrs: []string{"[::1]:7000"}})},
		{"response-hello", encodeFrames(tb, &response{Version: ProtocolVersion, Name: "server", Addrs: []string{"127.0.0.1:7000"}})},
		{"response-offers", encodeFrames(tb, &response{DBs: []Offer{{ID: db, Name: "notes", Entries: uint64(len(ids)), Perm: "write"}}})},
		{"response-sync", encodeFrames(tb, &response{VV: vv, Tips: ids[len(ids)-1:], Count: 3})},
		{"response-error", encodeFrames(tb, errResponse(fmt.Errorf("%w: %s", ErrNotAuthorized, db.Short())))},
		{"batch", encodeFrames(tb, &batch{Entries: fx.Entries[:2]})},
		{"batch-done", encodeFrames(tb, &batch{Done: true})},
		{"ack", encodeFrames(tb, &ack{Applied: 1, Duplicates: 2, Pending: 3, Rejected: 4, Err: "refused"})},
		{"zero-length", []byte{0, 0, 0, 0}},
		{"oversized", []byte{0x05, 0x00, 0x00, 0x01, 0xa0}},
		{"short-header", []byte{0, 0}},
		{"empty", []byte{}},
	}
}

// ticketSeeds are tickets as `db share` prints them, with and without an invite,
// surrounded by white space, and broken ones.
func ticketSeeds(tb testing.TB, fx fuzzFixture) []fuzzSeed {
	db, owner, _ := fixtureIDs(tb, fx.Entries)
	tk := Ticket{DB: db, Name: "notes", Owner: owner, Addrs: []string{"127.0.0.1:7000", "[::1]:7000"}, Invite: bytes.Repeat([]byte{9}, 16)}
	plain := tk
	plain.Invite = nil
	noAddrs := tk
	noAddrs.Addrs = nil
	s := tk.String()
	return []fuzzSeed{
		{"invite", s},
		{"no-invite", plain.String()},
		{"white-space", "  " + s + "\n"},
		{"no-addresses", noAddrs.String()},
		{"other-prefix", "eidefs2:" + s[len(ticketPrefix):]},
		{"bad-base64", ticketPrefix + "!!" + s[len(ticketPrefix)+2:]},
		{"truncated", s[:len(s)-7]},
		{"empty", ""},
	}
}

func fuzzSeeds(tb testing.TB, fx fuzzFixture) map[string][]fuzzSeed {
	return map[string][]fuzzSeed{
		"FuzzServe":       serveSeeds(tb, fx),
		"FuzzReadFrame":   frameSeeds(tb, fx),
		"FuzzParseTicket": ticketSeeds(tb, fx),
	}
}

// TestFuzzSeedCorpus checks that the committed corpus is exactly the seeds made
// from the committed fixture. With -write-seeds it makes a new fixture and
// rewrites the corpus.
func TestFuzzSeedCorpus(t *testing.T) {
	if *writeSeeds {
		if err := os.MkdirAll(filepath.Dir(fixturePath), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fixturePath, encodeFrames(t, makeFixture(t)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for target, seeds := range fuzzSeeds(t, loadFixture(t)) {
		dir := filepath.Join("testdata", "fuzz", target)
		if *writeSeeds {
			var cs []fuzzcorpus.Seed
			for _, s := range seeds {
				cs = append(cs, fuzzcorpus.Seed{Name: s.name, Arg: s.arg})
			}
			if err := fuzzcorpus.Rewrite(dir, cs); err != nil {
				t.Fatal(err)
			}
			continue
		}
		for _, s := range seeds {
			path := fuzzcorpus.Path(dir, s.name)
			if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, fuzzcorpus.File(s.arg)) {
				t.Errorf("%s is missing or out of date (%v): go test -run TestFuzzSeedCorpus ./netsync -write-seeds", path, err)
			}
		}
	}
}
