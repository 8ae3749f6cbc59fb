package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/backlog/controlplane/gen/go/backlog/audit/v1"
	"github.com/backlog/controlplane/services/kit/audit"
	"github.com/backlog/controlplane/services/kit/ids"
)

// RefusalWindow is how long the 429 refusals of one agent's self-rotation
// at one client address (per reason) are coalesced into one audit record.
// Such refusals cost the caller no budget — that is what they refuse — so
// recording each would let a holder of the API key grow the trail without
// bound; instead the trail gains at most one record per agent, address,
// reason and window, whatever the rate.
const RefusalWindow = time.Minute

// maxRefusalKeys bounds the coalescing table. An entry lives about two
// windows; past the bound, a refusal without an entry is logged, not
// recorded.
const maxRefusalKeys = 100_000

// recordRefusal records a self-rotation refused with 429 as a failure event
// of the agent, coalesced per key (agent, address, reason): the first
// refusal in a window is recorded at once; later ones are counted, and when
// the window ends one summary record carries the count and the latest
// refusal's client IP and request id, opening the next window. Best effort,
// like recordFailure.
func (s *Service) recordRefusal(ctx context.Context, ws, id, key string, cause error) {
	ev := s.rec.Event(ctx, ws, actionRotateSelf, targetAgent, id, audit.Failure, s.failureDetail(cause))
	out, dropped := s.refusals.note(key, ev, s.now())
	if dropped {
		s.lg.Warn("refused self-rotation not audited: too many refusals at once", zap.String("agent-id", id), zap.String("workspace-id", ws))
	}
	s.writeRefusals(ctx, out)
}

// writeRefusals writes refusal records, each in its own update.
func (s *Service) writeRefusals(ctx context.Context, evs []*auditv1.AuditEvent) {
	if len(evs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), compensateTimeout)
	defer cancel()
	for _, ev := range evs {
		if err := audit.Record(ctx, s.db, ev); err != nil {
			s.lg.Warn("could not record a refused self-rotation", zap.String("target-id", ev.GetTargetId()), zap.Error(err))
		}
	}
}

// flushRefusals writes the summaries of the windows that have ended.
func (s *Service) flushRefusals() {
	s.writeRefusals(context.Background(), s.refusals.sweep(s.now()))
}

// flushRefusalsEvery flushes until ctx ends, then once more for every
// window still open (a graceful stop loses no count).
func (s *Service) flushRefusalsEvery(ctx context.Context, d time.Duration) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.writeRefusals(context.Background(), s.refusals.drain(s.now()))
			return
		case <-t.C:
			s.flushRefusals()
		}
	}
}

// refusalLog coalesces refusal records per key.
type refusalLog struct {
	mu sync.Mutex
	m  map[string]*refusalEntry
}

type refusalEntry struct {
	opened time.Time           // start of the current window
	n      int                 // refusals in the window not yet recorded
	latest *auditv1.AuditEvent // the latest of those
}

// note registers a refusal at now and returns what to record: ev itself when
// no window is open for key; nothing while one is (the refusal is counted);
// the summary of the window when it has ended (the refusal is counted in the
// next one, which the summary opens). dropped reports a refusal the table
// had no room for.
func (l *refusalLog) note(key string, ev *auditv1.AuditEvent, now time.Time) (out []*auditv1.AuditEvent, dropped bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*refusalEntry{}
	}
	e := l.m[key]
	switch {
	case e == nil:
		if len(l.m) >= maxRefusalKeys {
			return nil, true
		}
		l.m[key] = &refusalEntry{opened: now}
		return []*auditv1.AuditEvent{ev}, false
	case now.Sub(e.opened) < RefusalWindow:
		e.n++
		e.latest = ev
		return nil, false
	case e.n > 0:
		sum := e.summary(now)
		*e = refusalEntry{opened: now, n: 1, latest: ev}
		return []*auditv1.AuditEvent{sum}, false
	default:
		*e = refusalEntry{opened: now}
		return []*auditv1.AuditEvent{ev}, false
	}
}

// sweep ends every window older than RefusalWindow: one with refusals not
// yet recorded yields its summary and opens a new (empty) window; an empty
// one is dropped.
func (l *refusalLog) sweep(now time.Time) []*auditv1.AuditEvent {
	return l.end(now, false)
}

// drain ends every window, however young (at a stop).
func (l *refusalLog) drain(now time.Time) []*auditv1.AuditEvent {
	return l.end(now, true)
}

func (l *refusalLog) end(now time.Time, all bool) []*auditv1.AuditEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*auditv1.AuditEvent
	for k, e := range l.m {
		if !all && now.Sub(e.opened) < RefusalWindow {
			continue
		}
		if e.n == 0 {
			delete(l.m, k)
			continue
		}
		out = append(out, e.summary(now))
		*e = refusalEntry{opened: now}
	}
	return out
}

func (l *refusalLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// summary is one record for the refusals counted in the window: the latest
// one's actor, target, client IP and request id, and how many there were.
func (e *refusalEntry) summary(now time.Time) *auditv1.AuditEvent {
	ev := proto.CloneOf(e.latest)
	ev.Id = ids.New("evt")
	ev.Time = timestamppb.New(now)
	ev.Detail = fmt.Sprintf("%s; %d refusal(s) since %s coalesced into this record (at most one record per agent, address and minute)",
		e.latest.GetDetail(), e.n, e.opened.UTC().Format(time.RFC3339))
	return ev
}
