// Package keylock serialises the read-modify-write mutations of one resource
// (update, delete, rotate) within a process. Every key has a lock of its own
// while anyone holds or waits for it, so unrelated resources never wait for
// each other, and memory is bounded by the callers in flight.
package keylock

import (
	"context"
	"sync"
)

// Locks is a lock per resource id.
type Locks struct {
	mu   sync.Mutex
	keys map[string]*entry
}

type entry struct {
	ch   chan struct{} // holds one token while the key is locked
	refs int           // holders and waiters
}

// New returns a set with no key locked.
func New() *Locks { return &Locks{keys: map[string]*entry{}} }

// Lock takes the lock of key, or gives up when ctx ends.
func (l *Locks) Lock(ctx context.Context, key string) (unlock func(), err error) {
	l.mu.Lock()
	e := l.keys[key]
	if e == nil {
		e = &entry{ch: make(chan struct{}, 1)}
		l.keys[key] = e
	}
	e.refs++
	l.mu.Unlock()
	select {
	case e.ch <- struct{}{}:
		var once sync.Once
		return func() {
			once.Do(func() {
				<-e.ch
				l.release(key, e)
			})
		}, nil
	case <-ctx.Done():
		l.release(key, e)
		return nil, ctx.Err()
	}
}

func (l *Locks) release(key string, e *entry) {
	l.mu.Lock()
	if e.refs--; e.refs == 0 {
		delete(l.keys, key)
	}
	l.mu.Unlock()
}

// held is how many keys have holders or waiters (for tests).
func (l *Locks) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}
