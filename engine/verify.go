package engine

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	mrand "math/rand/v2"

	"filippo.io/edwards25519"
)

// Signature checks. Every replica must agree on which entries are valid, and a batch
// check must accept exactly what one-by-one checks accept, so eidefs uses one rule
// everywhere: ed25519 with the cofactored equation [8][s]B = [8]R + [8][k]A
// (RFC 8032 §5.1.7's "sufficient" form), s reduced, A and R any encoding of a curve
// point, A not of small order. Go's crypto/ed25519 checks the cofactorless
// [s]B = R + [k]A instead, which a batch cannot reproduce.
//
// A batch of n signatures from a few authors costs one multi-scalar multiplication
// with n+authors+1 points, with the random weights only 128 bits long, instead of n
// double-scalar multiplications: about a quarter of the work when syncing.

// sigJob is one signature to check: msg signed by pub.
type sigJob struct {
	pub *PublicKey
	msg []byte
	sig []byte
}

// parsedSig is a job decoded into curve terms: [s]B = R + [k]A.
type parsedSig struct {
	s, k *edwards25519.Scalar
	r, a *edwards25519.Point
}

// keyCache decodes each author's key once per batch.
type keyCache map[PublicKey]*edwards25519.Point

func (c keyCache) point(pub *PublicKey) *edwards25519.Point {
	if p, ok := c[*pub]; ok {
		return p
	}
	p, err := new(edwards25519.Point).SetBytes(pub[:])
	if err == nil && isSmallOrder(p) {
		err = errBadSignature
	}
	if err != nil {
		p = nil
	}
	c[*pub] = p
	return p
}

var identity = edwards25519.NewIdentityPoint()

func isSmallOrder(p *edwards25519.Point) bool {
	return new(edwards25519.Point).MultByCofactor(p).Equal(identity) == 1
}

// parse decodes a job, or returns false when it cannot verify.
func (j *sigJob) parse(keys keyCache) (parsedSig, bool) {
	if len(j.sig) != 64 {
		return parsedSig{}, false
	}
	a := keys.point(j.pub)
	if a == nil {
		return parsedSig{}, false
	}
	s, err := new(edwards25519.Scalar).SetCanonicalBytes(j.sig[32:])
	if err != nil {
		return parsedSig{}, false
	}
	r, err := new(edwards25519.Point).SetBytes(j.sig[:32])
	if err != nil {
		return parsedSig{}, false
	}
	return parsedSig{s: s, k: challenge(j.sig[:32], j.pub, j.msg), r: r, a: a}, true
}

// challenge is ed25519's k = SHA-512(R || A || M) modulo the group order, which
// signing (nonceSigner) and checking must compute alike.
func challenge(r []byte, pub *PublicKey, msg []byte) *edwards25519.Scalar {
	h := sha512.New()
	h.Write(r)
	h.Write(pub[:])
	h.Write(msg)
	var digest [64]byte
	k, err := new(edwards25519.Scalar).SetUniformBytes(h.Sum(digest[:0]))
	if err != nil {
		panic(err) // 64 bytes always fit
	}
	return k
}

// check verifies one parsed signature: [8]([s]B - [k]A - R) is the identity.
func (p *parsedSig) check() bool {
	minusA := new(edwards25519.Point).Negate(p.a)
	v := new(edwards25519.Point).VarTimeDoubleScalarBaseMult(p.k, minusA, p.s)
	v.Subtract(v, p.r)
	return v.MultByCofactor(v).Equal(identity) == 1
}

// verifySig checks one signature.
func verifySig(pub *PublicKey, msg, sig []byte) bool {
	j := sigJob{pub: pub, msg: msg, sig: sig}
	p, ok := j.parse(keyCache{})
	return ok && p.check()
}

// maxBatch bounds a batch: the multi-scalar multiplication's tables grow with it,
// and a failed batch is re-checked one by one.
const maxBatch = 64

// verifyBatch checks jobs and reports which signatures are valid.
func verifyBatch(jobs []sigJob) []bool {
	ok := make([]bool, len(jobs))
	keys := keyCache{}
	rng := newWeights()
	for start := 0; start < len(jobs); start += maxBatch {
		end := min(start+maxBatch, len(jobs))
		var idx []int
		var ps []parsedSig
		for i := start; i < end; i++ {
			if p, good := jobs[i].parse(keys); good {
				idx = append(idx, i)
				ps = append(ps, p)
			}
		}
		if batchHolds(ps, rng) {
			for _, i := range idx {
				ok[i] = true
			}
			continue
		}
		for n, i := range idx {
			ok[i] = ps[n].check()
		}
	}
	return ok
}

// batchHolds checks Σ z_i·[8]([s_i]B - R_i - [k_i]A_i) = 0 with random 128-bit
// weights z_i: with all signatures valid it holds; with any invalid one it fails
// except with probability 2⁻¹²⁸. Terms of one author share one point.
func batchHolds(ps []parsedSig, rng *mrand.ChaCha8) bool {
	switch len(ps) {
	case 0:
		return true
	case 1:
		return ps[0].check()
	}
	sB := edwards25519.NewScalar()
	scalars := make([]*edwards25519.Scalar, 0, 2*len(ps)+1)
	points := make([]*edwards25519.Point, 0, 2*len(ps)+1)
	authors := map[*edwards25519.Point]*edwards25519.Scalar{}
	var order []*edwards25519.Point
	for i := range ps {
		z := weight(rng)
		sB.MultiplyAdd(z, ps[i].s, sB)
		scalars = append(scalars, z)
		points = append(points, new(edwards25519.Point).Negate(ps[i].r))
		zk, seen := authors[ps[i].a]
		if !seen {
			zk = edwards25519.NewScalar()
			authors[ps[i].a] = zk
			order = append(order, ps[i].a)
		}
		zk.MultiplyAdd(z, ps[i].k, zk)
	}
	for _, a := range order {
		scalars = append(scalars, authors[a])
		points = append(points, new(edwards25519.Point).Negate(a))
	}
	scalars = append(scalars, sB)
	points = append(points, edwards25519.NewGeneratorPoint())
	v := new(edwards25519.Point).VarTimeMultiScalarMult(scalars, points)
	return v.MultByCofactor(v).Equal(identity) == 1
}

// newWeights returns a generator of batch weights seeded from the system's
// randomness: a peer must not be able to predict them.
func newWeights() *mrand.ChaCha8 {
	var seed [32]byte
	rand.Read(seed[:])
	return mrand.NewChaCha8(seed)
}

// weight returns a random non-zero scalar below 2¹²⁸.
func weight(rng *mrand.ChaCha8) *edwards25519.Scalar {
	var b [32]byte
	for {
		binary.LittleEndian.PutUint64(b[0:], rng.Uint64())
		binary.LittleEndian.PutUint64(b[8:], rng.Uint64())
		if b != [32]byte{} {
			break
		}
	}
	z, _ := edwards25519.NewScalar().SetCanonicalBytes(b[:])
	return z
}
