package vault

import (
	"bytes"
	"sync"
)

// dekCacheMax bounds the data keys kept unwrapped: one per workspace in
// use is enough, and an entry is a few hundred bytes.
const dekCacheMax = 4096

// dekCache keeps workspace data keys unwrapped, as AEADs, so that using a
// secret does not unwrap its workspace's data key (an AES-GCM open with the
// key-encryption key, a token round trip with PKCS#11) and expand its key
// schedule on every call. It never holds a secret's value.
//
// Each entry remembers the wrapped form it was unwrapped from, and a lookup
// hits only when the caller's transaction read that same wrapped form: a
// data key rewrapped by a key-encryption key rotation, replaced (a restore)
// or tampered with is unwrapped again from what the store holds, with the
// same checks as without a cache. Entries also die with the keyring's
// generation, which a rotation bumps when it retires keys, so nothing
// unwrapped under a retired key-encryption key outlives its retirement.
type dekCache struct {
	mu  sync.RWMutex
	gen uint64
	m   map[dekCacheKey]dekCacheEntry
}

type dekCacheKey struct {
	ws  string
	ver uint32
}

type dekCacheEntry struct {
	wrapped []byte
	dk      *dataKey
}

// get returns the cached data key version ver of ws if it was unwrapped
// from wrapped under keyring generation gen, or nil.
func (c *dekCache) get(ws string, ver uint32, wrapped []byte, gen uint64) *dataKey {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.gen != gen {
		return nil
	}
	e, ok := c.m[dekCacheKey{ws, ver}]
	if !ok || !bytes.Equal(e.wrapped, wrapped) {
		return nil
	}
	return e.dk
}

// put caches dk, unwrapped from wrapped (copied: a store's bytes live only
// as long as their transaction) under keyring generation gen.
func (c *dekCache) put(ws string, ver uint32, wrapped []byte, gen uint64, dk *dataKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case gen < c.gen:
		return // unwrapped before a retirement that has since happened
	case gen > c.gen || c.m == nil:
		c.gen, c.m = gen, map[dekCacheKey]dekCacheEntry{}
	}
	k := dekCacheKey{ws, ver}
	if _, ok := c.m[k]; !ok && len(c.m) >= dekCacheMax {
		for old := range c.m { // any one: the map's order is random
			delete(c.m, old)
			break
		}
	}
	c.m[k] = dekCacheEntry{wrapped: bytes.Clone(wrapped), dk: dk}
}

// len counts the cached data keys.
func (c *dekCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}
