package engine

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"sync"

	"filippo.io/edwards25519"
)

// An ed25519 signature (R, S) is R = rB and S = r + H(R, A, M)·a for a secret nonce
// r. Verification holds for any r; RFC 8032 derives r from the key and the
// message, which puts the scalar multiplication rB, nearly all of the cost of
// signing, on the committer's path. A nonceSigner instead draws r at random ahead
// of time, on another core, while the instance is idle or busy elsewhere, and a
// signature costs one SHA-512 and a scalar multiply-add. Each nonce is taken from a
// channel, so it is used once; it is uniform (64 bytes of crypto/rand reduced
// modulo the group order) and lives only in memory, as the key does. With no nonce
// ready, it signs as RFC 8032 does. Signatures verify with crypto/ed25519 either way.

// signer is what entries are signed with: an Identity, or an instance's
// nonceSigner for the same key.
type signer interface {
	Public() PublicKey
	Sign(msg []byte) []byte
}

type nonce struct {
	r *edwards25519.Scalar
	R [32]byte
}

// nonceAhead is how many nonces are kept ready: enough for a burst of commits,
// about 1 ms of one core to refill.
const nonceAhead = 64

type nonceSigner struct {
	id     *Identity
	a      *edwards25519.Scalar // the secret scalar
	nonces chan nonce
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

func newNonceSigner(id *Identity) *nonceSigner {
	h := sha512.Sum512(id.priv.Seed())
	a, err := new(edwards25519.Scalar).SetBytesWithClamping(h[:32])
	if err != nil {
		panic(err) // 32 bytes always fit
	}
	s := &nonceSigner{id: id, a: a, nonces: make(chan nonce, nonceAhead), stop: make(chan struct{}), done: make(chan struct{})}
	go s.fill()
	return s
}

func (s *nonceSigner) fill() {
	defer close(s.done)
	for {
		var b [64]byte
		rand.Read(b[:]) // never fails (crypto/rand)
		r, err := new(edwards25519.Scalar).SetUniformBytes(b[:])
		if err != nil {
			panic(err) // 64 bytes always fit
		}
		n := nonce{r: r}
		copy(n.R[:], new(edwards25519.Point).ScalarBaseMult(r).Bytes())
		select {
		case s.nonces <- n:
		case <-s.stop:
			return
		}
	}
}

// close stops making nonces and waits for the maker to return.
func (s *nonceSigner) close() {
	s.once.Do(func() { close(s.stop) })
	<-s.done
}

func (s *nonceSigner) Public() PublicKey { return s.id.Public() }

func (s *nonceSigner) Sign(msg []byte) []byte {
	var n nonce
	select {
	case n = <-s.nonces:
	default:
		return s.id.Sign(msg)
	}
	k := challenge(n.R[:], &s.id.pub, msg)
	sig := make([]byte, 0, ed25519.SignatureSize)
	sig = append(sig, n.R[:]...)
	return append(sig, new(edwards25519.Scalar).MultiplyAdd(k, s.a, n.r).Bytes()...)
}
