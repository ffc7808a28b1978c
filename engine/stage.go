package engine

import (
	"errors"

	"github.com/eidefs/eidefs/kv"
)

// stage is a group's kv.Staging plus the path records the group has read or
// written, decoded. A directory's record changes with every change below it, so
// a group of 500 entries in one store would otherwise decode and encode the
// store's root record 500 times; here it is decoded once and encoded at flush.
//
// Path records are read and written only through getPathRec and putPathRec;
// a read of path keys by any other means sees the written records, as the
// pending ones are encoded into the staging first.
type stage struct {
	*kv.Staging
	recs  map[string]*pathRec
	dirty map[string]bool
}

func newStage(base kv.Reader) *stage {
	return &stage{Staging: kv.NewStaging(base), recs: map[string]*pathRec{}, dirty: map[string]bool{}}
}

// encode writes the pending path records into the staging.
func (s *stage) encode() {
	for k := range s.dirty {
		s.Staging.Put([]byte(k), marshal(s.recs[k]))
	}
	clear(s.dirty)
}

func (s *stage) forget(k []byte) {
	if len(k) > 0 && k[0] == pPath {
		delete(s.recs, string(k))
		delete(s.dirty, string(k))
	}
}

func (s *stage) Put(k, v []byte) { s.forget(k); s.Staging.Put(k, v) }
func (s *stage) Delete(k []byte) { s.forget(k); s.Staging.Delete(k) }

func (s *stage) Get(k []byte) ([]byte, error) {
	s.before(k)
	return s.Staging.Get(k)
}

func (s *stage) Has(k []byte) (bool, error) {
	s.before(k)
	return s.Staging.Has(k)
}

func (s *stage) Iterate(prefix []byte, reverse bool, fn func(k, v []byte) bool) error {
	s.before(prefix)
	return s.Staging.Iterate(prefix, reverse, fn)
}

func (s *stage) Seek(prefix, k []byte, reverse bool) ([]byte, []byte, error) {
	s.before(prefix)
	return s.Staging.Seek(prefix, k, reverse)
}

// Batch is what Write should apply, the pending path records included.
func (s *stage) Batch() *kv.Batch {
	s.encode()
	return s.Staging.Batch()
}

// before encodes the pending records if a read could touch path keys.
func (s *stage) before(k []byte) {
	if len(s.dirty) > 0 && (len(k) == 0 || k[0] == pPath) {
		s.encode()
	}
}

// getPathRec returns the record at k, nil if there is none. From a stage the
// record is shared: a caller that changes it must putPathRec it.
func getPathRec(r kv.Reader, k []byte) (*pathRec, error) {
	s, ok := r.(*stage)
	if ok {
		if rec, ok := s.recs[string(k)]; ok {
			return rec, nil
		}
		r = s.Staging // k is not pending: the staging has it as it is
	}
	rec, err := getRec[pathRec](r, k)
	if errors.Is(err, kv.ErrNotFound) {
		rec, err = nil, nil
	}
	if ok && err == nil && rec != nil {
		s.recs[string(k)] = rec
	}
	return rec, err
}

func putPathRec(w stagingRW, k []byte, rec *pathRec) {
	if s, ok := w.(*stage); ok {
		s.recs[string(k)] = rec
		s.dirty[string(k)] = true
		return
	}
	w.Put(k, marshal(rec))
}
