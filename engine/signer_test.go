package engine

import (
	"crypto/ed25519"
	"crypto/sha256"
	"strconv"
	"testing"
)

// TestNonceSigner: signatures made with nonces ahead of time, and those made when
// none is ready, verify with crypto/ed25519 for the identity's key; no nonce is
// used twice; a flipped byte of the message fails.
func TestNonceSigner(t *testing.T) {
	id := NewIdentity()
	s := newNonceSigner(id)
	defer s.close()
	pub := ed25519.PublicKey(id.pub[:])
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		msg := sha256.Sum256([]byte(strconv.Itoa(i)))
		sig := s.Sign(msg[:])
		if !ed25519.Verify(pub, msg[:], sig) {
			t.Fatalf("signature %d does not verify", i)
		}
		msg[i%32] ^= 1
		if ed25519.Verify(pub, msg[:], sig) {
			t.Fatalf("signature %d verifies for another message", i)
		}
		if r := string(sig[:32]); seen[r] {
			t.Fatalf("signature %d reuses a nonce", i)
		} else {
			seen[r] = true
		}
	}
	// With the maker stopped, nonces run out and it signs as RFC 8032 does.
	s.close()
	for range nonceAhead + 1 {
		msg := []byte("after close")
		if sig := s.Sign(msg); !ed25519.Verify(pub, msg, sig) {
			t.Fatal("a signature made without a nonce ready does not verify")
		}
	}
	if sig, want := s.Sign([]byte("m")), ed25519.Sign(id.priv, []byte("m")); string(sig) != string(want) {
		t.Fatal("with no nonce ready, the signature is not RFC 8032's")
	}
}
