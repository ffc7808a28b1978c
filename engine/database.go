package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/eidefs/eidefs/kv"
)

// MaxNameLen is the longest name (of a database, store or key), as on most
// filesystems.
const MaxNameLen = 255

// validName reports whether s can be a name: non-empty, not "." or "..", no "/" or
// NUL (so every name is a valid file name).
func validName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00")
}

// CheckName returns why s cannot name a database, store or key, or nil.
func CheckName(s string) error {
	if len(s) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrNameTooLong, len(s), MaxNameLen)
	}
	if !validName(s) {
		return fmt.Errorf("%w %q", ErrInvalidName, s)
	}
	if s == ".sync" {
		return fmt.Errorf("%w: %q", ErrReserved, s)
	}
	return nil
}

// CheckStoreName is CheckName plus the reserved settings store.
func CheckStoreName(s string) error {
	if s == SettingsStore {
		return fmt.Errorf("%w: %q holds the database's settings", ErrReserved, s)
	}
	return CheckName(s)
}

// DatabaseInfo summarises a database.
type DatabaseInfo struct {
	ID      ID
	Name    string // this node's name for it
	Entries uint64
	Tips    []ID
	Height  uint64
	Stores  []string
}

// CreateDatabase makes a new database, with this node's key as its admin.
func (in *Instance) CreateDatabase(name, description string) (*Database, error) {
	if err := CheckName(name); err != nil {
		return nil, err
	}
	r := in.do(&request{create: &createReq{name: name, description: description}})
	if r.err != nil {
		return nil, r.err
	}
	return &Database{in: in, id: r.id}, nil
}

// Databases lists the databases, sorted by name.
func (in *Instance) Databases() []DatabaseInfo {
	in.mu.RLock()
	defer in.mu.RUnlock()
	out := make([]DatabaseInfo, 0, len(in.dbs))
	for _, st := range in.dbs {
		out = append(out, st.info())
	}
	slices.SortFunc(out, func(a, b DatabaseInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (st *dbState) info() DatabaseInfo {
	var stores []string
	for _, s := range st.rec.Stores {
		if s != SettingsStore {
			stores = append(stores, s)
		}
	}
	return DatabaseInfo{ID: st.id, Name: st.rec.Name, Entries: st.rec.Count, Tips: slices.Clone(st.rec.Tips), Height: st.rec.MaxH, Stores: stores}
}

// Database finds a database by this node's name for it, or by its id (full, or a
// unique prefix of at least 8 hex digits).
func (in *Instance) Database(nameOrID string) (*Database, error) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	if id, ok := in.names[nameOrID]; ok {
		return &Database{in: in, id: id}, nil
	}
	if len(nameOrID) >= 8 {
		var found []ID
		for id := range in.dbs {
			if strings.HasPrefix(id.String(), strings.ToLower(nameOrID)) {
				found = append(found, id)
			}
		}
		if len(found) == 1 {
			return &Database{in: in, id: found[0]}, nil
		}
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownDatabase, nameOrID)
}

// DatabaseByID returns the database with id, if this node has it.
func (in *Instance) DatabaseByID(id ID) (*Database, bool) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	_, ok := in.dbs[id]
	return &Database{in: in, id: id}, ok
}

// Database is a handle on one database. It is cheap and safe for concurrent use.
type Database struct {
	in *Instance
	id ID
}

// ID is the database's id (its root entry's id).
func (d *Database) ID() ID { return d.id }

func (d *Database) state() *dbState {
	d.in.mu.RLock()
	defer d.in.mu.RUnlock()
	return d.in.dbs[d.id]
}

// Info summarises the database.
func (d *Database) Info() DatabaseInfo { return d.state().info() }

// Name is this node's name for the database.
func (d *Database) Name() string { return d.state().rec.Name }

// Settings returns the database's current settings.
func (d *Database) Settings() (*Settings, error) { return d.state().settingsFor(nil) }

// CanWrite reports whether this node's key may write the database.
func (d *Database) CanWrite() bool {
	s, err := d.Settings()
	return err == nil && s.Permission(d.in.id.Public()) >= PermWrite
}

// Get returns the visible state of path in store, with its value.
func (d *Database) Get(store string, path []string) (Node, error) {
	return d.in.withBlob(readNode(d.in.kv, &d.in.maps, d.id, store, path, true))
}

// Open is Get without reading a blob's bytes: Node.Blob names them
// (Instance.BlobPath) and Value is nil for a blob.
func (d *Database) Open(store string, path []string) (Node, error) {
	return readNode(d.in.kv, &d.in.maps, d.id, store, path, true)
}

// Stat is Get without reading the value.
func (d *Database) Stat(store string, path []string) (Node, error) {
	return readNode(d.in.kv, &d.in.maps, d.id, store, path, false)
}

// List calls fn for each visible child of the map at path in store, by name,
// until fn returns false.
func (d *Database) List(store string, path []string, fn func(DirEntry) bool) error {
	return listDir(d.in.kv, &d.in.maps, d.id, store, path, "", fn)
}

// ListAfter is List from the first name after after, so a long listing can be read
// in pages. Names come in the store's order (bytes, as in the keys).
func (d *Database) ListAfter(store string, path []string, after string, fn func(DirEntry) bool) error {
	return listDir(d.in.kv, &d.in.maps, d.id, store, path, after, fn)
}

// Stores lists the visible stores.
func (d *Database) Stores() []string {
	var out []string
	for _, s := range d.state().rec.Stores {
		if s == SettingsStore {
			continue
		}
		if n, err := d.Stat(s, nil); err == nil && n.Kind == OpMap {
			out = append(out, s)
		}
	}
	return out
}

// Tips are the entries with no children.
func (d *Database) Tips() []ID { return slices.Clone(d.state().rec.Tips) }

// LogEntry describes one entry, for logs.
type LogEntry struct {
	ID      ID
	Height  uint64
	Time    int64
	Author  PublicKey
	Stores  []string
	Parents []ID
	Ops     int
}

// Log calls fn for each entry, newest (greatest height) first, until it returns false.
func (d *Database) Log(fn func(LogEntry) bool) error {
	var ferr error
	err := d.in.kv.Iterate(key(pLog, d.id[:]), true, func(k, _ []byte) bool {
		var id ID
		copy(id[:], k[1+32+8:])
		m, err := getRec[entryMeta](d.in.kv, key(pMeta, id[:]))
		if err != nil {
			ferr = err
			return false
		}
		return fn(LogEntry{ID: id, Height: m.H, Time: m.T, Author: m.A, Stores: m.Stores, Parents: m.Parents, Ops: m.Ops})
	})
	if err == nil {
		err = ferr
	}
	return err
}

// Entry returns the stored bytes of an entry of any database.
func (in *Instance) Entry(id ID) ([]byte, error) {
	b, err := in.kv.Get(key(pEntry, id[:]))
	if errors.Is(err, kv.ErrNotFound) {
		return nil, fmt.Errorf("entry %s: %w", id.Short(), ErrNotFound)
	}
	if err == nil && hashID(b) != id {
		return nil, fmt.Errorf("%w: stored entry %s does not match its id", ErrCorrupt, id.Short())
	}
	return b, err
}

// ValueIn returns the value that stored entry id set at path in store: what a
// reader that opened that version reads after the key changed. The entry was
// verified when it was stored and Entry checks its hash, so it is only parsed.
func (in *Instance) ValueIn(id ID, store string, path []string) ([]byte, error) {
	raw, err := in.Entry(id)
	if err != nil {
		return nil, err
	}
	e, err := parseEntry(raw)
	if err != nil {
		return nil, err
	}
	if sn := e.Store(store); sn != nil {
		for i := len(sn.Ops) - 1; i >= 0; i-- {
			if op := sn.Ops[i]; op.Kind == OpValue && slices.Equal(op.Path, path) {
				return in.opValue(&op)
			}
		}
	}
	return nil, fmt.Errorf("entry %s sets no value at %s/%s: %w", id.Short(), store, strings.Join(path, "/"), ErrNotFound)
}

// Conflict is a write that lost to a concurrent one on the same path.
type Conflict struct {
	Store    string
	Path     []string
	Loser    ID // the losing entry
	Author   PublicKey
	Kind     OpKind // OpDelete for a delete that was undone
	Value    []byte
	Time     int64
	Winner   ID   // the entry that overwrote it without having seen it
	Resolved bool // a later write on the path has seen the loser
}

// Conflicts calls fn for each recorded conflict, by store and path.
func (d *Database) Conflicts(fn func(Conflict) bool) error {
	prefix := key(pConflict, d.id[:])
	var ferr error
	err := d.in.kv.Iterate(prefix, false, func(k, v []byte) bool {
		var c conflictRec
		if ferr = decMode.Unmarshal(v, &c); ferr != nil {
			return false
		}
		store, rest := readName(k[len(prefix):])
		if len(rest) < 2+orderLen {
			return true
		}
		depth := int(rest[0])<<8 | int(rest[1])
		rest = rest[2:]
		path := make([]string, depth)
		for i := range path {
			path[i], rest = readName(rest)
		}
		lo := orderFrom(rest)
		out := Conflict{Store: store, Path: path, Loser: lo.E, Author: c.A, Kind: c.K, Value: c.V, Time: c.T, Winner: c.W.E}
		if len(c.B) > 0 {
			op := Op{Kind: c.K, Blob: c.B, Size: c.N}
			if out.Value, ferr = d.in.opValue(&op); ferr != nil {
				return false
			}
		}
		out.Resolved = d.resolved(store, path, c.A, lo)
		return fn(out)
	})
	if err == nil {
		err = ferr
	}
	return err
}

// resolved reports whether the latest explicit op on path has the loser among its
// ancestors (someone wrote the key again after seeing both versions).
func (d *Database) resolved(store string, path []string, author PublicKey, lo order) bool {
	rec, err := getPathRec(d.in.kv, pathKey(pPath, d.id, store, path))
	if err != nil || rec == nil {
		return false
	}
	if rec.X.E == lo.E {
		return true
	}
	m, err := getRec[entryMeta](d.in.kv, key(pMeta, rec.X.E[:]))
	if err != nil {
		return false
	}
	lm, err := getRec[entryMeta](d.in.kv, key(pMeta, lo.E[:]))
	if err != nil {
		return false
	}
	return m.VV.covers(author, lm.S) && bytes.Equal(lm.A[:], author[:])
}

// Grant gives key a permission on the database (an admin commit).
func (d *Database) Grant(key string, name string, p Permission) (ID, error) {
	if key != WildcardKey {
		if _, err := ParsePublicKey(key); err != nil {
			return ID{}, err
		}
	}
	return d.commitOps(SettingsStore, grantOps(key, name, p))
}

// Revoke marks key as revoked: entries it makes after seeing the revocation are refused.
func (d *Database) Revoke(key string) (ID, error) {
	return d.commitOps(SettingsStore, revokeOps(key))
}

func (d *Database) commitOps(store string, ops []Op) (ID, error) {
	r := d.in.do(&request{commit: &commitReq{db: d.id, stores: []StoreNode{{Name: store, Ops: ops}}}})
	return r.id, r.err
}

// Entries calls fn with each entry of the database in height order (parents before
// children), starting at height from, until fn returns false.
func (d *Database) Entries(from uint64, fn func(id ID, raw []byte) bool) error {
	var ferr error
	err := d.in.kv.Iterate(key(pLog, d.id[:]), false, func(k, _ []byte) bool {
		var id ID
		copy(id[:], k[1+32+8:])
		if binary.BigEndian.Uint64(k[1+32:]) < from {
			return true
		}
		raw, err := d.in.kv.Get(key(pEntry, id[:]))
		if err == nil && hashID(raw) != id {
			err = fmt.Errorf("%w: stored entry %s does not match its id", ErrCorrupt, id.Short())
		}
		if err != nil {
			ferr = err
			return false
		}
		return fn(id, raw)
	})
	if err == nil {
		err = ferr
	}
	return err
}

// Changes lists an entry's changes: per op, the store, path and kind.
func (in *Instance) Changes(id ID) ([]Change, error) {
	raw, err := in.Entry(id)
	if err != nil {
		return nil, err
	}
	var e Entry
	if err := decMode.Unmarshal(raw, &e); err != nil {
		return nil, err
	}
	var out []Change
	for _, s := range e.Stores {
		for _, op := range s.Ops {
			out = append(out, Change{Store: s.Name, Path: op.Path, Kind: op.Kind})
		}
	}
	return out, nil
}
