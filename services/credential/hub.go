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
	h.mu.Lock()
	h.seq++
	seq := h.seq
	ws := make([]*watcher, 0, len(h.watchers))
	for w := range h.watchers {
		ws = append(ws, w)
	}
	h.mu.Unlock()
	ev := &credentialv1.WatchRevocationsResponse{SubjectIds: subjects, Sequence: seq}
	for _, w := range ws {
		select {
		case w.events <- ev:
		default:
			w.cancel() // hopelessly behind: cut it off, its cache goes dark
		}
	}
	deadline := time.After(auth.CacheTTL)
	for _, w := range ws {
		if !w.waitFor(seq, deadline) {
			w.cancel()
		}
	}
}

func errField(err error) zap.Field { return zap.Error(err) }
