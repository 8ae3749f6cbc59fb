package credential

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"

	credentialv1 "github.com/backlog/controlplane/gen/go/backlog/credential/v1"
	"github.com/backlog/controlplane/services/kit/auth"
)

// hub fans invalidations out to every watching service and waits for their
// acknowledgements, at most auth.CacheTTL: past that a watcher's cached
// entries have aged out anyway, and the watcher is cut off.
type hub struct {
	mu       sync.Mutex
	seq      uint64
	watchers map[*watcher]struct{}
}

type watcher struct {
	events chan *credentialv1.WatchRevocationsResponse
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	acked uint64
	cond  chan struct{} // closed and replaced on every ack
}

func newHub() *hub { return &hub{watchers: map[*watcher]struct{}{}} }

func (h *hub) add() *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{events: make(chan *credentialv1.WatchRevocationsResponse, 1024), ctx: ctx, cancel: cancel, cond: make(chan struct{})}
	h.mu.Lock()
	w.acked = h.seq
	h.watchers[w] = struct{}{}
	h.mu.Unlock()
	return w
}

func (h *hub) remove(w *watcher) {
	h.mu.Lock()
	delete(h.watchers, w)
	h.mu.Unlock()
	w.cancel()
}

func (h *hub) close() {
	h.mu.Lock()
	for w := range h.watchers {
		w.cancel()
	}
	h.mu.Unlock()
}

func (w *watcher) ack(seq uint64) {
	w.mu.Lock()
	if seq > w.acked {
		w.acked = seq
	}
	close(w.cond)
	w.cond = make(chan struct{})
	w.mu.Unlock()
}

func (w *watcher) waitFor(seq uint64, deadline <-chan time.Time) bool {
	for {
		w.mu.Lock()
		done, cond := w.acked >= seq, w.cond
		w.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-cond:
		case <-w.ctx.Done():
			return true // gone: its cache is off
		case <-deadline:
			return false
		}
	}
}

// publish tells every watcher to drop subjects and returns once all have
// acknowledged, or were cut off after auth.CacheTTL.
func (h *hub) publish(ctx context.Context, subjects []string) {
	// Events are queued under the lock, so every watcher's queue is in
	// sequence order: acknowledgements are cumulative (acked ≥ seq), and an
	// acknowledgement of a later event must never release this publisher
	// before its own event was delivered.
	h.mu.Lock()
	h.seq++
	seq := h.seq
	ev := &credentialv1.WatchRevocationsResponse{SubjectIds: subjects, Sequence: seq}
	ws := make([]*watcher, 0, len(h.watchers))
	for w := range h.watchers {
		ws = append(ws, w)
		select {
		case w.events <- ev:
		default:
			w.cancel() // hopelessly behind: cut it off, its cache goes dark
		}
	}
	h.mu.Unlock()
	deadline := time.After(auth.CacheTTL)
	for _, w := range ws {
		if !w.waitFor(seq, deadline) {
			w.cancel()
		}
	}
}

// maxCoalesced bounds the subject ids of one coalesced event.
const maxCoalesced = 1000

// coalesce returns the event to send after ev: ev itself or, when more
// events are already queued behind it, one event carrying all their subject
// ids (up to maxCoalesced) under the highest sequence. A watcher applies
// and acknowledges a burst as one message, and that one acknowledgement
// releases every publisher of the burst; one round trip per event made
// concurrent rotations queue behind each other's acknowledgements. The
// queue is in sequence order (see publish), so the merged sequence covers
// exactly the merged events. ev, shared by every watcher, is never changed.
func (w *watcher) coalesce(ev *credentialv1.WatchRevocationsResponse) *credentialv1.WatchRevocationsResponse {
	var merged *credentialv1.WatchRevocationsResponse
	for merged == nil || len(merged.SubjectIds) < maxCoalesced {
		var next *credentialv1.WatchRevocationsResponse
		select {
		case next = <-w.events:
		default:
		}
		if next == nil {
			break
		}
		if merged == nil {
			merged = &credentialv1.WatchRevocationsResponse{
				SubjectIds: append([]string(nil), ev.GetSubjectIds()...), DropAll: ev.GetDropAll(), Sequence: ev.GetSequence(),
			}
		}
		merged.SubjectIds = append(merged.SubjectIds, next.GetSubjectIds()...)
		merged.DropAll = merged.DropAll || next.GetDropAll()
		merged.Sequence = max(merged.Sequence, next.GetSequence())
	}
	if merged == nil {
		return ev
	}
	return merged
}

func errField(err error) zap.Field { return zap.Error(err) }
