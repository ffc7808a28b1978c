package netsync

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"github.com/eidefs/eidefs/engine"
)

// Transport errors. They are sentinels so callers (and users) can act on them with
// errors.Is; the returned errors wrap them with the address and the cause.
var (
	// ErrHandshake: the TLS/QUIC handshake with an answering peer failed.
	ErrHandshake = errors.New("handshake failed")
	// ErrKeyMismatch: the peer proved a different key than the one we pinned.
	ErrKeyMismatch = fmt.Errorf("%w: peer key mismatch", ErrHandshake)
	// ErrUnreachable: nothing answered at the address in time.
	ErrUnreachable = errors.New("peer unreachable")
	// ErrNoTransport: the Transport is closed, or does not listen (Accept).
	ErrNoTransport = errors.New("no transport")
)

// alpnProto names the protocol so a QUIC endpoint of another application fails the
// handshake instead of receiving frames it cannot parse.
const alpnProto = "eidefs/1"

// Application error codes sent in CONNECTION_CLOSE and STOP_SENDING frames.
const (
	codeConnClosed    quic.ApplicationErrorCode = 0 // orderly close
	codeBadPeer       quic.ApplicationErrorCode = 1 // peer passed TLS but its identity is unusable
	codeProtocol      quic.ApplicationErrorCode = 2 // peer broke the protocol (see proto.serve)
	codeForged        quic.ApplicationErrorCode = 3 // peer sent entries that failed validation
	codeTooMany       quic.ApplicationErrorCode = 4 // over the connection cap of its key or of strangers
	codeStreamStopped quic.StreamErrorCode      = 0 // Stream.Close stopped reading
)

// Config configures a Transport.
type Config struct {
	// Identity is the device key; it signs our certificate and is what peers pin.
	Identity *engine.Identity
	// ListenAddrs are the UDP addresses to accept connections on ("host:port",
	// port 0 picks one). Empty means dial-only: one socket on ":0" is bound so the
	// node can still connect out, but nothing is accepted.
	ListenAddrs []string
	// HandshakeTimeout bounds a dial when nothing answers (default 5s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection after this long without any packet from the
	// peer (default 30s). Keep-alives are sent well within it, so only dead peers
	// time out.
	IdleTimeout time.Duration
	// MaxHandshakes caps the inbound handshakes in progress at once (default 64);
	// HandshakeRate and HandshakeBurst shape new connections per source IP address
	// (default 20 a second, bursts of 40). Attempts beyond are refused before any
	// signature is made or checked.
	MaxHandshakes  int
	HandshakeRate  float64
	HandshakeBurst int
}

const (
	defaultHandshakeTimeout = 5 * time.Second
	defaultIdleTimeout      = 30 * time.Second
	maxKeepAlive            = 10 * time.Second
	defaultMaxHandshakes    = 64
	defaultHandshakeRate    = 20
	defaultHandshakeBurst   = 40
	// maxStreams caps the request streams a peer may have open on one connection;
	// opening more waits for one to end.
	maxStreams = 32
)

// Transport is a node's QUIC endpoint: one UDP socket per listen address, each
// with its own quic.Transport, all sharing one TLS identity. It dials peers,
// accepts their connections and owns every connection it made, so Close stops
// everything.
type Transport struct {
	sockets   []*udpSocket
	listening bool
	serverTLS *tls.Config
	quicConf  *quic.Config
	hsTimeout time.Duration
	hs        *handshakeGuard

	inbound chan *Conn    // accepted, authenticated connections, handed to Accept
	done    chan struct{} // closed by Close
	wg      sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  map[*Conn]struct{}
}

// udpSocket is one bound UDP socket and the QUIC machinery on it.
type udpSocket struct {
	udp *net.UDPConn
	qt  *quic.Transport
	ln  *quic.Listener // nil for the dial-only socket
	ip  net.IP         // bound IP, for choosing a socket that can reach a peer
	// dual is a wildcard socket that sends to IPv4 and IPv6 alike.
	dual bool
}

// NewTransport binds the UDP sockets and starts accepting connections on each
// listen address.
func NewTransport(c Config) (*Transport, error) {
	if c.Identity == nil {
		return nil, errors.New("new transport: no identity")
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = defaultHandshakeTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = defaultIdleTimeout
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = defaultMaxHandshakes
	}
	if c.HandshakeRate <= 0 {
		c.HandshakeRate = defaultHandshakeRate
	}
	if c.HandshakeBurst <= 0 {
		c.HandshakeBurst = defaultHandshakeBurst
	}
	cert, err := selfSignedCert(c.Identity)
	if err != nil {
		return nil, fmt.Errorf("new transport: %w", err)
	}
	t := &Transport{
		serverTLS: serverTLSConfig(cert),
		quicConf: &quic.Config{
			HandshakeIdleTimeout: c.HandshakeTimeout,
			MaxIdleTimeout:       c.IdleTimeout,
			KeepAlivePeriod:      min(maxKeepAlive, c.IdleTimeout/3),
			MaxIncomingStreams:   maxStreams,
			// Requests are bidirectional streams; eidefs uses no others.
			MaxIncomingUniStreams: -1,
		},
		hsTimeout: c.HandshakeTimeout,
		hs: &handshakeGuard{max: int64(c.MaxHandshakes), rate: rate.Limit(c.HandshakeRate), burst: c.HandshakeBurst,
			sources: map[netip.Addr]*rate.Limiter{}},
		inbound: make(chan *Conn),
		done:    make(chan struct{}),
		conns:   make(map[*Conn]struct{}),
	}
	// A reset key derived from the device key survives restarts: a restarted node
	// answers packets of its old connections with a stateless reset, so peers drop
	// them at once instead of waiting for the idle timeout.
	resetKey := quic.StatelessResetKey(sha256.Sum256(append([]byte("eidefs stateless reset\x00"), c.Identity.Private().Seed()...)))

	addrs := c.ListenAddrs
	t.listening = len(addrs) > 0
	if !t.listening {
		addrs = []string{":0"}
	}
	for _, a := range addrs {
		s, err := bindSocket(a, &resetKey)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("listening on %s: %w", a, err)
		}
		t.sockets = append(t.sockets, s)
		if !t.listening {
			continue
		}
		s.qt.ConnContext, s.qt.VerifySourceAddress = t.hs.connContext, t.hs.verifySource
		if s.ln, err = s.qt.Listen(t.serverTLS, t.quicConf); err != nil {
			t.Close()
			return nil, fmt.Errorf("listening on %s: %w", a, err)
		}
	}
	for _, s := range t.sockets {
		if s.ln != nil {
			t.wg.Go(func() { t.acceptLoop(s.ln) })
		}
	}
	return t, nil
}

// bindSocket opens a UDP socket for addr. An IPv4 or IPv6 literal binds only that
// family, so "0.0.0.0:7401" reports as such; an empty host binds dual-stack.
func bindSocket(addr string, resetKey *quic.StatelessResetKey) (*udpSocket, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	network := "udp"
	if ip := net.ParseIP(host); ip != nil {
		network = "udp6"
		if ip.To4() != nil {
			network = "udp4"
		}
	}
	ua, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP(network, ua)
	if err != nil {
		return nil, err
	}
	la := udp.LocalAddr().(*net.UDPAddr)
	return &udpSocket{
		udp:  udp,
		qt:   &quic.Transport{Conn: udp, StatelessResetKey: resetKey},
		ip:   la.IP,
		dual: network == "udp" && la.IP.IsUnspecified() && la.IP.To4() == nil,
	}, nil
}

// Addrs returns the addresses actually listened on, with port 0 resolved. A
// dial-only Transport returns none: nobody can connect to it.
func (t *Transport) Addrs() []string {
	var out []string
	for _, s := range t.sockets {
		if s.ln != nil {
			out = append(out, s.udp.LocalAddr().String())
		}
	}
	return out
}

// Dial connects to addr and authenticates the peer. A non-zero want pins the
// peer's key (ErrKeyMismatch otherwise); zero accepts whatever key the peer proves,
// for discovering a peer by address.
func (t *Transport) Dial(ctx context.Context, addr string, want engine.PublicKey) (*Conn, error) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("dialing %s: %w", addr, ErrNoTransport)
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		if _, ok := errors.AsType[*net.DNSError](err); ok {
			return nil, fmt.Errorf("dialing %s: %w: %v", addr, ErrUnreachable, err)
		}
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	qc, err := t.pickSocket(ua.IP).qt.Dial(ctx, ua, t.clientTLSConfig(want), t.quicConf)
	if err != nil {
		return nil, t.dialError(ctx, addr, err)
	}
	c, err := t.adopt(qc)
	if err != nil {
		return nil, fmt.Errorf("dialing %s: %w", addr, err)
	}
	return c, nil
}

// pickSocket prefers the first socket that can reach ip, so the peer sees our
// listen address as the source; a loopback-bound socket cannot reach the LAN.
func (t *Transport) pickSocket(ip net.IP) *udpSocket {
	for _, s := range t.sockets {
		if s.dual {
			return s
		}
		if (s.ip.To4() != nil) != (ip.To4() != nil) {
			continue
		}
		if s.ip.IsUnspecified() || s.ip.IsLoopback() == ip.IsLoopback() {
			return s
		}
	}
	return t.sockets[0]
}

// dialError maps quic-go's dial errors onto the package sentinels.
func (t *Transport) dialError(ctx context.Context, addr string, err error) error {
	if ve, ok := errors.AsType[*verifyError](err); ok {
		return fmt.Errorf("dialing %s: %w", addr, ve.err)
	}
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return fmt.Errorf("dialing %s: %w", addr, ErrNoTransport)
	}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("dialing %s: %w: %w", addr, ErrUnreachable, ctx.Err())
		}
		return fmt.Errorf("dialing %s: %w", addr, ctx.Err())
	}
	if errors.Is(err, quic.ErrTransportClosed) {
		return fmt.Errorf("dialing %s: %w", addr, ErrNoTransport)
	}
	if _, ok := errors.AsType[*quic.HandshakeTimeoutError](err); ok {
		return fmt.Errorf("dialing %s: %w: no answer within %s", addr, ErrUnreachable, t.hsTimeout)
	}
	if _, ok := errors.AsType[*quic.IdleTimeoutError](err); ok {
		return fmt.Errorf("dialing %s: %w: no answer within %s", addr, ErrUnreachable, t.hsTimeout)
	}
	if te, ok := errors.AsType[*quic.TransportError](err); ok {
		if te.ErrorCode == quic.ConnectionRefused {
			return fmt.Errorf("dialing %s: %w: connection refused", addr, ErrUnreachable)
		}
		return fmt.Errorf("dialing %s: %w: %v", addr, ErrHandshake, err)
	}
	if _, ok := errors.AsType[*net.OpError](err); ok {
		return fmt.Errorf("dialing %s: %w: %v", addr, ErrUnreachable, err)
	}
	return fmt.Errorf("dialing %s: %w: %v", addr, ErrHandshake, err)
}

// Accept returns the next inbound connection; its peer has already proved its key.
// It returns ErrNoTransport once the Transport is closed, or at once if it does not
// listen.
func (t *Transport) Accept(ctx context.Context) (*Conn, error) {
	if !t.listening {
		return nil, fmt.Errorf("accepting: %w: not listening", ErrNoTransport)
	}
	select {
	case <-t.done:
		return nil, fmt.Errorf("accepting: %w", ErrNoTransport)
	default:
	}
	select {
	case c := <-t.inbound:
		return c, nil
	case <-t.done:
		return nil, fmt.Errorf("accepting: %w", ErrNoTransport)
	case <-ctx.Done():
		return nil, fmt.Errorf("accepting: %w", ctx.Err())
	}
}

// acceptLoop feeds one listener's connections to Accept until the listener closes.
func (t *Transport) acceptLoop(ln *quic.Listener) {
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			return // listener closed
		}
		if done, ok := qc.Context().Value(handshakeDone{}).(func()); ok {
			done()
		}
		c, err := t.adopt(qc)
		if err != nil {
			continue // already closed by adopt
		}
		select {
		case t.inbound <- c:
		case <-t.done:
			c.Close()
			return
		}
	}
}

// adopt wraps an established connection, reads the key the peer proved, and
// tracks the connection so Transport.Close can close it.
func (t *Transport) adopt(qc *quic.Conn) (*Conn, error) {
	st := qc.ConnectionState().TLS
	if st.NegotiatedProtocol != alpnProto || len(st.PeerCertificates) != 1 {
		qc.CloseWithError(codeBadPeer, "bad peer identity")
		return nil, fmt.Errorf("%w: no protocol %q or no single certificate", ErrHandshake, alpnProto)
	}
	pub, ok := st.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		qc.CloseWithError(codeBadPeer, "bad peer identity")
		return nil, fmt.Errorf("%w: peer key is not ed25519", ErrHandshake)
	}
	c := &Conn{qc: qc}
	copy(c.peer[:], pub)

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		qc.CloseWithError(codeConnClosed, "shutting down")
		return nil, ErrNoTransport
	}
	t.conns[c] = struct{}{}
	t.mu.Unlock()
	// Forget the connection when it ends; AfterFunc runs no goroutine until then.
	context.AfterFunc(qc.Context(), func() {
		t.mu.Lock()
		delete(t.conns, c)
		t.mu.Unlock()
	})
	return c, nil
}

// Close closes every connection (telling peers), the listeners and the sockets,
// and waits for the goroutines it started. It is idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.done)
	conns := make([]*Conn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()

	for _, s := range t.sockets {
		if s.ln != nil {
			s.ln.Close()
		}
	}
	// quic.Transport.Close drops connections silently; close them first so peers
	// learn at once rather than after their idle timeout.
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.qc.CloseWithError(codeConnClosed, "shutting down") })
	}
	wg.Wait()
	var errs []error
	for _, s := range t.sockets {
		if err := s.qt.Close(); err != nil {
			errs = append(errs, err)
		}
		// quic.Transport does not close a socket it was given.
		if err := s.udp.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	t.wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing transport: %w", err)
	}
	return nil
}

// HandshakesRefused counts the connection attempts refused before the handshake
// (each Initial packet of a refused attempt counts).
func (t *Transport) HandshakesRefused() uint64 { return t.hs.refused.Load() }

// errHandshakeLimit refuses a connection attempt over the handshake limits; the
// client sees CONNECTION_REFUSED.
var errHandshakeLimit = errors.New("too many handshakes")

// handshakeGuard bounds the inbound handshakes: each costs ed25519 signatures and
// checks, so a flood of connection attempts must not take the CPU from the peers
// already connected.
type handshakeGuard struct {
	max     int64
	rate    rate.Limit
	burst   int
	active  atomic.Int64
	refused atomic.Uint64

	mu      sync.Mutex
	sources map[netip.Addr]*rate.Limiter // per source IP; at most maxSources
}

// maxSources bounds the per-address limiters kept; past it the idle ones go.
const maxSources = 4096

// handshakeDone is the context key of the function that frees a handshake slot.
type handshakeDone struct{}

// connContext admits a connection attempt (quic.Transport.ConnContext): its source
// address is under its rate and a handshake slot is free. The slot is freed when
// the connection is accepted or fails, whichever comes first.
func (g *handshakeGuard) connContext(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
	if !g.allowSource(ci.RemoteAddr) {
		g.refused.Add(1)
		return nil, errHandshakeLimit
	}
	if g.active.Add(1) > g.max {
		g.active.Add(-1)
		g.refused.Add(1)
		return nil, errHandshakeLimit
	}
	done := sync.OnceFunc(func() { g.active.Add(-1) })
	context.AfterFunc(ctx, done)
	return context.WithValue(ctx, handshakeDone{}, done), nil
}

// verifySource asks clients to prove their address with a QUIC Retry once a
// quarter of the handshake slots are taken, so that a flood from spoofed
// addresses never reaches a handshake nor another address's rate.
func (g *handshakeGuard) verifySource(net.Addr) bool { return g.active.Load() >= g.max/4 }

func (g *handshakeGuard) allowSource(a net.Addr) bool {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return true
	}
	ip := ua.AddrPort().Addr().Unmap()
	g.mu.Lock()
	defer g.mu.Unlock()
	l := g.sources[ip]
	if l == nil {
		if len(g.sources) >= maxSources {
			for k, l := range g.sources {
				if l.Tokens() >= float64(g.burst) {
					delete(g.sources, k)
				}
			}
			if len(g.sources) >= maxSources {
				clear(g.sources)
			}
		}
		l = rate.NewLimiter(g.rate, g.burst)
		g.sources[ip] = l
	}
	return l.Allow()
}

// Conn is an authenticated connection to a peer; it multiplexes streams.
type Conn struct {
	qc   *quic.Conn
	peer engine.PublicKey
}

// Peer is the key the peer proved in the TLS handshake.
func (c *Conn) Peer() engine.PublicKey { return c.peer }

// RemoteAddr is the peer's UDP address as seen from here.
func (c *Conn) RemoteAddr() string { return c.qc.RemoteAddr().String() }

// OpenStream opens a bidirectional stream, waiting while the peer's concurrent
// stream limit is reached. The peer's AcceptStream sees it only once something is
// written (or it is closed).
func (c *Conn) OpenStream(ctx context.Context) (Stream, error) {
	s, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening stream to %s: %w", c.peer.Short(), err)
	}
	return &quicStream{s}, nil
}

// AcceptStream returns the next stream the peer opened.
func (c *Conn) AcceptStream(ctx context.Context) (Stream, error) {
	s, err := c.qc.AcceptStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("accepting stream from %s: %w", c.peer.Short(), err)
	}
	return &quicStream{s}, nil
}

// Close closes the connection, telling the peer; open streams fail on both sides.
func (c *Conn) Close() error {
	return c.qc.CloseWithError(codeConnClosed, "")
}

// closeWith closes the connection telling the peer why, with one of the codes above.
func (c *Conn) closeWith(code quic.ApplicationErrorCode, reason string) error {
	return c.qc.CloseWithError(code, reason)
}

// Done is closed when the connection ends, whichever side closed it or timed out.
func (c *Conn) Done() <-chan struct{} { return c.qc.Context().Done() }

// Stream is one bidirectional request/response exchange on a Conn.
type Stream interface {
	io.Reader
	io.Writer
	// CloseWrite ends our side: the peer reads io.EOF after the data written.
	CloseWrite() error
	// Close ends our side like CloseWrite and stops reading: the peer's further
	// writes fail.
	Close() error
}

// quicStream adapts *quic.Stream, whose Close only closes the send side.
type quicStream struct{ s *quic.Stream }

func (s *quicStream) Read(p []byte) (int, error)  { return s.s.Read(p) }
func (s *quicStream) Write(p []byte) (int, error) { return s.s.Write(p) }
func (s *quicStream) CloseWrite() error           { return s.s.Close() }

func (s *quicStream) Close() error {
	s.s.CancelRead(codeStreamStopped)
	return s.s.Close()
}

// SetDeadline, SetReadDeadline and SetWriteDeadline bound blocking reads and
// writes (a timed-out call fails with os.ErrDeadlineExceeded); reach them with a
// type assertion.
func (s *quicStream) SetDeadline(d time.Time) error      { return s.s.SetDeadline(d) }
func (s *quicStream) SetReadDeadline(d time.Time) error  { return s.s.SetReadDeadline(d) }
func (s *quicStream) SetWriteDeadline(d time.Time) error { return s.s.SetWriteDeadline(d) }

// selfSignedCert makes a certificate signed by the device key itself: the key is
// the identity, so there is no CA and no name to check.
func selfSignedCert(id *engine.Identity) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id.Public().String()},
		NotBefore:    time.Now().Add(-time.Hour),
		// Validity is not checked (the pinned key is), so never let it expire.
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	priv := id.Private()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creating certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}, nil
}

// verifyError marks an error from our certificate check, so dialError can report
// it instead of the TLS alert quic-go wraps it in.
type verifyError struct{ err error }

func (e *verifyError) Error() string { return e.err.Error() }
func (e *verifyError) Unwrap() error { return e.err }

// verifyPeer checks that the peer sent exactly one certificate, self-signed by an
// ed25519 key, and, if want is non-zero, that the key is want. The TLS handshake
// itself proves the peer holds the private key.
func verifyPeer(rawCerts [][]byte, want engine.PublicKey) error {
	if len(rawCerts) != 1 {
		return &verifyError{fmt.Errorf("%w: peer sent %d certificates, want 1", ErrHandshake, len(rawCerts))}
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return &verifyError{fmt.Errorf("%w: bad peer certificate: %v", ErrHandshake, err)}
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || cert.SignatureAlgorithm != x509.PureEd25519 {
		return &verifyError{fmt.Errorf("%w: peer certificate is not ed25519", ErrHandshake)}
	}
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		return &verifyError{fmt.Errorf("%w: peer certificate is not self-signed: %v", ErrHandshake, err)}
	}
	var got engine.PublicKey
	copy(got[:], pub)
	if want != (engine.PublicKey{}) && got != want {
		return &verifyError{fmt.Errorf("%w: dialled %s, peer proved %s", ErrKeyMismatch, want, got)}
	}
	return nil
}

// serverTLSConfig requires a client certificate and checks it like verifyPeer;
// chain verification is off because there is no CA. Session tickets are off so
// every connection presents (and has checked) a certificate.
func serverTLSConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{cert},
		NextProtos:             []string{alpnProto},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPeer(raw, engine.PublicKey{})
		},
	}
}

// clientTLSConfig presents our certificate and pins the server's key to want
// (unless zero).
func (t *Transport) clientTLSConfig(want engine.PublicKey) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           t.serverTLS.Certificates,
		NextProtos:             []string{alpnProto},
		InsecureSkipVerify:     true, // the pinned key is checked below instead
		SessionTicketsDisabled: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPeer(raw, want)
		},
	}
}
