package engine

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sort"

	"github.com/fxamacker/cbor/v2"
)

// OpKind is what an operation does to its path.
type OpKind uint8

const (
	// OpValue sets a leaf value (a file's bytes).
	OpValue OpKind = 1
	// OpMap makes the path a nested map (a directory); existing children stay.
	OpMap OpKind = 2
	// OpDelete removes the path and, with it, everything older below it.
	OpDelete OpKind = 3
	// OpLink sets a symbolic link; the value is the target.
	OpLink OpKind = 4
)

func (k OpKind) String() string {
	switch k {
	case OpValue:
		return "value"
	case OpMap:
		return "map"
	case OpDelete:
		return "delete"
	case OpLink:
		return "link"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// overrides reports whether the op hides everything older below its path.
func (k OpKind) overrides() bool { return k != OpMap }

// Op is one change to a store. Path is a list of literal names (a "." inside a
// name is part of the name); the empty path is the store itself.
type Op struct {
	Path  []string `cbor:"1,keyasint"`
	Kind  OpKind   `cbor:"2,keyasint"`
	Value []byte   `cbor:"3,keyasint,omitempty"`
	// Blob and Size replace Value for a value of more than BlobMin bytes: the
	// BlobSum (BLAKE3) of the bytes, kept outside the entry (blob.go), and their
	// length.
	Blob []byte `cbor:"4,keyasint,omitempty"`
	Size uint64 `cbor:"5,keyasint,omitempty"`
}

// StoreNode is an entry's part for one store: the store's DAG parents (its tips
// reachable from the entry's tree parents) and the ordered operations.
type StoreNode struct {
	Name    string `cbor:"1,keyasint"`
	Parents []ID   `cbor:"2,keyasint,omitempty"`
	Ops     []Op   `cbor:"3,keyasint,omitempty"`
}

// Entry is an immutable, signed unit of change: one transaction. Its id is the
// SHA-256 of its canonical (deterministic CBOR) encoding, signature included; the
// ed25519 signature covers the same encoding without the signature (it signs
// SHA-256 of "eidefs entry v1\x00" + that encoding, so a large value is hashed once
// rather than twice by ed25519's SHA-512).
type Entry struct {
	Root    ID          `cbor:"1,keyasint,omitempty"` // zero on a root entry
	Parents []ID        `cbor:"2,keyasint,omitempty"` // tree parents, sorted
	Height  uint64      `cbor:"3,keyasint"`           // max(now ms, max parent height+1)
	Time    int64       `cbor:"4,keyasint"`           // author's wall clock, ms; informational
	Author  PublicKey   `cbor:"5,keyasint"`
	Stores  []StoreNode `cbor:"6,keyasint,omitempty"` // sorted by name
	Entropy []byte      `cbor:"7,keyasint,omitempty"` // root entries only
	Sig     []byte      `cbor:"8,keyasint,omitempty"`
}

// IsRoot reports whether e starts a database.
func (e *Entry) IsRoot() bool { return e.Root.IsZero() }

// DatabaseID is the id of the database e belongs to, given e's own id.
func (e *Entry) DatabaseID(self ID) ID {
	if e.IsRoot() {
		return self
	}
	return e.Root
}

// Store returns e's node for the named store, or nil.
func (e *Entry) Store(name string) *StoreNode {
	i := sort.Search(len(e.Stores), func(i int) bool { return e.Stores[i].Name >= name })
	if i < len(e.Stores) && e.Stores[i].Name == name {
		return &e.Stores[i]
	}
	return nil
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	eo := cbor.CoreDetEncOptions()
	// File names are bytes, not necessarily UTF-8: strings travel as byte strings.
	eo.String = cbor.StringToByteString
	var err error
	if encMode, err = eo.EncMode(); err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:          cbor.DupMapKeyEnforcedAPF,
		IndefLength:        cbor.IndefLengthForbidden,
		ExtraReturnErrors:  cbor.ExtraDecErrorUnknownField,
		ByteStringToString: cbor.ByteStringToStringAllowed,
		MaxNestedLevels:    16,
		MaxArrayElements:   1 << 20,
		MaxMapPairs:        1 << 16,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

func marshal(v any) []byte {
	b, err := encMode.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("engine: encoding %T: %v", v, err)) // our own types always encode
	}
	return b
}

// Errors of entry validation. All wrap ErrInvalidEntry.
var (
	ErrInvalidEntry = errors.New("invalid entry")
	errNotCanonical = fmt.Errorf("%w: encoding is not canonical", ErrInvalidEntry)
	errBadSignature = fmt.Errorf("%w: signature does not verify", ErrInvalidEntry)
)

// normalize sorts and de-duplicates parent lists and sorts stores, so an entry's id
// never depends on the order things were added.
func (e *Entry) normalize() {
	e.Parents = sortIDs(e.Parents)
	for i := range e.Stores {
		e.Stores[i].Parents = sortIDs(e.Stores[i].Parents)
	}
	sort.Slice(e.Stores, func(i, j int) bool { return e.Stores[i].Name < e.Stores[j].Name })
}

func sortIDs(ids []ID) []ID {
	slices.SortFunc(ids, func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	return slices.Compact(ids)
}

// sign fills in e.Author and e.Sig and returns the canonical bytes and id.
func (e *Entry) sign(who signer) ([]byte, ID) {
	e.normalize()
	e.Author = who.Public()
	e.Sig = nil
	unsigned := marshal(e)
	e.Sig = who.Sign(signedDigest(unsigned))
	b := withSig(unsigned, e.Sig)
	return b, hashID(b)
}

func signedDigest(unsigned []byte) []byte {
	h := sha256.New()
	h.Write([]byte("eidefs entry v1\x00"))
	h.Write(unsigned)
	return h.Sum(nil)
}

// The signature is the entry map's last key (8), so the signed encoding is the
// unsigned one with one more pair: a map header one larger, and "08 58 40 <sig>"
// appended. Entries have fewer than 24 fields, so the header is one byte.
// TestWithSigMatchesEncoding holds this to the encoder.
const sigTrailer = 3 + ed25519.SignatureSize

func withSig(unsigned, sig []byte) []byte {
	b := make([]byte, 0, len(unsigned)+sigTrailer)
	b = append(b, unsigned[0]+1)
	b = append(b, unsigned[1:]...)
	b = append(b, 0x08, 0x58, 0x40)
	return append(b, sig...)
}

func withoutSig(signed []byte) []byte {
	u := make([]byte, 0, len(signed)-sigTrailer)
	u = append(u, signed[0]-1)
	return append(u, signed[1:len(signed)-sigTrailer]...)
}

// DecodeEntry parses and checks an encoded entry: canonical form, well-formed
// structure and a valid signature by its author. It does not check authorization
// or parents; the instance does that when applying. It returns the entry's id.
func DecodeEntry(b []byte) (*Entry, ID, error) {
	e, err := parseEntry(b)
	if err != nil {
		return nil, ID{}, err
	}
	if !verifySig(&e.Author, signedDigest(withoutSig(b)), e.Sig) {
		return nil, ID{}, errBadSignature
	}
	return e, hashID(b), nil
}

// parseEntry is DecodeEntry without the signature check.
func parseEntry(b []byte) (*Entry, error) {
	var e Entry
	if err := decMode.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidEntry, err)
	}
	if !bytes.Equal(marshal(&e), b) {
		return nil, errNotCanonical
	}
	if err := e.checkShape(); err != nil {
		return nil, err
	}
	return &e, nil
}

func (e *Entry) checkShape() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidEntry}, a...)...)
	}
	if len(e.Sig) != ed25519.SignatureSize {
		return bad("missing signature")
	}
	if e.IsRoot() != (len(e.Parents) == 0) {
		return bad("a root entry has no parents and every other entry has some")
	}
	if !e.IsRoot() && len(e.Entropy) > 0 {
		return bad("entropy on a non-root entry")
	}
	if !sortedUnique(e.Parents) {
		return bad("parents not sorted")
	}
	for i, s := range e.Stores {
		if i > 0 && e.Stores[i-1].Name >= s.Name {
			return bad("stores not sorted")
		}
		if s.Name == "" {
			return bad("empty store name")
		}
		if !sortedUnique(s.Parents) {
			return bad("store parents not sorted")
		}
		for _, op := range s.Ops {
			switch op.Kind {
			case OpValue:
				if (len(op.Blob) > 0 || op.Size > 0) && (len(op.Blob) != len(blobHash{}) || op.Size <= BlobMin || len(op.Value) > 0) {
					return bad("a blob reference needs a 32-byte hash, a size over %d and no inline value", BlobMin)
				}
			case OpLink:
				if len(op.Blob) > 0 || op.Size > 0 {
					return bad("link op with a blob")
				}
			case OpMap, OpDelete:
				if len(op.Blob) > 0 || op.Size > 0 {
					return bad("%s op with a blob", op.Kind)
				}
				if len(op.Value) > 0 {
					return bad("%s op with a value", op.Kind)
				}
			default:
				return bad("unknown op kind %d", op.Kind)
			}
			for _, n := range op.Path {
				if n == "" {
					return bad("empty name in a path")
				}
			}
		}
	}
	return nil
}

func sortedUnique(ids []ID) bool {
	for i := 1; i < len(ids); i++ {
		if bytes.Compare(ids[i-1][:], ids[i][:]) >= 0 {
			return false
		}
	}
	return true
}
