// Package ratelimit is the control plane's rate limiting: token buckets per
// key (a client IP, a workspace) with bounded memory, a failure lockout per
// key (a client address and credential), and the ResourceExhausted status
// that the gateway turns into 429 with Retry-After.
//
// Both are in memory and per process: a service that runs several replicas
// enforces its limits per replica.
package ratelimit

import (
	"container/list"
	"math"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxKeys bounds the keys a Keyed or a Lockout remembers.
const DefaultMaxKeys = 100_000

// Config configures a Keyed limiter: one token bucket per key, of Burst
// tokens refilled at Limit tokens per second.
type Config struct {
	Limit rate.Limit
	Burst int
	// MaxKeys bounds memory (default DefaultMaxKeys). Keys whose bucket has
	// refilled completely are forgotten, losing nothing (a new key starts
	// full); when MaxKeys busy keys are held, the least recently used one is
	// forgotten.
	MaxKeys int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// AtMost is a Config that admits at most n events per key in any window of
// length window: a bucket of n tokens refilled at one token per window. (A
// refill of n per window would admit up to 2n−1 in one window.) After a
// burst of n, the next event is admitted one window after the first.
func AtMost(n int, window time.Duration) Config {
	return Config{Limit: rate.Every(window), Burst: n}
}

// Keyed is a set of token buckets, one per key. It is safe for concurrent use.
type Keyed struct {
	mu    sync.Mutex
	cfg   Config
	items *lru[*bucket]
}

// bucket is one key's tokens as of last.
type bucket struct {
	tokens float64
	last   time.Time
}

// NewKeyed returns a keyed limiter. A Burst below 1 admits nothing.
func NewKeyed(cfg Config) *Keyed {
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Keyed{cfg: cfg, items: newLRU[*bucket]()}
}

// Allow takes one token from key's bucket. When none is left it takes
// nothing and returns false with the wait until a token will be there.
func (k *Keyed) Allow(key string) (ok bool, retryAfter time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.cfg.Now()
	k.evict(now, key)
	if k.cfg.Burst < 1 {
		// Never admitted; the key holds no state.
		k.items.remove(key)
		return false, rate.InfDuration
	}
	if k.cfg.Limit == rate.Inf {
		return true, 0
	}
	b, found := k.items.get(key)
	if !found {
		b = &bucket{tokens: float64(k.cfg.Burst), last: now}
		k.items.put(key, b)
	}
	t := k.tokensAt(b, now)
	if t >= 1 {
		b.tokens, b.last = t-1, now
		return true, 0
	}
	if k.cfg.Limit <= 0 {
		return false, rate.InfDuration
	}
	return false, roundUp(time.Duration(float64(time.Second) * (1 - t) / float64(k.cfg.Limit)))
}

// Refund gives back one token that Allow took from key's bucket, for an
// event that turned out not to count: the bucket is then as if the event
// had never been admitted (never fuller than Burst). A key that has been
// forgotten meanwhile was full, or evicted under memory pressure: there is
// nothing to give back to.
func (k *Keyed) Refund(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, found := k.items.get(key)
	if !found {
		return
	}
	now := k.cfg.Now()
	b.tokens, b.last = math.Min(k.tokensAt(b, now)+1, float64(k.cfg.Burst)), now
}

// Len is the number of keys remembered.
func (k *Keyed) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.items.len()
}

// tokensAt is b's tokens at now: refilled at Limit since b.last, never more
// than Burst.
func (k *Keyed) tokensAt(b *bucket, now time.Time) float64 {
	burst := float64(k.cfg.Burst)
	if k.cfg.Limit == rate.Inf {
		return burst
	}
	t := b.tokens
	if d := now.Sub(b.last); d > 0 && k.cfg.Limit > 0 {
		t += d.Seconds() * float64(k.cfg.Limit)
	}
	return math.Min(t, burst)
}

// evict forgets keys whose bucket is full again (least recently used
// first: they are the likeliest to be full), then, if key is new and MaxKeys
// are held, the least recently used ones until there is room.
func (k *Keyed) evict(now time.Time, key string) {
	burst := float64(k.cfg.Burst)
	for {
		old, b, ok := k.items.oldest()
		if !ok || old == key || k.tokensAt(b, now) < burst {
			break
		}
		k.items.remove(old)
	}
	if _, held := k.items.m[key]; held {
		return
	}
	for k.items.len() >= k.cfg.MaxKeys {
		old, _, _ := k.items.oldest()
		k.items.remove(old)
	}
}

// roundUp pads a wait to the next millisecond, so that waiting exactly
// retryAfter is enough despite float rounding in the token arithmetic.
func roundUp(d time.Duration) time.Duration {
	return (d/time.Millisecond + 1) * time.Millisecond
}

// IPKey is the limiter key of a client IP address: an IPv4 address as is,
// an IPv6 address by its /64 (one subscriber's allocation, or a client could
// pick a fresh address per request). Anything else is used verbatim.
func IPKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is4() {
		return a.String()
	}
	p, err := a.WithZone("").Prefix(64)
	if err != nil {
		return ip
	}
	return p.String()
}

// lru is a map with least-recently-used order. Not safe for concurrent use.
type lru[V any] struct {
	ll *list.List // front = most recently used
	m  map[string]*list.Element
}

type lruEntry[V any] struct {
	key string
	val V
}

func newLRU[V any]() *lru[V] { return &lru[V]{ll: list.New(), m: map[string]*list.Element{}} }

func (l *lru[V]) len() int { return len(l.m) }

// get returns key's value and marks it most recently used.
func (l *lru[V]) get(key string) (V, bool) {
	e, ok := l.m[key]
	if !ok {
		var zero V
		return zero, false
	}
	l.ll.MoveToFront(e)
	return e.Value.(*lruEntry[V]).val, true
}

func (l *lru[V]) put(key string, v V) {
	if e, ok := l.m[key]; ok {
		e.Value.(*lruEntry[V]).val = v
		l.ll.MoveToFront(e)
		return
	}
	l.m[key] = l.ll.PushFront(&lruEntry[V]{key, v})
}

func (l *lru[V]) oldest() (string, V, bool) {
	e := l.ll.Back()
	if e == nil {
		var zero V
		return "", zero, false
	}
	en := e.Value.(*lruEntry[V])
	return en.key, en.val, true
}

func (l *lru[V]) remove(key string) {
	if e, ok := l.m[key]; ok {
		l.ll.Remove(e)
		delete(l.m, key)
	}
}
