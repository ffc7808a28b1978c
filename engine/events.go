package engine

import "sync"

// Change is one op of an entry, as subscribers see it.
type Change struct {
	Store string
	Path  []string
	Kind  OpKind
}

// Event tells subscribers that an entry was stored, by a local commit or from a peer.
type Event struct {
	DB      ID
	Entry   ID
	Author  PublicKey
	Local   bool   // committed on this node
	Origin  string // the peer a remote entry came from; for a local one, its Tx's origin
	Height  uint64
	Time    int64
	Changes []Change
}

// Subscription delivers events in commit order. Delivery never blocks the writer:
// events queue per subscriber until read.
type Subscription struct {
	C <-chan Event

	c      chan Event
	mu     sync.Mutex // guards q and closed
	q      []Event
	closed bool
	wake   chan struct{}
	done   chan struct{}
	parent *subscribers
}

type subscribers struct {
	mu   sync.Mutex // guards list
	list map[*Subscription]bool
}

// Subscribe starts a subscription; Close it when done.
func (in *Instance) Subscribe() *Subscription {
	s := &Subscription{c: make(chan Event), wake: make(chan struct{}, 1), done: make(chan struct{}), parent: &in.subs}
	s.C = s.c
	in.subs.mu.Lock()
	if in.subs.list == nil {
		in.subs.list = map[*Subscription]bool{}
	}
	in.subs.list[s] = true
	in.subs.mu.Unlock()
	go s.pump()
	return s
}

func (s *Subscription) pump() {
	defer close(s.c)
	for {
		s.mu.Lock()
		q := s.q
		s.q = nil
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return
		}
		for _, ev := range q {
			select {
			case s.c <- ev:
			case <-s.done:
				return
			}
		}
		if len(q) == 0 {
			select {
			case <-s.wake:
			case <-s.done:
				return
			}
		}
	}
}

// Close ends the subscription; C is closed soon after.
func (s *Subscription) Close() {
	s.parent.mu.Lock()
	delete(s.parent.list, s)
	s.parent.mu.Unlock()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	s.mu.Unlock()
}

func (ss *subscribers) publish(evs []Event) {
	if len(evs) == 0 {
		return
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for s := range ss.list {
		s.mu.Lock()
		s.q = append(s.q, evs...)
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (ss *subscribers) closeAll() {
	ss.mu.Lock()
	list := ss.list
	ss.list = nil
	ss.mu.Unlock()
	for s := range list {
		s.mu.Lock()
		if !s.closed {
			s.closed = true
			close(s.done)
		}
		s.mu.Unlock()
	}
}
