package engine

import (
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/eidefs/eidefs/kv"
)

// Errors callers act on.
var (
	ErrNotAuthorized   = errors.New("not authorized")
	ErrUnknownDatabase = errors.New("no such database")
	ErrExists          = errors.New("already exists")
	ErrClosed          = errors.New("instance is closed")
	ErrInvalidName     = errors.New("invalid name")
	ErrNameTooLong     = errors.New("name too long")
	ErrTooLarge        = errors.New("value too large")
	ErrReserved        = errors.New("name is reserved")
	ErrPendingFull     = errors.New("too many entries waiting for their parents")
	ErrCorrupt         = errors.New("data directory is corrupt")
)

// Options configure an Instance.
type Options struct {
	// Identity signs this node's commits. Required.
	Identity *Identity
	// Now is the clock; nil means time.Now. Heights come from it.
	Now func() time.Time
	// MaxValue is the largest value a commit may set (default 64 MiB).
	MaxValue int
	// MaxPending caps entries buffered while their parents are missing (default
	// 100,000), MaxPendingBytes their size (default 512 MiB). One origin (peer) may
	// fill a tenth of the count and a quarter of the bytes, so a peer sending orphans
	// cannot crowd out the out-of-order entries of the others.
	MaxPending      int
	MaxPendingBytes int
	// BlobDir is where values of more than BlobMin bytes are kept (blob.go); empty
	// keeps them in memory, for an in-memory kv store.
	BlobDir string
}

// Instance is one node's set of databases over one kv store. Writes are applied one
// group at a time (see do), each group in one kv write.
type Instance struct {
	kv       *kv.DB
	blobs    blobStore
	blobMu   sync.Mutex        // guards unsynced and unsyncedParks
	unsynced map[blobHash]bool // blobs stored since the last syncBlobs
	// parked values (park.go) whose files the next syncBlobs must make durable
	unsyncedParks map[uint64]bool
	id            *Identity
	signer        *nonceSigner // signs with in.id
	now           func() time.Time
	maxValue      int
	maxPending    int
	maxBytes      int // pending bytes

	qmu     sync.Mutex // guards queue, leading and closed
	queue   []*request
	leading bool // a caller is processing the queue
	closed  bool
	idle    *sync.Cond // signalled when leading becomes false

	mu    sync.RWMutex // guards dbs and names; dbState values are immutable once published
	dbs   map[ID]*dbState
	names map[string]ID

	subs subscribers
	maps mapCache // ancestors' records for reads

	// Owned by the leader (see do).
	pending      map[ID]*pendingEntry
	waiting      map[ID][]ID // missing parent -> entries waiting for it
	pendingBy    map[string]pendingUse
	pendingBytes int
	// recent are metadata of entries lately stored or read: a commit's parents are
	// the last entries, whose version vectors it extends.
	recent map[ID]*entryMeta

	statsMu sync.Mutex // guards stats
	stats   Stats

	laterMu  sync.Mutex // guards later and laterSeq
	later    map[ID][]laterDelete
	laterSeq uint64
}

// Stats are counters since the instance opened.
type Stats struct {
	Commits  uint64 // local entries committed
	Applied  uint64 // foreign entries applied
	Rejected uint64 // foreign entries refused
	Groups   uint64 // kv writes made by the writer (group commit: <= Commits+Applied)
	Syncs    uint64 // kv writes that fsynced
}

type entryMeta struct {
	DB      ID        `cbor:"1,keyasint"`
	H       uint64    `cbor:"2,keyasint"`
	T       int64     `cbor:"3,keyasint"`
	A       PublicKey `cbor:"4,keyasint"`
	S       uint64    `cbor:"5,keyasint"` // author's sequence number
	VV      vclock    `cbor:"6,keyasint"`
	Stores  []string  `cbor:"7,keyasint,omitempty"`
	Parents []ID      `cbor:"8,keyasint,omitempty"`
	Ops     int       `cbor:"9,keyasint,omitempty"`
}

type dbRecord struct {
	Name   string   `cbor:"1,keyasint"` // local name
	Tips   []ID     `cbor:"2,keyasint"`
	MaxH   uint64   `cbor:"3,keyasint"`
	Count  uint64   `cbor:"4,keyasint"`
	Stores []string `cbor:"5,keyasint,omitempty"`
	VV     vclock   `cbor:"6,keyasint,omitempty"` // per author, the highest sequence stored
}

type dbState struct {
	id        ID
	rec       dbRecord
	storeTips map[string][]ID
	settings  []*settingsEntry // sorted by (height, id)
	cache     *settingsCache
}

type settingsCache struct {
	mu sync.Mutex
	m  map[string]*Settings
}

func (s *dbState) clone() *dbState {
	c := *s
	c.rec.Tips = slices.Clone(s.rec.Tips)
	c.rec.Stores = slices.Clone(s.rec.Stores)
	c.rec.VV = maps(s.rec.VV)
	c.storeTips = make(map[string][]ID, len(s.storeTips))
	for k, v := range s.storeTips {
		c.storeTips[k] = v
	}
	c.settings = slices.Clone(s.settings)
	return &c
}

// settingsFor returns the settings made by the settings entries that are ancestors
// of an entry with version vector vv (nil: all of them, the current settings).
func (s *dbState) settingsFor(vv vclock) (*Settings, error) {
	var inc []*settingsEntry
	var ck []byte
	for _, se := range s.settings {
		if vv == nil || vv.covers(se.author, se.seq) {
			inc = append(inc, se)
			ck = append(ck, se.id[:8]...)
		}
	}
	s.cache.mu.Lock()
	defer s.cache.mu.Unlock()
	if st, ok := s.cache.m[string(ck)]; ok {
		return st, nil
	}
	st, err := foldSettings(inc)
	if err != nil {
		return nil, err
	}
	if len(s.cache.m) > 64 {
		clear(s.cache.m)
	}
	s.cache.m[string(ck)] = st
	return st, nil
}

// pendingUse is what one origin holds in the pending buffer.
type pendingUse struct{ n, bytes int }

type pendingEntry struct {
	raw     []byte
	e       *Entry
	id      ID
	origin  string
	missing map[ID]bool
}

// Open loads the instance stored in store.
func Open(store *kv.DB, o Options) (*Instance, error) {
	if o.Identity == nil {
		return nil, errors.New("engine: Options.Identity is required")
	}
	in := &Instance{
		kv: store, id: o.Identity, now: o.Now, maxValue: o.MaxValue, maxPending: o.MaxPending, maxBytes: o.MaxPendingBytes,
		dbs: map[ID]*dbState{}, names: map[string]ID{},
		pending: map[ID]*pendingEntry{}, waiting: map[ID][]ID{}, pendingBy: map[string]pendingUse{},
		later: map[ID][]laterDelete{},
	}
	if in.now == nil {
		in.now = time.Now
	}
	in.blobs = &memBlobs{}
	if o.BlobDir != "" {
		d := dirBlobs{dir: o.BlobDir}
		d.clearTmp()
		in.blobs = d
	}
	if in.maxValue == 0 {
		in.maxValue = 64 << 20
	}
	if in.maxPending == 0 {
		in.maxPending = 100_000
	}
	if in.maxBytes == 0 {
		in.maxBytes = 512 << 20
	}
	in.idle = sync.NewCond(&in.qmu)
	if err := in.load(); err != nil {
		return nil, err
	}
	if err := in.loadLater(); err != nil {
		return nil, err
	}
	in.signer = newNonceSigner(in.id)
	// Deletes and values a killed process left pending are committed now.
	if err := in.FlushDeletes(Journal); err != nil {
		in.signer.close()
		return nil, err
	}
	if err := in.commitParked(); err != nil {
		in.signer.close()
		return nil, err
	}
	return in, nil
}

func (in *Instance) load() error {
	var ids []ID
	err := in.kv.Iterate([]byte{pDB}, false, func(k, v []byte) bool {
		var id ID
		copy(id[:], k[1:])
		ids = append(ids, id)
		return true
	})
	if err != nil {
		return err
	}
	for _, id := range ids {
		st, err := loadDB(in.kv, id)
		if err != nil {
			return fmt.Errorf("loading database %s: %w", id.Short(), err)
		}
		in.dbs[id] = st
		in.names[st.rec.Name] = id
	}
	return nil
}

func loadDB(r kv.Reader, id ID) (*dbState, error) {
	rec, err := getRec[dbRecord](r, key(pDB, id[:]))
	if err != nil {
		return nil, err
	}
	st := &dbState{id: id, rec: *rec, storeTips: map[string][]ID{}, cache: &settingsCache{m: map[string]*Settings{}}}
	for _, s := range rec.Stores {
		tips, err := getRec[[]ID](r, storePrefix(pTips, id, s))
		if err != nil {
			return nil, fmt.Errorf("store %q tips: %w", s, err)
		}
		st.storeTips[s] = *tips
	}
	var ids []ID
	err = r.Iterate(key(pSettings, id[:]), false, func(k, _ []byte) bool {
		var eid ID
		copy(eid[:], k[1+32+8:])
		ids = append(ids, eid)
		return true
	})
	if err != nil {
		return nil, err
	}
	for _, eid := range ids {
		se, err := loadSettingsEntry(r, eid)
		if err != nil {
			return nil, err
		}
		st.settings = append(st.settings, se)
	}
	return st, nil
}

func loadSettingsEntry(r kv.Reader, id ID) (*settingsEntry, error) {
	raw, err := r.Get(key(pEntry, id[:]))
	if err != nil {
		return nil, fmt.Errorf("settings entry %s: %w", id.Short(), err)
	}
	e, _, err := DecodeEntry(raw)
	if err != nil {
		return nil, fmt.Errorf("settings entry %s: %w", id.Short(), err)
	}
	m, err := getRec[entryMeta](r, key(pMeta, id[:]))
	if err != nil {
		return nil, err
	}
	return &settingsEntry{id: id, h: e.Height, t: e.Time, author: e.Author, seq: m.S, ops: e.Store(SettingsStore).Ops}, nil
}

// Close refuses new requests and waits for queued ones to finish; it does not
// close the kv store.
func (in *Instance) Close() error {
	in.FlushDeletes(Journal) // if it fails, they are committed at the next Open
	in.qmu.Lock()
	in.closed = true
	for in.leading {
		in.idle.Wait()
	}
	in.qmu.Unlock()
	in.subs.closeAll()
	in.signer.close()
	return nil
}

// Identity is the node's signing identity.
func (in *Instance) Identity() *Identity { return in.id }

// KV is the underlying store.
func (in *Instance) KV() *kv.DB { return in.kv }

// Stats returns a copy of the counters.
func (in *Instance) Stats() Stats {
	in.statsMu.Lock()
	defer in.statsMu.Unlock()
	return in.stats
}

func (in *Instance) nowMs() int64 { return in.now().UnixMilli() }

// ---- requests to the writer ----

// Durability says how far a commit must reach before Commit returns.
type Durability int

const (
	// Journal: in the kv journal, so it survives the process being killed.
	Journal Durability = iota
	// Sync: also fsynced, so it survives a power cut.
	Sync
)

type request struct {
	commit  *commitReq
	create  *createReq
	apply   []decoded
	missing bool
	// drop names the origin whose pending entries to discard.
	drop    *string
	flush   *ID  // the database whose deferred deletes to commit
	barrier bool // nothing to write: only sync (SyncJournal)
	origin  string
	sync    bool
	done    chan result
}

type result struct {
	id    ID
	apply ApplyResult
	err   error
}

type commitReq struct {
	db     ID
	stores []StoreNode // ops only; names sorted later
	origin string      // tags the commit's event (Tx.SetOrigin)
	time   int64       // entry time in ms (Tx.SetTime); 0 = now
	unpark []uint64    // parked values this entry commits (Tx.Unpark)
}

type createReq struct {
	name, description string
}

type decoded struct {
	raw []byte
	e   *Entry
	id  ID
	err error
}

// decodeAll decodes and verifies entries on all cores, each checking the
// signatures of its share in batches: signature checks are most of the cost of
// applying foreign entries.
func decodeAll(raws [][]byte) []decoded {
	ds := make([]decoded, len(raws))
	workers := min(runtime.GOMAXPROCS(0), (len(raws)+15)/16)
	per := (len(raws) + workers - 1) / max(workers, 1)
	var wg sync.WaitGroup
	for start := 0; start < len(raws); start += per {
		wg.Add(1)
		go func(part []decoded, raws [][]byte) {
			defer wg.Done()
			decodeShare(part, raws)
		}(ds[start:min(start+per, len(raws))], raws[start:min(start+per, len(raws))])
	}
	wg.Wait()
	return ds
}

func decodeShare(ds []decoded, raws [][]byte) {
	jobs := make([]sigJob, 0, len(raws))
	var at []int
	for i, raw := range raws {
		ds[i].raw = raw
		e, err := parseEntry(raw)
		if err != nil {
			ds[i].err = err
			continue
		}
		ds[i].e = e
		jobs = append(jobs, sigJob{pub: &e.Author, msg: signedDigest(withoutSig(raw)), sig: e.Sig})
		at = append(at, i)
	}
	for n, ok := range verifyBatch(jobs) {
		d := &ds[at[n]]
		if !ok {
			d.e, d.err = nil, errBadSignature
			continue
		}
		d.id = hashID(d.raw)
	}
}

// do hands r to the writer and waits for its result. There is no writer goroutine:
// the first caller to find no leader becomes it and processes everything queued,
// its own request included, in groups of one kv write each; the others wait. A lone
// committer thus never switches goroutines, and concurrent ones share writes.
func (in *Instance) do(r *request) result {
	r.done = make(chan result, 1)
	in.qmu.Lock()
	if in.closed {
		in.qmu.Unlock()
		return result{err: ErrClosed}
	}
	in.queue = append(in.queue, r)
	if in.leading {
		in.qmu.Unlock()
		return <-r.done
	}
	in.leading = true
	for len(in.queue) > 0 {
		batch := in.queue
		if len(batch) > 512 {
			batch = batch[:512]
		}
		in.queue = in.queue[len(batch):]
		in.qmu.Unlock()
		in.process(batch)
		in.qmu.Lock()
	}
	in.leading = false
	in.idle.Broadcast()
	in.qmu.Unlock()
	return <-r.done
}

// group is the work of one kv write: the requests' changes staged over the store,
// with copy-on-write database states published only once the write succeeded.
type group struct {
	in      *Instance
	s       *stage
	dbs     map[ID]*dbState // working copies
	names   map[string]ID   // names added
	dirty   map[ID]map[string]bool
	metas   map[ID]*entryMeta // read or written in this group
	events  []Event
	commits uint64
	applied uint64
	// Deferred deletes taken from Instance.later, and those to keep pending.
	laterTaken, laterKept []laterTaken
}

func (in *Instance) process(batch []*request) {
	g := &group{in: in, s: newStage(in.kv), dbs: map[ID]*dbState{}, names: map[string]ID{}, dirty: map[ID]map[string]bool{}, metas: map[ID]*entryMeta{}}
	res := make([]result, len(batch))
	sync := false
	for i, r := range batch {
		switch {
		case r.commit != nil:
			res[i].id, res[i].err = g.commit(r.commit)
		case r.create != nil:
			res[i].id, res[i].err = g.create(r.create)
		case r.missing:
			res[i].apply.Applied = g.missing()
		case r.drop != nil:
			res[i].apply.Pending = g.in.dropPending(*r.drop)
		case r.flush != nil:
			g.flushDeletes(*r.flush)
		case r.barrier:
		default:
			res[i].apply = g.applyAll(r.apply, r.origin)
		}
		sync = sync || r.sync
	}
	err := g.flush(sync)
	in.maps.invalidate() // also on failure: what reached the store is unknown
	in.unflush(g, err != nil)
	if err == nil {
		in.remember(g.metas)
		in.mu.Lock()
		for id, st := range g.dbs {
			in.dbs[id] = st
		}
		for n, id := range g.names {
			in.names[n] = id
		}
		in.mu.Unlock()
		in.statsMu.Lock()
		in.stats.Groups++
		in.stats.Commits += g.commits
		in.stats.Applied += g.applied
		if sync {
			in.stats.Syncs++
		}
		in.statsMu.Unlock()
		in.subs.publish(g.events)
	}
	for i, r := range batch {
		if err != nil && res[i].err == nil {
			res[i].err = fmt.Errorf("writing to the store: %w", err)
			res[i].apply = ApplyResult{}
		}
		r.done <- res[i]
	}
}

// maxRecent bounds Instance.recent; when full it starts over.
const maxRecent = 4096

// remember keeps the metadata of a group's stored entries for the next commits.
func (in *Instance) remember(metas map[ID]*entryMeta) {
	if in.recent == nil || len(in.recent)+len(metas) > maxRecent {
		in.recent = make(map[ID]*entryMeta, len(metas))
	}
	for id, m := range metas {
		in.recent[id] = m
	}
}

func (g *group) flush(sync bool) error {
	for id, stores := range g.dirty {
		st := g.dbs[id]
		for s := range stores {
			g.s.Put(storePrefix(pTips, id, s), marshal(st.storeTips[s]))
		}
		g.s.Put(key(pDB, id[:]), marshal(&st.rec))
	}
	return g.in.kv.Write(g.s.Batch(), sync)
}

// db returns the group's working copy of a database's state.
func (g *group) db(id ID) *dbState {
	if st, ok := g.dbs[id]; ok {
		return st
	}
	g.in.mu.RLock()
	st, ok := g.in.dbs[id]
	g.in.mu.RUnlock()
	if !ok {
		return nil
	}
	st = st.clone()
	g.dbs[id] = st
	return st
}

func (g *group) nameTaken(n string) bool {
	if _, ok := g.names[n]; ok {
		return true
	}
	g.in.mu.RLock()
	defer g.in.mu.RUnlock()
	_, ok := g.in.names[n]
	return ok
}

func (g *group) create(c *createReq) (ID, error) {
	if g.nameTaken(c.name) {
		return ID{}, fmt.Errorf("database %q: %w", c.name, ErrExists)
	}
	now := g.in.nowMs()
	ops := []Op{{Path: []string{"name"}, Kind: OpValue, Value: []byte(c.name)}}
	if c.description != "" {
		ops = append(ops, Op{Path: []string{"description"}, Kind: OpValue, Value: []byte(c.description)})
	}
	ops = append(ops, grantOps(g.in.id.Public().String(), "", PermAdmin)...)
	e := &Entry{Height: uint64(now), Time: now, Entropy: make([]byte, 16),
		Stores: []StoreNode{{Name: SettingsStore, Ops: ops}}}
	_, _ = rand.Read(e.Entropy)
	raw, id := e.sign(g.in.signer)
	if _, err := g.applyRoot(raw, e, id, c.name); err != nil {
		return ID{}, err
	}
	g.commits++
	return id, nil
}

func (g *group) commit(c *commitReq) (ID, error) {
	g.flushDeletes(c.db) // they were made before this commit
	st := g.db(c.db)
	if st == nil {
		return ID{}, ErrUnknownDatabase
	}
	settings, err := st.settingsFor(nil)
	if err != nil {
		return ID{}, err
	}
	need := PermWrite
	for _, s := range c.stores {
		if s.Name == SettingsStore {
			need = PermAdmin
		}
	}
	if settings.Permission(g.in.id.Public()) < need {
		return ID{}, fmt.Errorf("%w: this node's key may not %s database %q", ErrNotAuthorized, map[bool]string{true: "change the settings of", false: "write"}[need == PermAdmin], st.rec.Name)
	}
	now := g.in.nowMs()
	e := &Entry{Root: st.id, Parents: slices.Clone(st.rec.Tips), Height: max(uint64(now), st.rec.MaxH+1), Time: now}
	if c.time > 0 {
		e.Time = c.time
	}
	for _, s := range c.stores {
		e.Stores = append(e.Stores, StoreNode{Name: s.Name, Parents: slices.Clone(st.storeTips[s.Name]), Ops: s.Ops})
	}
	raw, id := e.sign(g.in.signer)
	vv, seq, err := g.clock(e)
	if err != nil {
		return ID{}, err
	}
	if err := g.store(st, raw, e, id, vv, seq, c.origin, true); err != nil {
		return ID{}, err
	}
	for _, s := range c.unpark {
		g.s.Delete(parkKey(s))
	}
	g.commits++
	return id, nil
}

// meta returns an entry's meta, cached for the group (parents are read several times).
func (g *group) meta(id ID) (*entryMeta, error) {
	if m, ok := g.metas[id]; ok {
		return m, nil
	}
	if m, ok := g.in.recent[id]; ok {
		g.metas[id] = m
		return m, nil
	}
	m, err := getRec[entryMeta](g.s, key(pMeta, id[:]))
	if err != nil {
		return nil, err
	}
	g.metas[id] = m
	return m, nil
}

// clock computes an entry's version vector and its author's sequence number from
// its parents' (which must be present).
func (g *group) clock(e *Entry) (vclock, uint64, error) {
	vv := vclock{}
	for _, p := range e.Parents {
		m, err := g.meta(p)
		if err != nil {
			return nil, 0, fmt.Errorf("parent %s: %w", p.Short(), err)
		}
		for a, s := range m.VV {
			vv[a] = max(vv[a], s)
		}
	}
	seq := vv[string(e.Author[:])] + 1
	vv[string(e.Author[:])] = seq
	return vv, seq, nil
}

// ApplyResult reports what Apply did with each entry.
type ApplyResult struct {
	Applied    []ID // stored now, in order (includes earlier pending entries freed by these)
	Duplicates int  // already stored
	Pending    int  // entries (from any call) still waiting for parents
	Rejected   []Rejected
}

// Rejected is an entry refused by validation.
type Rejected struct {
	ID  ID
	Err error
}

// Apply validates and stores entries received from origin (a peer name, for
// events). Entries may come in any order: one whose parents are missing waits in
// memory until they arrive. Invalid entries are rejected and never stored.
func (in *Instance) Apply(origin string, raws ...[]byte) (ApplyResult, error) {
	return in.ApplyVerified(origin, Verify(raws...))
}

// Verified is a batch of entries decoded and checked by Verify.
type Verified struct {
	ds    []decoded
	blobs [][]byte
}

// Verify decodes and checks entries (canonical form, shape, signature) on all
// cores, without touching the store. With ApplyVerified it lets a receiver verify
// one batch while the previous one is being applied.
func Verify(raws ...[]byte) Verified { return Verified{ds: decodeAll(raws)} }

// WithBlobs adds the blobs that came with the entries (Instance.Blobs of each, in
// any order): ApplyVerified stores those that the entries refer to.
func (v Verified) WithBlobs(blobs [][]byte) Verified {
	v.blobs = blobs
	return v
}

// ApplyVerified is Apply for entries already through Verify. An entry that refers
// to a blob neither stored here nor sent with it is rejected with ErrMissingBlob.
func (in *Instance) ApplyVerified(origin string, v Verified) (ApplyResult, error) {
	var res ApplyResult
	ds := v.ds
	if err := in.storeBlobs(ds, v.blobs); err != nil {
		return res, err
	}
	for i := 0; i < len(ds); {
		if ds[i].err == nil && mayHaveBlobs(ds[i].raw) {
			ds[i].err = in.missingBlob(ds[i].e)
		}
		if ds[i].err != nil {
			res.Rejected = append(res.Rejected, Rejected{ID: hashID(ds[i].raw), Err: ds[i].err})
			ds = slices.Delete(ds, i, i+1)
			continue
		}
		i++
	}
	if len(res.Rejected) > 0 {
		in.statsMu.Lock()
		in.stats.Rejected += uint64(len(res.Rejected))
		in.statsMu.Unlock()
	}
	if len(ds) == 0 {
		return res, nil
	}
	r := in.do(&request{apply: ds, origin: origin})
	r.apply.Rejected = append(res.Rejected, r.apply.Rejected...)
	return r.apply, r.err
}

// SyncJournal returns once everything committed before it (with Journal, or
// applied from peers) is on disk, so it survives a power cut: fsync(2) of a file
// whose content was committed at close, or of a directory. It shares the group
// commit, so concurrent calls, and Sync commits, share one fsync.
func (in *Instance) SyncJournal() error {
	if err := in.syncBlobs(); err != nil {
		return err
	}
	return in.do(&request{barrier: true, sync: true}).err
}

// Missing lists parents that buffered entries wait for, so sync can ask for them.
func (in *Instance) Missing() []ID {
	r := in.do(&request{missing: true})
	return r.apply.Applied
}

func (g *group) missing() []ID {
	var ids []ID
	for id := range g.in.waiting {
		if _, pend := g.in.pending[id]; !pend {
			ids = append(ids, id)
		}
	}
	return sortIDs(ids)
}

func (g *group) applyAll(ds []decoded, origin string) ApplyResult {
	var res ApplyResult
	for _, d := range ds {
		g.applyOne(d, origin, &res)
	}
	res.Pending = len(g.in.pending)
	if len(res.Rejected) > 0 {
		g.in.statsMu.Lock()
		g.in.stats.Rejected += uint64(len(res.Rejected))
		g.in.statsMu.Unlock()
	}
	return res
}

func (g *group) applyOne(d decoded, origin string, res *ApplyResult) {
	if ok, err := g.s.Has(key(pMeta, d.id[:])); err != nil || ok {
		res.Duplicates++
		return
	}
	if _, ok := g.in.pending[d.id]; ok {
		res.Duplicates++
		return
	}
	missing := map[ID]bool{}
	for _, p := range d.e.Parents {
		if _, ok := g.metas[p]; ok {
			continue // stored in this group, or already read
		}
		if _, ok := g.in.recent[p]; ok {
			continue // stored by a recent group (a sync's previous batch)
		}
		if ok, _ := g.s.Has(key(pMeta, p[:])); !ok {
			missing[p] = true
		}
	}
	if len(missing) > 0 {
		if !g.in.pend(&pendingEntry{raw: d.raw, e: d.e, id: d.id, origin: origin, missing: missing}) {
			res.Rejected = append(res.Rejected, Rejected{ID: d.id, Err: ErrPendingFull})
		}
		return
	}
	var err error
	if d.e.IsRoot() {
		_, err = g.applyRoot(d.raw, d.e, d.id, "")
	} else {
		err = g.applyChild(d.raw, d.e, d.id, origin)
	}
	if err != nil {
		res.Rejected = append(res.Rejected, Rejected{ID: d.id, Err: err})
		g.dropWaiters(d.id, res)
		return
	}
	g.applied++
	res.Applied = append(res.Applied, d.id)
	// Entries that waited for this one may now be complete.
	waiters := g.in.waiting[d.id]
	delete(g.in.waiting, d.id)
	for _, w := range waiters {
		pe, ok := g.in.pending[w]
		if !ok {
			continue
		}
		delete(pe.missing, d.id)
		if len(pe.missing) == 0 {
			g.in.unpend(w)
			g.applyOne(decoded{raw: pe.raw, e: pe.e, id: pe.id}, pe.origin, res)
		}
	}
}

// pend buffers an entry until its parents arrive, unless the buffer, or the
// origin's share of it, is full. Owned by the leader, like pending.
func (in *Instance) pend(pe *pendingEntry) bool {
	u := in.pendingBy[pe.origin]
	if len(in.pending) >= in.maxPending || in.pendingBytes+len(pe.raw) > in.maxBytes ||
		u.n >= max(1, in.maxPending/10) || u.bytes+len(pe.raw) > in.maxBytes/4 {
		return false
	}
	in.pending[pe.id] = pe
	in.pendingBy[pe.origin] = pendingUse{u.n + 1, u.bytes + len(pe.raw)}
	in.pendingBytes += len(pe.raw)
	for p := range pe.missing {
		in.waiting[p] = append(in.waiting[p], pe.id)
	}
	return true
}

// unpend removes an entry from the pending buffer and from the waiting lists of
// the parents it still misses.
func (in *Instance) unpend(id ID) {
	pe, ok := in.pending[id]
	if !ok {
		return
	}
	delete(in.pending, id)
	in.pendingBytes -= len(pe.raw)
	if u := in.pendingBy[pe.origin]; u.n > 1 {
		in.pendingBy[pe.origin] = pendingUse{u.n - 1, u.bytes - len(pe.raw)}
	} else {
		delete(in.pendingBy, pe.origin)
	}
	for p := range pe.missing {
		if ws := slices.DeleteFunc(in.waiting[p], func(w ID) bool { return w == id }); len(ws) > 0 {
			in.waiting[p] = ws
		} else {
			delete(in.waiting, p)
		}
	}
}

// DropPending discards the entries origin sent that still wait for their parents
// (a peer caught sending forged entries), returning how many. Honest entries
// among them come again with the next sync: they are not stored, so a version
// vector does not cover them.
func (in *Instance) DropPending(origin string) int {
	return in.do(&request{drop: &origin}).apply.Pending
}

func (in *Instance) dropPending(origin string) int {
	gone := map[ID]bool{}
	parents := map[ID]bool{}
	for id, pe := range in.pending {
		if pe.origin == origin {
			gone[id] = true
			for p := range pe.missing {
				parents[p] = true
			}
		}
	}
	for id := range gone {
		in.pending[id].missing = nil // their waiting lists are rebuilt below, once
		in.unpend(id)
	}
	for p := range parents {
		if ws := slices.DeleteFunc(in.waiting[p], func(w ID) bool { return gone[w] }); len(ws) > 0 {
			in.waiting[p] = ws
		} else {
			delete(in.waiting, p)
		}
	}
	return len(gone)
}

// dropWaiters rejects entries that wait for a rejected one: they can never apply.
func (g *group) dropWaiters(id ID, res *ApplyResult) {
	waiters := g.in.waiting[id]
	delete(g.in.waiting, id)
	for _, w := range waiters {
		if _, ok := g.in.pending[w]; ok {
			g.in.unpend(w)
			res.Rejected = append(res.Rejected, Rejected{ID: w, Err: fmt.Errorf("%w: parent %s was rejected", ErrInvalidEntry, id.Short())})
			g.dropWaiters(w, res)
		}
	}
}

func (g *group) applyRoot(raw []byte, e *Entry, id ID, name string) (ID, error) {
	sn := e.Store(SettingsStore)
	if sn == nil || len(e.Stores) != 1 {
		return ID{}, fmt.Errorf("%w: a root entry holds the settings store and nothing else", ErrInvalidEntry)
	}
	se := &settingsEntry{id: id, h: e.Height, t: e.Time, author: e.Author, seq: 1, ops: sn.Ops}
	settings, err := foldSettings([]*settingsEntry{se})
	if err != nil {
		return ID{}, err
	}
	if settings.Permission(e.Author) < PermAdmin {
		return ID{}, fmt.Errorf("%w: root entry's author is not an admin of it", ErrNotAuthorized)
	}
	if name == "" {
		name = g.freeName(settings.Name)
	}
	st := &dbState{id: id, rec: dbRecord{Name: name}, storeTips: map[string][]ID{}, cache: &settingsCache{m: map[string]*Settings{}}}
	g.dbs[id] = st
	g.names[name] = id
	g.s.Put(key(pName, []byte(name)), id[:])
	return id, g.store(st, raw, e, id, vclock{string(e.Author[:]): 1}, 1, "", name != "")
}

// freeName picks a local name for a database joined from elsewhere: its own name,
// or the name with -2, -3 … if that is taken here.
func (g *group) freeName(want string) string {
	if want == "" || !validName(want) {
		want = "db"
	}
	n := want
	for i := 2; g.nameTaken(n); i++ {
		n = want + "-" + strconv.Itoa(i)
	}
	return n
}

func (g *group) applyChild(raw []byte, e *Entry, id ID, origin string) error {
	st := g.db(e.Root)
	if st == nil {
		return fmt.Errorf("%w %s", ErrUnknownDatabase, e.Root.Short())
	}
	for _, p := range e.Parents {
		m, err := g.meta(p)
		if err != nil {
			return err
		}
		if m.DB != st.id {
			return fmt.Errorf("%w: parent %s belongs to another database", ErrInvalidEntry, p.Short())
		}
		if m.H >= e.Height {
			return fmt.Errorf("%w: height %d is not above parent's %d", ErrInvalidEntry, e.Height, m.H)
		}
	}
	vv, seq, err := g.clock(e)
	if err != nil {
		return err
	}
	parentVV := maps(vv)
	parentVV[string(e.Author[:])] = seq - 1
	settings, err := st.settingsFor(parentVV)
	if err != nil {
		return err
	}
	need := PermWrite
	if e.Store(SettingsStore) != nil {
		need = PermAdmin
	}
	if p := settings.Permission(e.Author); p < need {
		return fmt.Errorf("%w: key %s has %s permission on database %q, needs %s", ErrNotAuthorized, e.Author.Short(), p, st.rec.Name, need)
	}
	for _, s := range e.Stores {
		for _, sp := range s.Parents {
			m, err := g.meta(sp)
			if err != nil {
				return fmt.Errorf("%w: store parent %s missing", ErrInvalidEntry, sp.Short())
			}
			if m.DB != st.id || !slices.Contains(m.Stores, s.Name) || !parentVV.covers(m.A, m.S) {
				return fmt.Errorf("%w: store parent %s of %q is not an ancestor touching that store", ErrInvalidEntry, sp.Short(), s.Name)
			}
		}
	}
	return g.store(st, raw, e, id, vv, seq, origin, false)
}

func maps(v vclock) vclock {
	c := make(vclock, len(v))
	for k, s := range v {
		c[k] = s
	}
	return c
}

// store writes a validated entry and folds its ops into the materialised state.
func (g *group) store(st *dbState, raw []byte, e *Entry, id ID, vv vclock, seq uint64, origin string, local bool) error {
	ops := 0
	names := make([]string, len(e.Stores))
	for i, s := range e.Stores {
		names[i] = s.Name
		ops += len(s.Ops)
	}
	g.s.Put(key(pEntry, id[:]), raw)
	m := &entryMeta{DB: st.id, H: e.Height, T: e.Time, A: e.Author, S: seq, VV: vv, Stores: names, Parents: e.Parents, Ops: ops}
	g.s.Put(key(pMeta, id[:]), marshal(m))
	g.metas[id] = m
	g.s.Put(key(pLog, st.id[:], heightBytes(e.Height), id[:]), nil)

	st.rec.Tips = append(slices.DeleteFunc(st.rec.Tips, func(t ID) bool { return slices.Contains(e.Parents, t) }), id)
	sortIDs(st.rec.Tips)
	st.rec.MaxH = max(st.rec.MaxH, e.Height)
	st.rec.Count++
	if st.rec.VV == nil {
		st.rec.VV = vclock{}
	}
	st.rec.VV[string(e.Author[:])] = max(st.rec.VV[string(e.Author[:])], seq)
	g.s.Put(key(pAuthor, st.id[:], e.Author[:], heightBytes(seq), id[:]), nil)
	dirty := g.dirty[st.id]
	if dirty == nil {
		dirty = map[string]bool{}
		g.dirty[st.id] = dirty
	}
	a := &applied{id: id, e: e, seq: seq, vv: vv, loadOp: g.loadOp}
	ev := Event{DB: st.id, Entry: id, Author: e.Author, Local: local, Origin: origin, Height: e.Height, Time: e.Time}
	for _, s := range e.Stores {
		tips := slices.DeleteFunc(slices.Clone(st.storeTips[s.Name]), func(t ID) bool { return slices.Contains(s.Parents, t) })
		st.storeTips[s.Name] = sortIDs(append(tips, id))
		if !slices.Contains(st.rec.Stores, s.Name) {
			st.rec.Stores = append(st.rec.Stores, s.Name)
			sort.Strings(st.rec.Stores)
		}
		dirty[s.Name] = true
		for i, op := range s.Ops {
			if err := applyOp(g.s, st.id, s.Name, op, order{e.Height, id, uint32(i)}, a); err != nil {
				return err
			}
			ev.Changes = append(ev.Changes, Change{Store: s.Name, Path: op.Path, Kind: op.Kind})
		}
		if s.Name == SettingsStore {
			g.s.Put(key(pSettings, st.id[:], heightBytes(e.Height), id[:]), nil)
			se := &settingsEntry{id: id, h: e.Height, t: e.Time, author: e.Author, seq: seq, ops: s.Ops}
			i := sort.Search(len(st.settings), func(i int) bool {
				return order{e.Height, id, 0}.less(order{st.settings[i].h, st.settings[i].id, 0})
			})
			st.settings = slices.Insert(st.settings, i, se)
		}
	}
	g.events = append(g.events, ev)
	return nil
}

func (g *group) loadOp(store string, o order) (Op, error) { return loadOp(g.s, store, o) }

// Only marks the entries of v that belong to another database than db as invalid,
// so ApplyVerified rejects them: a peer syncing one database cannot slip in
// entries of another, nor a new database.
func (v Verified) Only(db ID) {
	for i := range v.ds {
		d := &v.ds[i]
		if d.err == nil && d.e.DatabaseID(d.id) != db {
			d.err = fmt.Errorf("%w: entry %s belongs to database %s, not %s", ErrInvalidEntry, d.id.Short(), d.e.DatabaseID(d.id).Short(), db.Short())
		}
	}
}

// Len is the number of entries in the batch (valid or not).
func (v Verified) Len() int { return len(v.ds) }
