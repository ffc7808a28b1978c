package netsync

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/eidefs/eidefs/engine"
)

// trTransport starts a transport on a random loopback port (or dial-only
// when listen is false) and closes it at the end of the test.
func trTransport(t *testing.T, listen bool) (*Transport, *engine.Identity) {
	t.Helper()
	id := engine.NewIdentity()
	c := Config{Identity: id, HandshakeTimeout: time.Second}
	if listen {
		c.ListenAddrs = []string{"127.0.0.1:0"}
	}
	tr, err := NewTransport(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, id
}

func trCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// trConnect dials b from a (pinned) and returns both ends.
func trConnect(t *testing.T, a, b *Transport, bKey engine.PublicKey) (ac, bc *Conn) {
	t.Helper()
	ctx := trCtx(t)
	ac, err := a.Dial(ctx, b.Addrs()[0], bKey)
	if err != nil {
		t.Fatal(err)
	}
	bc, err = b.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ac, bc
}

func trPayload(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	r.Read(b)
	return b
}

// trRequest writes msg on a new stream, half-closes, and reads the reply to EOF.
func trRequest(ctx context.Context, c *Conn, msg []byte) ([]byte, error) {
	s, err := c.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if _, err := s.Write(msg); err != nil {
		return nil, err
	}
	if err := s.CloseWrite(); err != nil {
		return nil, err
	}
	return io.ReadAll(s)
}

// trServe answers every stream on c with the SHA-256 of what it read, until the
// connection ends.
func trServe(ctx context.Context, c *Conn) {
	for {
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			defer s.Close()
			h := sha256.New()
			if _, err := io.Copy(h, s); err != nil {
				return
			}
			s.Write(h.Sum(nil))
			s.CloseWrite()
		}()
	}
}

// trExchange runs n concurrent requests from c to a peer that serves.
func trExchange(ctx context.Context, c *Conn, n, size int) error {
	errs := make(chan error, n)
	for i := range n {
		go func() {
			msg := trPayload(uint64(i), size+i)
			got, err := trRequest(ctx, c, msg)
			if err == nil {
				if want := sha256.Sum256(msg); !bytes.Equal(got, want[:]) {
					err = fmt.Errorf("stream %d: reply %x, want %x", i, got, want)
				}
			}
			errs <- err
		}()
	}
	var all []error
	for range n {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

func TestConcurrentStreamsBothWays(t *testing.T) {
	a, aID := trTransport(t, true)
	b, bID := trTransport(t, true)
	ac, bc := trConnect(t, a, b, bID.Public())
	if ac.Peer() != bID.Public() || bc.Peer() != aID.Public() {
		t.Fatalf("peers: dialer sees %s (want %s), acceptor sees %s (want %s)",
			ac.Peer(), bID.Public(), bc.Peer(), aID.Public())
	}
	if ac.RemoteAddr() != b.Addrs()[0] || bc.RemoteAddr() != a.Addrs()[0] {
		t.Errorf("remote addrs %s / %s, want %s / %s (dial from the listen socket)",
			ac.RemoteAddr(), bc.RemoteAddr(), b.Addrs()[0], a.Addrs()[0])
	}
	ctx := trCtx(t)
	go trServe(ctx, ac)
	go trServe(ctx, bc)
	var wg sync.WaitGroup
	var errAB, errBA error
	wg.Go(func() { errAB = trExchange(ctx, ac, 16, 100_000) })
	wg.Go(func() { errBA = trExchange(ctx, bc, 16, 100_000) })
	wg.Wait()
	if err := errors.Join(errAB, errBA); err != nil {
		t.Fatal(err)
	}
}

func TestLargeTransfer(t *testing.T) {
	a, _ := trTransport(t, true)
	b, bID := trTransport(t, true)
	ac, bc := trConnect(t, a, b, bID.Public())
	ctx := trCtx(t)
	go trServe(ctx, bc)
	if err := trExchange(ctx, ac, 1, 32<<20); err != nil {
		t.Fatal(err)
	}
}

func TestKeyMismatch(t *testing.T) {
	a, aID := trTransport(t, true)
	b, bID := trTransport(t, true)
	c, _ := trTransport(t, true)
	ctx := trCtx(t)

	// c dials b but pins a's key.
	_, err := c.Dial(ctx, b.Addrs()[0], aID.Public())
	if !errors.Is(err, ErrKeyMismatch) || !errors.Is(err, ErrHandshake) {
		t.Fatalf("dial with wrong pin: %v, want ErrKeyMismatch", err)
	}
	if want := "dialing " + b.Addrs()[0] + ": handshake failed: peer key mismatch: dialled " + aID.Public().String() +
		", peer proved " + bID.Public().String(); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}

	// The failed handshake never reaches b's Accept: the next conn is a's.
	if _, err := a.Dial(ctx, b.Addrs()[0], bID.Public()); err != nil {
		t.Fatal(err)
	}
	bc, err := b.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bc.Peer() != aID.Public() {
		t.Fatalf("accepted peer %s, want %s: the rejected handshake was accepted", bc.Peer(), aID.Public())
	}
}

func TestZeroKeyAcceptsAny(t *testing.T) {
	a, _ := trTransport(t, true)
	b, bID := trTransport(t, true)
	ac, err := a.Dial(trCtx(t), b.Addrs()[0], engine.PublicKey{})
	if err != nil {
		t.Fatal(err)
	}
	if ac.Peer() != bID.Public() {
		t.Fatalf("peer %s, want %s", ac.Peer(), bID.Public())
	}
}

func TestUnreachable(t *testing.T) {
	a, _ := trTransport(t, true)
	// A port that was just free: nothing listens on it.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()

	start := time.Now()
	_, err = a.Dial(trCtx(t), addr, engine.PublicKey{1})
	took := time.Since(start)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("dial to closed port: %v, want ErrUnreachable", err)
	}
	if !strings.HasPrefix(err.Error(), "dialing "+addr+": peer unreachable") {
		t.Errorf("error %q lacks context", err)
	}
	if took > 2500*time.Millisecond {
		t.Errorf("dial took %s with a 1s handshake timeout", took)
	}
}

func TestDialContextDeadline(t *testing.T) {
	a, _ := trTransport(t, true)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0") // swallows packets, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = a.Dial(ctx, pc.LocalAddr().String(), engine.PublicKey{})
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial past deadline: %v, want ErrUnreachable and DeadlineExceeded", err)
	}

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	_, err = a.Dial(ctx, pc.LocalAddr().String(), engine.PublicKey{})
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("dial with cancelled context: %v, want context.Canceled only", err)
	}
}

func TestDialOnly(t *testing.T) {
	d, dID := trTransport(t, false)
	b, bID := trTransport(t, true)
	if got := d.Addrs(); len(got) != 0 {
		t.Errorf("dial-only Addrs() = %v, want none", got)
	}
	if _, err := d.Accept(trCtx(t)); !errors.Is(err, ErrNoTransport) {
		t.Errorf("dial-only Accept: %v, want ErrNoTransport", err)
	}
	dc, bc := trConnect(t, d, b, bID.Public())
	if bc.Peer() != dID.Public() {
		t.Fatalf("acceptor sees %s, want %s", bc.Peer(), dID.Public())
	}
	// Streams work both ways on the dialled connection.
	ctx := trCtx(t)
	go trServe(ctx, dc)
	go trServe(ctx, bc)
	if err := errors.Join(trExchange(ctx, dc, 2, 1000), trExchange(ctx, bc, 2, 1000)); err != nil {
		t.Fatal(err)
	}
}

func TestClose(t *testing.T) {
	a, _ := trTransport(t, true)
	b, bID := trTransport(t, true)
	ac, bc := trConnect(t, a, b, bID.Public())

	accepted := make(chan error, 1)
	go func() {
		_, err := b.Accept(context.Background())
		accepted <- err
	}()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := <-accepted; !errors.Is(err, ErrNoTransport) {
		t.Errorf("Accept blocked across Close: %v, want ErrNoTransport", err)
	}
	if _, err := b.Accept(context.Background()); !errors.Is(err, ErrNoTransport) {
		t.Errorf("Accept after Close: %v, want ErrNoTransport", err)
	}
	if _, err := b.Dial(trCtx(t), a.Addrs()[0], engine.PublicKey{}); !errors.Is(err, ErrNoTransport) {
		t.Errorf("Dial after Close: %v, want ErrNoTransport", err)
	}
	select {
	case <-bc.Done():
	default:
		t.Error("own connection still open after Close")
	}
	// The peer is told, so it does not wait for its idle timeout.
	select {
	case <-ac.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("peer's connection not closed within 5s")
	}
	if _, err := ac.OpenStream(trCtx(t)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("OpenStream on closed conn: %v, want net.ErrClosed", err)
	}
}

func TestStreamClose(t *testing.T) {
	a, _ := trTransport(t, true)
	b, bID := trTransport(t, true)
	ac, bc := trConnect(t, a, b, bID.Public())
	ctx := trCtx(t)

	s, err := ac.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	r, err := bc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The peer still gets what was written, then EOF ...
	if got, err := io.ReadAll(r); err != nil || string(got) != "hi" {
		t.Fatalf("read after Close: %q, %v", got, err)
	}
	// ... and its writes fail once our STOP_SENDING arrives.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := r.Write(make([]byte, 1024)); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a closed stream keep succeeding")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		a, err := NewTransport(Config{Identity: engine.NewIdentity(), ListenAddrs: []string{"127.0.0.1:0"}})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		bID := engine.NewIdentity()
		b, err := NewTransport(Config{Identity: bID, ListenAddrs: []string{"127.0.0.1:0", "127.0.0.1:0"}})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		ac, bc := trConnect(t, a, b, bID.Public())
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go trServe(ctx, bc)
		if err := trExchange(ctx, ac, 4, 10_000); err != nil {
			t.Fatal(err)
		}
		// A failed dial must not leave its goroutines behind either.
		if _, err := a.Dial(ctx, b.Addrs()[1], engine.PublicKey{1}); !errors.Is(err, ErrKeyMismatch) {
			t.Fatalf("dial with wrong pin: %v", err)
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, runtime.NumGoroutine(), buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestVerifyPeerRejectsBadCertificates(t *testing.T) {
	id := engine.NewIdentity()
	good, err := selfSignedCert(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyPeer(good.Certificate, id.Public()); err != nil {
		t.Fatalf("own certificate: %v", err)
	}

	// An ECDSA certificate is not an eidefs identity.
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	ecDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &ek.PublicKey, ek)
	if err != nil {
		t.Fatal(err)
	}

	// An ed25519 certificate for one key signed by another is not self-signed.
	other := engine.NewIdentity()
	forged, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, id.Private().Public(), other.Private())
	if err != nil {
		t.Fatal(err)
	}

	for name, raw := range map[string][][]byte{
		"none":       nil,
		"two":        {good.Certificate[0], good.Certificate[0]},
		"garbage":    {[]byte("not a certificate")},
		"ecdsa":      {ecDER},
		"not signed": {forged},
	} {
		if err := verifyPeer(raw, engine.PublicKey{}); !errors.Is(err, ErrHandshake) || errors.Is(err, ErrKeyMismatch) {
			t.Errorf("%s: %v, want ErrHandshake", name, err)
		}
	}
	if err := verifyPeer(good.Certificate, other.Public()); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("pinned other key: %v, want ErrKeyMismatch", err)
	}
}

// TestForeignPeers: QUIC endpoints that are not eidefs nodes fail the handshake
// and never reach Accept.
func TestForeignPeers(t *testing.T) {
	a, aID := trTransport(t, true)
	b, _ := trTransport(t, true)
	ctx := trCtx(t)

	// A server speaking another protocol, with a valid eidefs-style certificate.
	fid := engine.NewIdentity()
	cert, err := selfSignedCert(fid)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"other/1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = a.Dial(ctx, ln.Addr().String(), fid.Public())
	if !errors.Is(err, ErrHandshake) || errors.Is(err, ErrKeyMismatch) || errors.Is(err, ErrUnreachable) {
		t.Errorf("dial to another protocol: %v, want ErrHandshake", err)
	}

	// A client without a certificate: b must not accept it.
	qc, err := quic.DialAddr(ctx, b.Addrs()[0], &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpnProto}}, nil)
	if err == nil {
		// TLS 1.3 clients finish before the server checks their certificate.
		select {
		case <-qc.Context().Done():
		case <-time.After(5 * time.Second):
			t.Error("connection without client certificate stays up")
		}
		qc.CloseWithError(0, "")
	}
	if _, err := a.Dial(ctx, b.Addrs()[0], engine.PublicKey{}); err != nil {
		t.Fatal(err)
	}
	bc, err := b.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bc.Peer() != aID.Public() {
		t.Fatalf("accepted peer %s, want %s", bc.Peer(), aID.Public())
	}
}
