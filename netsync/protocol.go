package netsync

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/eidefs/eidefs/engine"
)

// ProtocolVersion is this node's protocol version; peers must speak the same.
const ProtocolVersion = 2

// Errors peers report, with names users can act on. They cross the wire as codes.
var (
	ErrNotAuthorized   = errors.New("not authorized")
	ErrVersionMismatch = errors.New("version mismatch")
	ErrUnknownDatabase = errors.New("database not found on peer")
	ErrBadInvite       = errors.New("invite is invalid or already used")
	ErrPeerNotFound    = errors.New("peer not found")
	// ErrBusy: the peer refused a request over its rate or concurrency limits for
	// this node; try again later.
	ErrBusy = errors.New("peer is busy")
)

// errForged marks entries that failed validation for reasons the sender must
// have known (signature, authorization, shape, database): honest nodes send only
// entries they validated themselves, and validation does not depend on the
// receiver. It never crosses the wire: the connection is closed instead.
var errForged = errors.New("forged or invalid entries")

var errCodes = map[string]error{
	"not-authorized":   ErrNotAuthorized,
	"version-mismatch": ErrVersionMismatch,
	"unknown-database": ErrUnknownDatabase,
	"bad-invite":       ErrBadInvite,
	"protocol":         ErrProtocol,
	"busy":             ErrBusy,
}

func codeOf(err error) string {
	for c, e := range errCodes {
		if errors.Is(err, e) {
			return c
		}
	}
	return "error"
}

type request struct {
	Op      string      `cbor:"1,keyasint"`
	Version int         `cbor:"2,keyasint"`
	Name    string      `cbor:"3,keyasint,omitempty"`
	Addrs   []string    `cbor:"4,keyasint,omitempty"`
	DB      engine.ID   `cbor:"5,keyasint,omitempty"`
	VV      []byte      `cbor:"6,keyasint,omitempty"`
	Tips    []engine.ID `cbor:"7,keyasint,omitempty"`
	IDs     []engine.ID `cbor:"8,keyasint,omitempty"`
	Invite  []byte      `cbor:"9,keyasint,omitempty"`
}

type response struct {
	Code    string      `cbor:"1,keyasint,omitempty"` // empty when fine
	Err     string      `cbor:"2,keyasint,omitempty"`
	Version int         `cbor:"3,keyasint,omitempty"`
	Name    string      `cbor:"4,keyasint,omitempty"`
	Addrs   []string    `cbor:"5,keyasint,omitempty"`
	DBs     []Offer     `cbor:"6,keyasint,omitempty"`
	VV      []byte      `cbor:"7,keyasint,omitempty"`
	Tips    []engine.ID `cbor:"8,keyasint,omitempty"`
	Count   uint64      `cbor:"9,keyasint,omitempty"` // entries about to follow
}

func (r *response) err() error {
	if r.Code == "" {
		return nil
	}
	if e, ok := errCodes[r.Code]; ok {
		return fmt.Errorf("%w: %s", e, r.Err)
	}
	return errors.New(r.Err)
}

func errResponse(err error) *response { return &response{Code: codeOf(err), Err: err.Error()} }

// Offer is a database a peer shares with the asker.
type Offer struct {
	ID      engine.ID `cbor:"1,keyasint"`
	Name    string    `cbor:"2,keyasint"`
	Entries uint64    `cbor:"3,keyasint"`
	Perm    string    `cbor:"4,keyasint"`
}

// batch carries entries and the blobs they refer to (values of more than
// engine.BlobMin bytes, engine/blob.go).
type batch struct {
	Entries [][]byte `cbor:"1,keyasint,omitempty"`
	Done    bool     `cbor:"2,keyasint,omitempty"`
	Blobs   [][]byte `cbor:"3,keyasint,omitempty"`
}

type ack struct {
	Applied    int    `cbor:"1,keyasint,omitempty"`
	Duplicates int    `cbor:"2,keyasint,omitempty"`
	Pending    int    `cbor:"3,keyasint,omitempty"`
	Rejected   int    `cbor:"4,keyasint,omitempty"`
	Err        string `cbor:"5,keyasint,omitempty"`
}

// Batches are cut at this many entries or bytes, whichever comes first. A batch
// holds at least one entry with its blobs, which may be a value of up to
// maxValueFrame bytes.
const (
	batchEntries  = 512
	batchBytes    = 4 << 20
	maxValueFrame = 64 << 20
)

// Result is what one sync of one database with one peer did.
type Result struct {
	Peer     engine.PublicKey
	DB       engine.ID
	Received int // entries applied here
	Sent     int // entries sent
	BytesIn  int
	BytesOut int
	Rejected int // received entries refused
	Started  time.Time
	Duration time.Duration
	Err      error
	// PeerHas is what the peer is known to hold after this sync (its version vector
	// merged with what was sent), for durability barriers (.sync/wait).
	PeerHas engine.VersionVector
}

// proto is the protocol logic, independent of any transport: it runs requests as a
// client on a stream, and serves them.
type proto struct {
	inst  *engine.Instance
	name  string
	addrs func() []string
	// learned is told what a peer said about itself (hello, bootstrap).
	learned func(key engine.PublicKey, name string, addrs []string)
	// redeem checks and consumes an invite for db, returning the permission it grants.
	redeem func(db engine.ID, invite []byte) (engine.Permission, error)
	// rejected counts refused entries per peer.
	rejected func(key engine.PublicKey, n int)
	// admit, if set, decides whether peer may make a request now (its rate and
	// upload limits); release ends the request.
	admit func(peer engine.PublicKey, op string) (release func(), err error)
}

// ---- client side ----

func (p *proto) call(s Stream, req *request) (*response, error) {
	req.Version = ProtocolVersion
	if err := writeFrame(s, req); err != nil {
		return nil, err
	}
	var resp response
	if _, err := readFrame(s, &resp); err != nil {
		return nil, err
	}
	if err := resp.err(); err != nil {
		return nil, err
	}
	return &resp, nil
}

// hello introduces this node; the answer is the peer's name and addresses.
func (p *proto) hello(s Stream) (*response, error) {
	return p.call(s, &request{Op: "hello", Name: p.name, Addrs: p.addrs()})
}

func (p *proto) discover(s Stream) ([]Offer, error) {
	resp, err := p.call(s, &request{Op: "discover"})
	if err != nil {
		return nil, err
	}
	return resp.DBs, nil
}

// sync exchanges what each side lacks of db: the peer sends the entries beyond our
// version vector, we send those beyond its own. progress, if set, is called with
// entries received so far and the total announced.
func (p *proto) sync(s Stream, peer engine.PublicKey, db engine.ID, invite []byte, progress func(done, total int)) Result {
	res := Result{Peer: peer, DB: db, Started: time.Now()}
	defer func() { res.Duration = time.Since(res.Started) }()
	req := &request{Op: "sync", DB: db}
	local, have := p.inst.DatabaseByID(db)
	if have {
		req.VV = engine.EncodeVersionVector(local.VersionVector())
		req.Tips = local.Tips()
	}
	if invite != nil {
		req.Op, req.Invite, req.Name, req.Addrs = "bootstrap", invite, p.name, p.addrs()
	}
	resp, err := p.call(s, req)
	if err != nil {
		res.Err = err
		return res
	}
	if err := p.receive(s, peer, &res, int(resp.Count), progress); err != nil {
		res.Err = err
		return res
	}
	local, have = p.inst.DatabaseByID(db)
	if !have {
		res.Err = fmt.Errorf("%w: the peer sent no root entry for %s", ErrProtocol, db.Short())
		return res
	}
	theirs, err := engine.DecodeVersionVector(resp.VV)
	if err != nil {
		res.Err = fmt.Errorf("%w: %v", ErrProtocol, err)
		return res
	}
	ours := local.VersionVector()
	if res.Err = p.send(s, local, theirs, &res); res.Err != nil {
		return res
	}
	var a ack
	if _, err := readFrame(s, &a); err != nil {
		res.Err = err
		return res
	}
	if a.Err != "" {
		res.Err = errors.New(a.Err)
	} else {
		theirs.Merge(ours) // it now holds what we had when we sent
		res.PeerHas = theirs
	}
	// Tips we still lack (a forked author chain hides them from version vectors):
	// ask for them by id, and for their missing ancestors, until complete.
	if want := p.lacking(resp.Tips); len(want) > 0 {
		res.Err = errors.Join(res.Err, fmt.Errorf("after sync, %d of the peer's tips are unknown here", len(want)))
	}
	return res
}

func (p *proto) lacking(ids []engine.ID) []engine.ID {
	var out []engine.ID
	for _, id := range ids {
		if !p.inst.Has(id) {
			out = append(out, id)
		}
	}
	return out
}

// receive applies batches until Done. Reading and verifying run ahead of applying,
// so the network, the signature checks and the store work at the same time.
func (p *proto) receive(s Stream, peer engine.PublicKey, res *Result, total int, progress func(done, total int)) error {
	type item struct {
		v    engine.Verified
		n    int
		done bool
		err  error
	}
	items := make(chan item, 2)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(items)
		for {
			var b batch
			n, err := readFrame(s, &b)
			it := item{n: n, done: b.Done, err: err}
			if err == nil && len(b.Entries) > 0 {
				it.v = engine.Verify(b.Entries...).WithBlobs(b.Blobs)
				it.v.Only(res.DB)
			}
			select {
			case items <- it:
			case <-stop:
				return
			}
			if err != nil || b.Done {
				return
			}
		}
	}()
	for it := range items {
		if it.err != nil {
			return it.err
		}
		res.BytesIn += it.n
		if it.v.Len() > 0 {
			ar, err := p.inst.ApplyVerified(peer.String(), it.v)
			if err != nil {
				return err
			}
			res.Received += len(ar.Applied)
			if len(ar.Rejected) > 0 {
				res.Rejected += len(ar.Rejected)
				if p.rejected != nil {
					p.rejected(peer, len(ar.Rejected))
				}
			}
			if progress != nil {
				progress(res.Received, total)
			}
			if err := forged(ar.Rejected); err != nil {
				return err
			}
		}
		if it.done {
			return nil
		}
	}
	return io.ErrUnexpectedEOF
}

// send streams the entries of db beyond vv in batches, then Done.
func (p *proto) send(s Stream, db *engine.Database, vv engine.VersionVector, res *Result) error {
	var cur batch
	size := 0
	var werr error
	flush := func(done bool) {
		cur.Done = done
		b, err := encMode.Marshal(&cur)
		if err != nil {
			werr = err
			return
		}
		if werr = writeFrame(s, &cur); werr == nil {
			res.BytesOut += len(b) + 4
			res.Sent += len(cur.Entries)
		}
		cur, size = batch{}, 0
	}
	err := db.EntriesAfter(vv, func(_ engine.ID, raw []byte) bool {
		blobs, err := p.blobsOf(raw)
		if err != nil {
			werr = err
			return false
		}
		n := withBlobsSize(raw, blobs)
		if len(cur.Entries) > 0 && size+n > maxFrame-batchBytes {
			flush(false) // a large blob goes in a batch of its own
		}
		cur.Entries = append(cur.Entries, raw)
		cur.Blobs = append(cur.Blobs, blobs...)
		size += n
		if len(cur.Entries) >= batchEntries || size >= batchBytes {
			flush(false)
		}
		return werr == nil
	})
	if err != nil {
		return err
	}
	if werr == nil {
		flush(true)
	}
	return werr
}

// blobsOf returns the blobs to send with the entry raw. A blob this node lost or
// has damaged (a power cut before it was synced) is not sent: the peer refuses
// that entry with ErrMissingBlob (and cannot apply what descends from it), and
// the rest of the sync goes on, instead of every sync with that peer failing.
func (p *proto) blobsOf(raw []byte) ([][]byte, error) {
	blobs, err := p.inst.Blobs(raw)
	if errors.Is(err, engine.ErrMissingBlob) || errors.Is(err, engine.ErrCorrupt) {
		return nil, nil
	}
	return blobs, err
}

// withBlobsSize is what an entry and its blobs add to a batch.
func withBlobsSize(raw []byte, blobs [][]byte) int {
	n := len(raw)
	for _, b := range blobs {
		n += len(b)
	}
	return n
}

// push sends the given entries of db.
func (p *proto) push(s Stream, db engine.ID, raws [][]byte) (ack, error) {
	if _, err := p.call(s, &request{Op: "push", DB: db}); err != nil {
		return ack{}, err
	}
	var cur batch
	size := 0
	for i, raw := range raws {
		blobs, err := p.blobsOf(raw)
		if err != nil {
			return ack{}, err
		}
		cur.Entries = append(cur.Entries, raw)
		cur.Blobs = append(cur.Blobs, blobs...)
		size += withBlobsSize(raw, blobs)
		if len(cur.Entries) >= batchEntries || size >= batchBytes || i == len(raws)-1 {
			if err := writeFrame(s, &cur); err != nil {
				return ack{}, err
			}
			cur, size = batch{}, 0
		}
	}
	if err := writeFrame(s, &batch{Done: true}); err != nil {
		return ack{}, err
	}
	var a ack
	_, err := readFrame(s, &a)
	return a, err
}

// ---- server side ----

// Server-side pacing: a frame must start within frameIdle and its body arrive at
// minRate or faster; the same holds for the peer taking what the node writes. A
// peer that stalls (slowloris) is cut instead of holding a stream forever.
// frameIdle is a variable so that tests can shorten it.
var frameIdle = 30 * time.Second

const minRate = 64 << 10 // bytes a second

// deadlines are what a Stream needs for pacing (QUIC streams, net.Pipe).
type deadlines interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// pacedStream applies the pacing to a stream: on the server, and on the client,
// where a peer that stops answering must fail the request, not hang it.
type pacedStream struct {
	Stream
	d    deadlines
	idle time.Duration // 0: frameIdle
}

// withPacing wraps s in the pacing when it supports deadlines.
func withPacing(s Stream) Stream {
	if d, ok := s.(deadlines); ok {
		return &pacedStream{Stream: s, d: d}
	}
	return s
}

func (s *pacedStream) wait() time.Duration {
	if s.idle > 0 {
		return s.idle
	}
	return frameIdle
}

func (s *pacedStream) frameStart() { s.d.SetReadDeadline(time.Now().Add(s.wait())) }

func (s *pacedStream) bodyStart(n int) {
	s.d.SetReadDeadline(time.Now().Add(s.wait() + time.Duration(n)*time.Second/minRate))
}

func (s *pacedStream) Write(b []byte) (int, error) {
	s.d.SetWriteDeadline(time.Now().Add(s.wait() + time.Duration(len(b))*time.Second/minRate))
	return s.Stream.Write(b)
}

// serve answers one request stream from peer. Errors wrapping ErrProtocol (a
// malformed, oversized, truncated or stalled message, an unknown request) or
// errForged are the peer's fault: the caller closes its connection.
func (p *proto) serve(s Stream, peer engine.PublicKey) error {
	s = withPacing(s)
	var req request
	if _, err := readFrameMax(s, &req, maxRequest); err != nil {
		if err == io.EOF {
			return nil // opened and closed without asking anything
		}
		return err
	}
	if req.Version != ProtocolVersion {
		return writeFrame(s, errResponse(fmt.Errorf("%w: peer speaks %d, this node %d", ErrVersionMismatch, req.Version, ProtocolVersion)))
	}
	if !slices.Contains(ops, req.Op) {
		err := fmt.Errorf("%w: unknown request %q", ErrProtocol, req.Op)
		writeFrame(s, errResponse(err))
		return err
	}
	if p.admit != nil {
		release, err := p.admit(peer, req.Op)
		if err != nil {
			return writeFrame(s, errResponse(err))
		}
		defer release()
	}
	switch req.Op {
	case "hello":
		if p.learned != nil {
			p.learned(peer, req.Name, req.Addrs)
		}
		return writeFrame(s, &response{Version: ProtocolVersion, Name: p.name, Addrs: p.addrs()})
	case "discover":
		return writeFrame(s, &response{DBs: p.offers(peer)})
	case "sync", "bootstrap":
		return p.serveSync(s, peer, &req)
	case "push":
		db, err := p.readable(peer, req.DB)
		if err != nil {
			return writeFrame(s, errResponse(err))
		}
		if err := writeFrame(s, &response{}); err != nil {
			return err
		}
		return p.serveUpload(s, peer, db)
	default: // "get"
		return p.serveGet(s, peer, &req)
	}
}

// ops are the requests serve knows.
var ops = []string{"hello", "discover", "sync", "bootstrap", "push", "get"}

func (p *proto) offers(peer engine.PublicKey) []Offer {
	var out []Offer
	for _, info := range p.inst.Databases() {
		db, _ := p.inst.DatabaseByID(info.ID)
		s, err := db.Settings()
		if err != nil {
			continue
		}
		if perm := s.Permission(peer); perm >= engine.PermRead {
			out = append(out, Offer{ID: info.ID, Name: info.Name, Entries: info.Entries, Perm: perm.String()})
		}
	}
	return out
}

// readable returns db if peer may read it. A database this node does not have is
// reported as such (a peer that just shared it with us may push before our clone
// is stored: that is no failure), one it may not read as not authorized.
func (p *proto) readable(peer engine.PublicKey, id engine.ID) (*engine.Database, error) {
	db, ok := p.inst.DatabaseByID(id)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownDatabase, id.Short())
	}
	s, err := db.Settings()
	if err != nil {
		return nil, err
	}
	if s.Permission(peer) < engine.PermRead {
		return nil, fmt.Errorf("%w: %s", ErrNotAuthorized, id.Short())
	}
	return db, nil
}

func (p *proto) serveSync(s Stream, peer engine.PublicKey, req *request) error {
	if req.Op == "bootstrap" {
		if p.redeem == nil {
			return writeFrame(s, errResponse(ErrBadInvite))
		}
		perm, err := p.redeem(req.DB, req.Invite)
		if err != nil {
			return writeFrame(s, errResponse(err))
		}
		db, ok := p.inst.DatabaseByID(req.DB)
		if !ok {
			return writeFrame(s, errResponse(ErrUnknownDatabase))
		}
		if _, err := db.Grant(peer.String(), req.Name, perm); err != nil {
			return writeFrame(s, errResponse(err))
		}
		if p.learned != nil {
			p.learned(peer, req.Name, req.Addrs)
		}
	}
	db, err := p.readable(peer, req.DB)
	if err != nil {
		return writeFrame(s, errResponse(err))
	}
	theirs, err := engine.DecodeVersionVector(req.VV)
	if err != nil {
		return writeFrame(s, errResponse(fmt.Errorf("%w: %v", ErrProtocol, err)))
	}
	mine := db.VersionVector()
	var count uint64
	for a, n := range mine {
		if n > theirs[a] {
			count += n - theirs[a]
		}
	}
	if err := writeFrame(s, &response{VV: engine.EncodeVersionVector(mine), Tips: db.Tips(), Count: count}); err != nil {
		return err
	}
	var res Result
	if err := p.send(s, db, theirs, &res); err != nil {
		return err
	}
	return p.serveUpload(s, peer, db)
}

// serveUpload applies the batches a peer sends, then acknowledges. Entries of
// another database are refused. After a batch with forged entries nothing more is
// applied: the rest of the upload is read (up to maxDrain frames) only so that the
// ack can tell the peer why, and the upload ends with errForged.
func (p *proto) serveUpload(s Stream, peer engine.PublicKey, db *engine.Database) error {
	var a ack
	var bad error
	for drained := 0; ; {
		var b batch
		if _, err := readFrame(s, &b); err != nil {
			return errors.Join(bad, err)
		}
		if bad != nil {
			if drained++; drained > maxDrain && !b.Done {
				return bad
			}
		} else if len(b.Entries) > 0 {
			v := engine.Verify(b.Entries...).WithBlobs(b.Blobs)
			v.Only(db.ID())
			ar, err := p.inst.ApplyVerified(peer.String(), v)
			if err != nil {
				a.Err = err.Error()
			}
			a.Applied += len(ar.Applied)
			a.Duplicates += ar.Duplicates
			a.Pending = ar.Pending
			a.Rejected += len(ar.Rejected)
			if len(ar.Rejected) > 0 && p.rejected != nil {
				p.rejected(peer, len(ar.Rejected))
			}
			bad = forged(ar.Rejected)
		}
		if b.Done {
			break
		}
	}
	if bad != nil {
		a.Err = bad.Error()
		writeFrame(s, &a)
		return bad
	}
	return writeFrame(s, &a)
}

// maxDrain is how many frames of an upload are read after forged entries.
const maxDrain = 16

// forged returns an errForged error if any of the rejected entries proves its
// sender hostile or broken; a full pending buffer or a local failure does not.
func forged(rs []engine.Rejected) error {
	n := 0
	var first error
	for _, r := range rs {
		if errors.Is(r.Err, engine.ErrInvalidEntry) || errors.Is(r.Err, engine.ErrNotAuthorized) {
			if n++; first == nil {
				first = r.Err
			}
		}
	}
	if n == 0 {
		return nil
	}
	return fmt.Errorf("%w: %d refused, first: %v", errForged, n, first)
}

func (p *proto) serveGet(s Stream, peer engine.PublicKey, req *request) error {
	db, err := p.readable(peer, req.DB)
	if err != nil {
		return writeFrame(s, errResponse(err))
	}
	if err := writeFrame(s, &response{}); err != nil {
		return err
	}
	var b batch
	size := 0
	for _, id := range req.IDs {
		if size >= maxFrame-batchBytes-maxValueFrame {
			break // the rest in the next round of repair
		}
		raw, err := p.inst.Entry(id)
		if err != nil {
			continue
		}
		if e, _, err := engine.DecodeEntry(raw); err != nil || e.DatabaseID(id) != db.ID() {
			continue
		}
		blobs, err := p.blobsOf(raw)
		if err != nil {
			continue
		}
		b.Entries = append(b.Entries, raw)
		b.Blobs = append(b.Blobs, blobs...)
		size += withBlobsSize(raw, blobs)
	}
	b.Done = true
	return writeFrame(s, &b)
}
