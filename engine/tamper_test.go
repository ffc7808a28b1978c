package engine

import (
	"bytes"
	"errors"
	"testing"
)

// twoNodes: a owns database "d" and has made one data commit; b knows nothing yet.
func twoNodes(t *testing.T) (a, b *Instance, da *Database, raws [][]byte) {
	a, b = newInstance(t, nil), newInstance(t, nil)
	da, err := a.CreateDatabase("d", "")
	if err != nil {
		t.Fatal(err)
	}
	tx := da.Begin()
	tx.Store("s").Set("k", []byte("v"))
	mustCommit(t, tx)
	return a, b, da, allEntries(da)
}

func applyOne(t *testing.T, in *Instance, raw []byte) error {
	t.Helper()
	res, err := in.Apply("peer", raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rejected) > 0 {
		return res.Rejected[0].Err
	}
	return nil
}

func TestFlippedByteRejected(t *testing.T) {
	_, b, _, raws := twoNodes(t)
	if err := applyOne(t, b, raws[0]); err != nil {
		t.Fatal(err)
	}
	child := raws[1]
	for i := range child {
		bad := append([]byte(nil), child...)
		bad[i] ^= 0x01
		if err := applyOne(t, b, bad); !errors.Is(err, ErrInvalidEntry) {
			t.Fatalf("byte %d flipped: got %v, want ErrInvalidEntry", i, err)
		}
	}
	if got := b.Stats().Rejected; got != uint64(len(child)) {
		t.Fatalf("rejected count %d, want %d", got, len(child))
	}
	if err := applyOne(t, b, child); err != nil {
		t.Fatalf("the intact entry: %v", err)
	}
}

func TestWrongSignerRejected(t *testing.T) {
	_, b, _, raws := twoNodes(t)
	e, _, _ := DecodeEntry(raws[1])
	// Signed by another key but claiming the original author.
	author := e.Author
	e.sign(NewIdentity())
	e.Author = author
	if err := applyOne(t, b, marshal(e)); !errors.Is(err, ErrInvalidEntry) {
		t.Fatalf("got %v, want ErrInvalidEntry", err)
	}
}

func TestUnauthorizedSignerRejected(t *testing.T) {
	_, b, da, raws := twoNodes(t)
	applyOne(t, b, raws[0])
	applyOne(t, b, raws[1])
	// A well-formed, validly signed entry by a key the database never granted.
	mallory := NewIdentity()
	e := &Entry{Root: da.ID(), Parents: da.Tips(), Height: da.Info().Height + 1, Time: 1,
		Stores: []StoreNode{{Name: "s", Ops: []Op{{Path: []string{"k"}, Kind: OpValue, Value: []byte("evil")}}}}}
	raw, _ := e.sign(mallory)
	if err := applyOne(t, b, raw); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("got %v, want ErrNotAuthorized", err)
	}
	db, _ := b.DatabaseByID(da.ID())
	if got := getString(t, db, "s", "k"); got != "v" {
		t.Fatalf("value changed to %q", got)
	}
	// A writer may not change settings (grant itself admin).
	writer := NewIdentity()
	if _, err := da.Grant(writer.Public().String(), "w", PermWrite); err != nil {
		t.Fatal(err)
	}
	for _, raw := range allEntries(da) {
		applyOne(t, b, raw)
	}
	e = &Entry{Root: da.ID(), Parents: da.Tips(), Height: da.Info().Height + 1, Time: 1,
		Stores: []StoreNode{{Name: SettingsStore, Ops: grantOps(writer.Public().String(), "", PermAdmin)}}}
	raw, _ = e.sign(writer)
	if err := applyOne(t, b, raw); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("writer changing settings: got %v, want ErrNotAuthorized", err)
	}
}

func TestRevokedKeyRefusedAfterRevocation(t *testing.T) {
	a, _, da, _ := twoNodes(t)
	w := newInstance(t, nil)
	if _, err := da.Grant(w.Identity().Public().String(), "w", PermWrite); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, w)
	dw, _ := w.DatabaseByID(da.ID())
	tx := dw.Begin()
	tx.Store("s").Set("w", []byte("before"))
	mustCommit(t, tx)
	syncAll(t, w, a)
	if _, err := da.Revoke(w.Identity().Public().String()); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, w)
	// w now knows it was revoked: it cannot commit, and a forged entry on top of
	// the revocation is refused by a.
	tx = dw.Begin()
	tx.Store("s").Set("w", []byte("after"))
	if _, err := tx.Commit(Journal); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("commit by revoked key: %v, want ErrNotAuthorized", err)
	}
	e := &Entry{Root: da.ID(), Parents: da.Tips(), Height: da.Info().Height + 1, Time: 1,
		Stores: []StoreNode{{Name: "s", Ops: []Op{{Path: []string{"w"}, Kind: OpValue, Value: []byte("after")}}}}}
	raw, _ := e.sign(w.Identity())
	if err := applyOne(t, a, raw); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("entry by revoked key: %v, want ErrNotAuthorized", err)
	}
	if got := getString(t, da, "s", "w"); got != "before" {
		t.Fatalf("value = %q", got)
	}
}

func TestMissingParentWaits(t *testing.T) {
	_, b, da, raws := twoNodes(t)
	tx := da.Begin()
	tx.Store("s").Set("k2", []byte("v2"))
	mustCommit(t, tx)
	raws = allEntries(da) // root, c1, c2
	res, err := b.Apply("peer", raws[2], raws[1])
	if err != nil || res.Pending != 2 || len(res.Applied) != 0 {
		t.Fatalf("children without root: %+v %v", res, err)
	}
	if m := b.Missing(); len(m) != 1 || m[0] != da.ID() {
		t.Fatalf("missing = %v, want the root", m)
	}
	if _, ok := b.DatabaseByID(da.ID()); ok {
		t.Fatal("database exists before its root arrived")
	}
	res, _ = b.Apply("peer", raws[0])
	if len(res.Applied) != 3 || res.Pending != 0 {
		t.Fatalf("after root: %+v", res)
	}
	db, _ := b.DatabaseByID(da.ID())
	if got := getString(t, db, "s", "k2"); got != "v2" {
		t.Fatalf("k2 = %q", got)
	}
	// Duplicates are harmless.
	res, _ = b.Apply("peer", raws...)
	if res.Duplicates != 3 {
		t.Fatalf("duplicates = %d", res.Duplicates)
	}
}

func TestBadShapesRejected(t *testing.T) {
	_, b, da, raws := twoNodes(t)
	applyOne(t, b, raws[0])
	id := NewIdentity()
	da.Grant(WildcardKey, "", PermWrite)
	for _, raw := range allEntries(da) {
		applyOne(t, b, raw)
	}
	tips := da.Tips()
	cases := map[string]*Entry{
		"height not above parent": {Root: da.ID(), Parents: tips, Height: 1, Stores: []StoreNode{{Name: "s", Ops: []Op{{Path: []string{"x"}, Kind: OpMap}}}}},
		"bogus store parent":      {Root: da.ID(), Parents: tips, Height: da.Info().Height + 1, Stores: []StoreNode{{Name: "s", Parents: []ID{da.ID()}}}},
		"unknown op kind":         {Root: da.ID(), Parents: tips, Height: da.Info().Height + 1, Stores: []StoreNode{{Name: "s", Ops: []Op{{Path: []string{"x"}, Kind: 9}}}}},
		"empty name":              {Root: da.ID(), Parents: tips, Height: da.Info().Height + 1, Stores: []StoreNode{{Name: "s", Ops: []Op{{Path: []string{""}, Kind: OpMap}}}}},
	}
	for name, e := range cases {
		raw, _ := e.sign(id)
		if err := applyOne(t, b, raw); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Non-canonical: same entry with a parent list out of order.
	e := &Entry{Root: da.ID(), Parents: tips, Height: da.Info().Height + 1}
	raw, _ := e.sign(id)
	if _, _, err := DecodeEntry(append(raw, 0)); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("trailing byte: %v", err)
	}
}

func TestWithSigMatchesEncoding(t *testing.T) {
	id := NewIdentity()
	for _, e := range []*Entry{
		{Height: 1, Time: 1, Entropy: []byte{1}, Stores: []StoreNode{{Name: SettingsStore}}},
		{Root: ID{1}, Parents: []ID{{2}}, Height: 9, Time: 3, Stores: []StoreNode{{Name: "s", Ops: []Op{{Path: []string{"k"}, Kind: OpValue, Value: make([]byte, 70000)}}}}},
		{Root: ID{1}, Parents: []ID{{2}, {3}}, Height: 1 << 40},
	} {
		raw, _ := e.sign(id)
		if !bytes.Equal(raw, marshal(e)) {
			t.Fatalf("withSig differs from the encoder for %+v", e.Height)
		}
		if _, _, err := DecodeEntry(raw); err != nil {
			t.Fatal(err)
		}
	}
}
