package ratelimit

import (
	"sync"
	"time"
)

// LockoutConfig configures a Lockout.
type LockoutConfig struct {
	// MaxFailures within Window lock the key (default 5).
	MaxFailures int
	// Window is how long a failure counts (default LockFor).
	Window time.Duration
	// LockFor is how long a key stays locked (default 15 minutes).
	LockFor time.Duration
	// MaxKeys bounds memory (default DefaultMaxKeys). Keys with no failure
	// left in the window and no lock are forgotten; when MaxKeys keys are
	// busy, the least recently touched one is forgotten.
	MaxKeys int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Lockout locks a key after repeated failures. What the key is decides whom
// a lock stops: a key of the thing guessed at (an agent) stops guessing from
// many addresses as well as from one, and also stops its legitimate user; a
// key of the guesser (a client address with a credential) stops only that
// guesser. It is safe for concurrent use.
type Lockout struct {
	mu    sync.Mutex
	cfg   LockoutConfig
	items *lru[*lockState]
}

type lockState struct {
	failures int
	since    time.Time // first failure counted
	until    time.Time // locked until (zero: not locked)
}

// NewLockout returns a lockout.
func NewLockout(cfg LockoutConfig) *Lockout {
	if cfg.MaxFailures <= 0 {
		cfg.MaxFailures = 5
	}
	if cfg.LockFor <= 0 {
		cfg.LockFor = 15 * time.Minute
	}
	if cfg.Window <= 0 {
		cfg.Window = cfg.LockFor
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Lockout{cfg: cfg, items: newLRU[*lockState]()}
}

// Locked reports whether key is locked, and for how much longer.
func (l *Lockout) Locked(key string) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now()
	l.evict(now, key)
	st, ok := l.items.get(key)
	if !ok || !now.Before(st.until) {
		return false, 0
	}
	return true, roundUp(st.until.Sub(now))
}

// Fail counts a failure of key. It reports whether key is locked now (by
// this failure or before it) and for how much longer. Failures while locked
// neither count nor extend the lock.
func (l *Lockout) Fail(key string) (locked bool, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.Now()
	l.evict(now, key)
	st, ok := l.items.get(key)
	if !ok {
		st = &lockState{}
		l.items.put(key, st)
	}
	if now.Before(st.until) {
		return true, roundUp(st.until.Sub(now))
	}
	if st.failures == 0 || now.Sub(st.since) >= l.cfg.Window {
		st.failures, st.since = 0, now
	}
	st.failures++
	if st.failures >= l.cfg.MaxFailures {
		st.failures, st.until = 0, now.Add(l.cfg.LockFor)
		return true, roundUp(l.cfg.LockFor)
	}
	return false, 0
}

// Reset forgets key's failures and lock (after a success).
func (l *Lockout) Reset(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.items.remove(key)
}

// Len is the number of keys remembered.
func (l *Lockout) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.items.len()
}

// idle reports whether st holds no state that matters at now.
func (l *Lockout) idle(st *lockState, now time.Time) bool {
	return !now.Before(st.until) && (st.failures == 0 || now.Sub(st.since) >= l.cfg.Window)
}

// evict forgets idle keys, least recently touched first, then, if key is
// new and MaxKeys are held, the least recently touched ones.
func (l *Lockout) evict(now time.Time, key string) {
	for {
		old, st, ok := l.items.oldest()
		if !ok || old == key || !l.idle(st, now) {
			break
		}
		l.items.remove(old)
	}
	if _, held := l.items.m[key]; held {
		return
	}
	for l.items.len() >= l.cfg.MaxKeys {
		old, _, _ := l.items.oldest()
		l.items.remove(old)
	}
}
