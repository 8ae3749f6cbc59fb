// Package keylock serialises the read-modify-write mutations of one resource
// (update, delete, rotate) within a process. A store file is locked to one
// process, so that is every writer. Hashing to a fixed set of slots bounds
// memory; unrelated resources sharing a slot only wait a little.
package keylock

import (
	"context"
	"hash/fnv"
)

// Locks is a fixed set of slots keyed by resource id.
type Locks struct {
	slots [64]chan struct{}
}

// New returns a set of unlocked slots.
func New() *Locks {
	l := &Locks{}
	for i := range l.slots {
		l.slots[i] = make(chan struct{}, 1)
	}
	return l
}

// Lock takes the slot of key, or gives up when ctx ends.
func (l *Locks) Lock(ctx context.Context, key string) (unlock func(), err error) {
	h := fnv.New32a()
	h.Write([]byte(key))
	ch := l.slots[h.Sum32()%uint32(len(l.slots))]
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
