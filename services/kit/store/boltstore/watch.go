package boltstore

import (
	"context"
	"sync"

	"github.com/backlog/controlplane/services/kit/store"
)

// watchHistory keeps the most recent commits in memory, so that a watch can
// resume from any of them; older ones (and all before this process opened
// the file) are compacted. It holds at most max commits and about maxBytes
// of their keys and values (a group commit of many writes is large), never
// less than the newest commit.
type watchHistory struct {
	mu       sync.Mutex
	max      int
	maxBytes int
	recs     []store.WatchResponse // recs[head:]: ascending, contiguous revisions
	head     int                   // recs[:head] are compacted (dropped lazily)
	sizes    []int                 // the size of each of recs, as counted in bytes
	bytes    int                   // the size of recs[head:]
	last     int64                 // newest committed revision
	changed  chan struct{}         // closed and replaced on every commit
	closed   bool
}

func (h *watchHistory) init(max, maxBytes int, rev int64) {
	h.max, h.maxBytes, h.last, h.changed = max, maxBytes, rev, make(chan struct{})
}

// changeOverhead is what a change costs in memory beyond its key and value.
const changeOverhead = 96

func (h *watchHistory) add(rev int64, changes []store.Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Keep only the user's buckets' changes.
	kept := make([]store.Change, 0, len(changes))
	size := changeOverhead
	for _, c := range changes {
		if len(c.Bucket) > 0 && c.Bucket[0] != '_' {
			kept = append(kept, c)
			size += len(c.Bucket) + len(c.Key) + len(c.Value) + changeOverhead
		}
	}
	h.recs = append(h.recs, store.WatchResponse{Revision: rev, Changes: kept})
	h.sizes = append(h.sizes, size)
	h.bytes += size
	for n := len(h.recs) - h.head; n > 1 && (n > h.max || h.bytes > h.maxBytes); n-- {
		h.bytes -= h.sizes[h.head]
		h.recs[h.head] = store.WatchResponse{} // let its values go
		h.head++
	}
	if h.head > len(h.recs)/2 { // move down now and then: amortized O(1) a commit
		h.recs = append(h.recs[:0], h.recs[h.head:]...)
		h.sizes = append(h.sizes[:0], h.sizes[h.head:]...)
		h.head = 0
	}
	h.last = rev
	close(h.changed)
	h.changed = make(chan struct{})
}

func (h *watchHistory) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.changed)
	}
}

// since returns the commits after rev, or ErrCompacted when some are gone.
func (h *watchHistory) since(rev int64) ([]store.WatchResponse, <-chan struct{}, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rev >= h.last {
		return nil, h.changed, h.closed, nil
	}
	held := h.recs[h.head:]
	first := h.last - int64(len(held)) + 1 // oldest revision held
	if rev+1 < first {
		return nil, nil, h.closed, store.ErrCompacted
	}
	out := append([]store.WatchResponse(nil), held[rev+1-first:]...)
	return out, h.changed, h.closed, nil
}

// Watch implements store.Backend.
func (d *DB) Watch(ctx context.Context, after int64) <-chan store.WatchResponse {
	ch := make(chan store.WatchResponse, 16)
	if after <= 0 {
		d.hist.mu.Lock()
		after = d.hist.last
		d.hist.mu.Unlock()
	}
	go func() {
		defer close(ch)
		send := func(r store.WatchResponse) bool {
			select {
			case ch <- r:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			recs, changed, closed, err := d.hist.since(after)
			if err != nil {
				send(store.WatchResponse{Err: err})
				return
			}
			for _, r := range recs {
				if !send(r) {
					return
				}
				after = r.Revision
			}
			if len(recs) > 0 {
				continue
			}
			if closed {
				send(store.WatchResponse{Err: store.ErrClosed})
				return
			}
			select {
			case <-changed:
			case <-ctx.Done():
				select {
				case ch <- store.WatchResponse{Err: ctx.Err()}:
				default:
				}
				return
			}
		}
	}()
	return ch
}

// Compact drops the history of revisions up to rev: a watch from before it
// gets ErrCompacted (as etcd's compaction does).
func (d *DB) Compact(rev int64) error {
	h := &d.hist
	h.mu.Lock()
	defer h.mu.Unlock()
	first := h.last - int64(len(h.recs)) + 1
	if drop := rev - first + 1; drop > 0 {
		if drop > int64(len(h.recs)) {
			drop = int64(len(h.recs))
		}
		h.recs = append(h.recs[:0], h.recs[drop:]...)
	}
	return nil
}
