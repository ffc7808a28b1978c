package engine

import (
	"fmt"
	"strings"

	"github.com/eidefs/eidefs/kv"
)

// SettingsStore is the reserved store holding a database's name and auth keys.
const SettingsStore = "_settings"

// Permission is what a key may do in a database: Read < Write < Admin.
type Permission uint8

const (
	PermNone Permission = iota
	PermRead
	PermWrite
	PermAdmin
)

func (p Permission) String() string {
	switch p {
	case PermRead:
		return "read"
	case PermWrite:
		return "write"
	case PermAdmin:
		return "admin"
	}
	return "none"
}

// ParsePermission parses "read", "write" or "admin".
func ParsePermission(s string) (Permission, error) {
	switch strings.ToLower(s) {
	case "read":
		return PermRead, nil
	case "write":
		return PermWrite, nil
	case "admin":
		return PermAdmin, nil
	}
	return PermNone, fmt.Errorf("bad permission %q: want read, write or admin", s)
}

// WildcardKey in a database's auth settings applies to every key.
const WildcardKey = "*"

// KeyAuth is one key's entry in a database's auth settings.
type KeyAuth struct {
	Key     string // key string or WildcardKey
	Name    string
	Perm    Permission
	Revoked bool
}

// Settings is the content of a database's _settings store.
type Settings struct {
	Name        string
	Description string
	Keys        map[string]KeyAuth
}

// Permission is what k may do: the best of its own active grant and the wildcard's.
func (s *Settings) Permission(k PublicKey) Permission {
	p := PermNone
	for _, name := range []string{k.String(), WildcardKey} {
		if a, ok := s.Keys[name]; ok && !a.Revoked && a.Perm > p {
			p = a.Perm
		}
	}
	return p
}

// settingsOps are the ops that set a key's grant.
func grantOps(key, name string, p Permission) []Op {
	base := []string{"auth", key}
	ops := []Op{
		{Path: append(base[:2:2], "permission"), Kind: OpValue, Value: []byte(p.String())},
		{Path: append(base[:2:2], "status"), Kind: OpValue, Value: []byte("active")},
	}
	if name != "" {
		ops = append(ops, Op{Path: append(base[:2:2], "name"), Kind: OpValue, Value: []byte(name)})
	}
	return ops
}

func revokeOps(key string) []Op {
	return []Op{{Path: []string{"auth", key, "status"}, Kind: OpValue, Value: []byte("revoked")}}
}

// readSettings parses a settings store as materialised in r.
func readSettings(r kv.Reader, db ID) (*Settings, error) {
	s := &Settings{Keys: map[string]KeyAuth{}}
	str := func(path ...string) string {
		n, err := readNode(r, nil, db, SettingsStore, path, true)
		if err != nil || n.Kind != OpValue {
			return ""
		}
		return string(n.Value)
	}
	s.Name = str("name")
	s.Description = str("description")
	var keys []string
	err := listDir(r, nil, db, SettingsStore, []string{"auth"}, "", func(d DirEntry) bool {
		if d.Kind == OpMap {
			keys = append(keys, d.Name)
		}
		return true
	})
	if err != nil && err != ErrNotFound {
		return nil, err
	}
	for _, k := range keys {
		p, _ := ParsePermission(str("auth", k, "permission"))
		s.Keys[k] = KeyAuth{Key: k, Name: str("auth", k, "name"), Perm: p, Revoked: str("auth", k, "status") == "revoked"}
	}
	return s, nil
}

// settingsEntry is a settings-changing entry, kept in memory per database (they are
// few) so that the settings in force for any entry can be folded quickly.
type settingsEntry struct {
	id     ID
	h      uint64
	t      int64
	author PublicKey
	seq    uint64
	ops    []Op
}

// foldSettings computes the settings made by the given settings entries, which
// must be sorted by (height, id).
func foldSettings(entries []*settingsEntry) (*Settings, error) {
	var db ID
	s := kv.NewStaging(emptyReader{})
	for _, se := range entries {
		a := &applied{id: se.id, e: &Entry{Author: se.author, Time: se.t}, seq: se.seq, vv: vclock{},
			loadOp: func(string, order) (Op, error) { return Op{}, nil }}
		for i, op := range se.ops {
			if err := applyOp(s, db, SettingsStore, op, order{se.h, se.id, uint32(i)}, a); err != nil {
				return nil, err
			}
		}
	}
	return readSettings(s, db)
}

// emptyReader is a kv.Reader with nothing in it.
type emptyReader struct{}

func (emptyReader) Get([]byte) ([]byte, error)                         { return nil, kv.ErrNotFound }
func (emptyReader) Has([]byte) (bool, error)                           { return false, nil }
func (emptyReader) Iterate([]byte, bool, func(k, v []byte) bool) error { return nil }
func (emptyReader) Seek([]byte, []byte, bool) ([]byte, []byte, error) {
	return nil, nil, kv.ErrNotFound
}
