package engine

import (
	"crypto/ed25519"
	"fmt"
	"testing"

	"pgregory.net/rapid"
)

func signedJobs(n, authors int) []sigJob {
	ids := make([]*Identity, authors)
	for i := range ids {
		ids[i] = NewIdentity()
	}
	jobs := make([]sigJob, n)
	for i := range jobs {
		id := ids[i%authors]
		pub := id.Public()
		msg := []byte(fmt.Sprintf("message %d", i))
		jobs[i] = sigJob{pub: &pub, msg: msg, sig: id.Sign(msg)}
	}
	return jobs
}

// TestBatchAgreesWithSingle: whatever mix of good and broken signatures, a batch
// accepts exactly those that one-by-one checks accept, and those are the ones
// crypto/ed25519 accepts too (honest signatures and plain corruptions).
func TestBatchAgreesWithSingle(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 150).Draw(t, "n")
		jobs := signedJobs(n, rapid.IntRange(1, 4).Draw(t, "authors"))
		for i := range jobs {
			switch rapid.IntRange(0, 9).Draw(t, fmt.Sprint("fault", i)) {
			case 0: // a flipped bit anywhere in the signature
				sig := append([]byte(nil), jobs[i].sig...)
				sig[rapid.IntRange(0, 63).Draw(t, "byte")] ^= 1 << rapid.IntRange(0, 7).Draw(t, "bit")
				jobs[i].sig = sig
			case 1: // another message
				jobs[i].msg = append([]byte("x"), jobs[i].msg...)
			case 2: // another signer's key
				other := NewIdentity().Public()
				jobs[i].pub = &other
			case 3: // truncated
				jobs[i].sig = jobs[i].sig[:63]
			}
		}
		got := verifyBatch(jobs)
		for i, j := range jobs {
			single := verifySig(j.pub, j.msg, j.sig)
			std := len(j.sig) == 64 && ed25519.Verify(j.pub[:], j.msg, j.sig)
			if got[i] != single || single != std {
				t.Fatalf("job %d: batch %v, single %v, crypto/ed25519 %v", i, got[i], single, std)
			}
		}
	})
}

// TestVerifyRejectsMalleable: s must be reduced (s+L is the same signature to the
// group law, and must not be a second valid encoding), and small-order keys, under
// which anyone could sign, are refused.
func TestVerifyRejectsMalleable(t *testing.T) {
	jobs := signedJobs(1, 1)
	j := jobs[0]
	if !verifySig(j.pub, j.msg, j.sig) {
		t.Fatal("honest signature refused")
	}
	// L = 2^252 + 27742317777372353535851937790883648493, little-endian.
	l := []byte{0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10}
	sig := append([]byte(nil), j.sig...)
	carry := 0
	for i := 0; i < 32; i++ {
		v := int(sig[32+i]) + int(l[i]) + carry
		sig[32+i], carry = byte(v), v>>8
	}
	if verifySig(j.pub, j.msg, sig) || verifyBatch([]sigJob{{j.pub, j.msg, sig}, j})[0] {
		t.Error("s+L accepted")
	}
	var small PublicKey
	small[0] = 1 // the identity point: y = 1
	forged := append(append([]byte(nil), small[:]...), make([]byte, 32)...)
	forged[0] = 1 // R = identity, s = 0: [8]·0 = [8](R + [k]A) for A of small order
	if verifySig(&small, []byte("anything"), forged) {
		t.Error("a small-order key's forged signature was accepted")
	}
}

// BenchmarkVerify: crypto/ed25519's check, eidefs's one-by-one check and batches,
// per signature, for the usual sync case of few authors.
func BenchmarkVerify(b *testing.B) {
	jobs := signedJobs(512, 2)
	b.Run("crypto-ed25519", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			j := jobs[i%len(jobs)]
			if !ed25519.Verify(j.pub[:], j.msg, j.sig) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("single", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			j := jobs[i%len(jobs)]
			if !verifySig(j.pub, j.msg, j.sig) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("batch", func(b *testing.B) {
		for i := 0; i < b.N; i += len(jobs) {
			for _, ok := range verifyBatch(jobs) {
				if !ok {
					b.Fatal("refused")
				}
			}
		}
	})
}
