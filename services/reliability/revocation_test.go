package reliability

// Revocation under load: clients hammer a resource with an access token
// while an owner suspends the automation (then rotates its secret, then
// deletes it). No request sent after the revoking call was acknowledged may
// be accepted, in either process layout.

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type revocationConfig struct {
	cycles  int
	workers int
	// maxPerWorker bounds each client's requests per phase.
	maxPerWorker int
	// warm and after are how long the load runs before and after the
	// revoking call.
	warm, after time.Duration
}

// hammerResult is one phase's figures.
type hammerResult struct {
	total        int
	sentAfter    int // requests sent after the revoking call was acknowledged
	acceptedLate int // of those, accepted (200): must be 0
	before       map[int]int
	afterCodes   map[int]int
	transport    int
}

func (h hammerResult) String() string {
	return fmt.Sprintf("%d requests (%d sent after the acknowledgement; %d of those accepted); statuses of those sent before %v, after %v",
		h.total, h.sentAfter, h.acceptedLate, h.before, h.afterCodes)
}

// hammer runs cfg.workers clients sending GET path with token until the
// phase ends, calls revoke (which returns the moment its response was
// received) once they are warm, and counts what was accepted after it.
func hammer(t *testing.T, rc *restClient, cfg revocationConfig, path, token string, revoke func() time.Time) hammerResult {
	t.Helper()
	type rec struct {
		sent   time.Time
		status int
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recs := make([][]rec, cfg.workers)
	var ackAt atomic.Int64    // UnixNano of the acknowledgement; 0 before it
	var answered atomic.Int64 // requests sent after it and answered
	var wg sync.WaitGroup
	for w := range cfg.workers {
		wg.Go(func() {
			for i := 0; i < cfg.maxPerWorker && ctx.Err() == nil; i++ {
				sent := time.Now()
				r, err := rc.do(ctx, http.MethodGet, path, token, nil)
				if err != nil {
					if ctx.Err() == nil {
						recs[w] = append(recs[w], rec{sent: sent, status: -1})
					}
					continue
				}
				recs[w] = append(recs[w], rec{sent: sent, status: r.Status})
				if a := ackAt.Load(); a != 0 && sent.UnixNano() > a {
					answered.Add(1)
				}
			}
		})
	}
	time.Sleep(cfg.warm)
	ack := revoke()
	ackAt.Store(ack.UnixNano())
	// Keep the load on for cfg.after, and until every client has had two
	// requests sent after the acknowledgement answered (a stalled machine
	// must not turn the check into a vacuous pass or a false failure).
	deadline := time.Now().Add(15 * time.Second)
	time.Sleep(cfg.after)
	for answered.Load() < int64(2*cfg.workers) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	wg.Wait()

	h := hammerResult{before: map[int]int{}, afterCodes: map[int]int{}}
	for _, rs := range recs {
		for _, r := range rs {
			h.total++
			if r.status == -1 {
				h.transport++
				continue
			}
			if !r.sent.After(ack) {
				h.before[r.status]++
				continue
			}
			h.sentAfter++
			h.afterCodes[r.status]++
			if r.status == http.StatusOK {
				h.acceptedLate++
			}
		}
	}
	if h.transport > 0 {
		t.Errorf("%d requests failed in transport", h.transport)
	}
	if h.sentAfter < cfg.workers {
		t.Errorf("only %d requests were sent after the acknowledgement: the load did not overlap the revocation", h.sentAfter)
	}
	if h.acceptedLate > 0 {
		t.Errorf("%d requests sent after the revocation was acknowledged were accepted (200); want 0", h.acceptedLate)
	}
	return h
}

func TestRevocationUnderLoad(t *testing.T) {
	cfg := revocationConfig{cycles: 1, workers: 8, maxPerWorker: 1500, warm: 200 * time.Millisecond, after: 200 * time.Millisecond}
	for _, layout := range []string{layoutAll, layoutSplit} {
		t.Run(layout, func(t *testing.T) {
			t.Parallel()
			runRevocation(t, layout, cfg)
		})
	}
}

func TestSoakRevocationUnderLoad(t *testing.T) {
	requireSoak(t)
	cfg := revocationConfig{cycles: 40, workers: 8, maxPerWorker: 5000, warm: 300 * time.Millisecond, after: 300 * time.Millisecond}
	for _, layout := range []string{layoutAll, layoutSplit} {
		t.Run(layout, func(t *testing.T) { runRevocation(t, layout, cfg) })
	}
}

func runRevocation(t *testing.T, layout string, cfg revocationConfig) {
	c := startCluster(t, layout)
	rc := c.rest()
	ws := rc.createWorkspace(t, c.OperatorToken, "revocation")
	for cycle := 1; cycle <= cfg.cycles; cycle++ {
		id, secret := rc.createAutomation(t, ws.ID, ws.OwnerToken, fmt.Sprintf("loaded-%d", cycle), "automations:read")
		path := "/v1/workspaces/" + ws.ID + "/automations/" + id
		at := rc.exchange(t, secret)
		patch := func(suspended bool) func() time.Time {
			return func() time.Time {
				r := rc.call(t, http.MethodPatch, path, ws.OwnerToken, map[string]any{"suspended": suspended})
				if r.Status != http.StatusOK {
					t.Fatalf("%s: want 200", r)
				}
				return r.Received
			}
		}

		h := hammer(t, rc, cfg, path, at, patch(true))
		t.Logf("%s layout, cycle %d, suspend: %s", layout, cycle, h)
		if n := h.afterCodes[http.StatusForbidden]; n != h.sentAfter {
			t.Errorf("suspend: %d of %d requests sent after the acknowledgement were refused with 403, want all (%v)", n, h.sentAfter, h.afterCodes)
		}

		// Resuming brings the same token back.
		patch(false)()
		if r := rc.call(t, http.MethodGet, path, at, nil); r.Status != http.StatusOK {
			t.Errorf("after resuming: %s, want 200", r)
		}

		h = hammer(t, rc, cfg, path, at, func() time.Time {
			r := rc.call(t, http.MethodPost, path+"/rotate-secret", ws.OwnerToken, map[string]any{})
			if r.Status != http.StatusOK {
				t.Fatalf("%s: want 200", r)
			}
			secret = r.JSON().str("secret")
			return r.Received
		})
		t.Logf("%s layout, cycle %d, rotate: %s", layout, cycle, h)
		if n := h.afterCodes[http.StatusUnauthorized]; n != h.sentAfter {
			t.Errorf("rotate: %d of %d requests sent after the acknowledgement were refused with 401, want all (%v)", n, h.sentAfter, h.afterCodes)
		}

		at = rc.exchange(t, secret)
		h = hammer(t, rc, cfg, path, at, func() time.Time {
			r := rc.call(t, http.MethodDelete, path, ws.OwnerToken, nil)
			if r.Status != http.StatusOK {
				t.Fatalf("%s: want 200", r)
			}
			return r.Received
		})
		t.Logf("%s layout, cycle %d, delete: %s", layout, cycle, h)
		if n := h.afterCodes[http.StatusUnauthorized]; n != h.sentAfter {
			t.Errorf("delete: %d of %d requests sent after the acknowledgement were refused with 401, want all (%v)", n, h.sentAfter, h.afterCodes)
		}
	}
}
