package boltstore

import (
	"context"
	"sync"

	"github.com/backlog/controlplane/services/kit/store"
)

// watchHistory keeps the most recent commits in memory, so that a watch can
// resume from any of them; older ones (and all before this process opened
// the file) are compacted.
type watchHistory struct {
	mu      sync.Mutex
	max     int
	recs    []store.WatchResponse // ascending, contiguous revisions
	last    int64                 // newest committed revision
	changed chan struct{}         // closed and replaced on every commit
	closed  bool
}

func (h *watchHistory) init(max int, rev int64) {
	h.max, h.last, h.changed = max, rev, make(chan struct{})
}

func (h *watchHistory) add(rev int64, changes []store.Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.recs) == h.max {
		copy(h.recs, h.recs[1:])
		h.recs = h.recs[:h.max-1]
	}
	// Keep only the user's buckets' changes.
	kept := make([]store.Change, 0, len(changes))
	for _, c := range changes {
		if len(c.Bucket) > 0 && c.Bucket[0] != '_' {
			kept = append(kept, c)
		}
	}
	h.recs = append(h.recs, store.WatchResponse{Revision: rev, Changes: kept})
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
	first := h.last - int64(len(h.recs)) + 1 // oldest revision held
	if rev+1 < first {
		return nil, nil, h.closed, store.ErrCompacted
	}
	out := append([]store.WatchResponse(nil), h.recs[rev+1-first:]...)
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
