package engine

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ID names an entry: the SHA-256 of its canonical encoding. A database's id is the
// id of its root entry.
type ID [32]byte

// String is the lowercase hex form used everywhere users see ids.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the first 12 hex digits, enough to tell entries apart in a log.
func (id ID) Short() string { return id.String()[:12] }

// IsZero reports whether id is unset.
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses a full hex id.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("bad id %q: want %d hex digits", s, 2*len(id))
	}
	copy(id[:], b)
	return id, nil
}

func hashID(b []byte) ID { return sha256.Sum256(b) }

// PublicKey is an ed25519 public key, the identity of a device and an author.
type PublicKey [ed25519.PublicKeySize]byte

const keyPrefix = "ed25519:"

// String is "ed25519:" + unpadded URL-safe base64, safe in file names and tickets.
func (k PublicKey) String() string { return keyPrefix + base64.RawURLEncoding.EncodeToString(k[:]) }

// Short is a short form for logs and listings.
func (k PublicKey) Short() string { return k.String()[:len(keyPrefix)+10] }

// ParsePublicKey parses the String form.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	rest, ok := strings.CutPrefix(s, keyPrefix)
	if !ok {
		return k, fmt.Errorf("bad key %q: want %s<base64>", s, keyPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("bad key %q: want %d bytes of base64", s, len(k))
	}
	copy(k[:], b)
	return k, nil
}

// Identity is a device's signing key pair.
type Identity struct {
	priv ed25519.PrivateKey
	pub  PublicKey
}

// NewIdentity makes a fresh random identity.
func NewIdentity() *Identity {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err) // crypto/rand does not fail on supported systems
	}
	return IdentityFromPrivate(priv)
}

// IdentityFromPrivate wraps an existing private key.
func IdentityFromPrivate(priv ed25519.PrivateKey) *Identity {
	id := &Identity{priv: priv}
	copy(id.pub[:], priv.Public().(ed25519.PublicKey))
	return id
}

// Public is the identity's public key.
func (i *Identity) Public() PublicKey { return i.pub }

// Private is the private key (for TLS certificates).
func (i *Identity) Private() ed25519.PrivateKey { return i.priv }

// Sign signs msg.
func (i *Identity) Sign(msg []byte) []byte { return ed25519.Sign(i.priv, msg) }

const pemType = "EIDEFS ED25519 PRIVATE KEY"

// SaveIdentity writes the key to path with mode 0600; it refuses to overwrite.
func SaveIdentity(i *Identity, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("saving device key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: pemType, Bytes: i.priv.Seed()}); err != nil {
		f.Close()
		return fmt.Errorf("saving device key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("saving device key: %w", err)
	}
	return f.Close()
}

// LoadIdentity reads a key written by SaveIdentity.
func LoadIdentity(path string) (*Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading device key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != pemType || len(blk.Bytes) != ed25519.SeedSize {
		return nil, errors.New("reading device key: " + path + " is not an eidefs key file")
	}
	return IdentityFromPrivate(ed25519.NewKeyFromSeed(blk.Bytes)), nil
}

// MarshalText gives JSON and text encodings the String form.
func (k PublicKey) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText parses the String form.
func (k *PublicKey) UnmarshalText(b []byte) error {
	p, err := ParsePublicKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// MarshalText gives JSON and text encodings the hex form.
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses the hex form.
func (id *ID) UnmarshalText(b []byte) error {
	p, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = p
	return nil
}
