package engine

import "sync"

// mapCache keeps decoded records of maps (directories) for reads: every key read
// resolves its ancestors, and in a read-heavy phase (grep -r, ls -l, a sync peer
// reading) those are the same few records again and again. Any write clears it.
type mapCache struct {
	mu  sync.Mutex
	gen uint64 // bumped by every write; a read that saw an older one may not fill
	m   map[string]*pathRec
}

// maxCachedMaps bounds the cache; when full it starts over.
const maxCachedMaps = 4096

// get returns the cached record for key, or the generation a fill must quote.
func (c *mapCache) get(key []byte) (*pathRec, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[string(key)], c.gen
}

// put caches rec for key unless a write happened since generation gen was read.
func (c *mapCache) put(key []byte, rec *pathRec, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.m == nil || len(c.m) >= maxCachedMaps {
		c.m = make(map[string]*pathRec)
	}
	c.m[string(key)] = rec
}

// invalidate forgets everything; called after every kv write that changes state.
func (c *mapCache) invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.m = nil
}
