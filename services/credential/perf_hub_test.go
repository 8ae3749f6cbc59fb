package credential

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// A burst of invalidations queued for a watcher goes out as one event
// under the highest sequence, and its one acknowledgement releases every
// publisher of the burst.
func TestPerfHubCoalescesQueuedInvalidations(t *testing.T) {
	h := newHub()
	w := h.add()
	defer h.remove(w)

	const n = 50
	var wg sync.WaitGroup
	released := make(chan string, n)
	for i := range n {
		subject := fmt.Sprintf("aut_%02d", i)
		wg.Go(func() {
			h.publish(context.Background(), []string{subject})
			released <- subject
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(w.events) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d events queued", len(w.events), n)
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case s := <-released:
		t.Fatalf("publisher of %s released before any acknowledgement", s)
	default:
	}

	first := <-w.events
	ev := w.coalesce(first)
	if len(ev.GetSubjectIds()) != n {
		t.Fatalf("the coalesced event carries %d subjects, want all %d queued", len(ev.GetSubjectIds()), n)
	}
	if ev.GetSequence() != uint64(n) {
		t.Fatalf("the coalesced event has sequence %d, want the highest, %d", ev.GetSequence(), n)
	}
	got := slices.Clone(ev.GetSubjectIds())
	slices.Sort(got)
	for i, s := range got {
		if want := fmt.Sprintf("aut_%02d", i); s != want {
			t.Fatalf("coalesced subjects %v: missing %s", got, want)
		}
	}
	if len(first.GetSubjectIds()) != 1 {
		t.Fatalf("coalescing changed the shared first event: %v", first.GetSubjectIds())
	}
	if len(w.events) != 0 {
		t.Fatalf("%d events left queued after coalescing", len(w.events))
	}

	w.ack(ev.GetSequence())
	wg.Wait()
	if len(released) != n {
		t.Fatalf("%d of %d publishers released by the one acknowledgement", len(released), n)
	}
}

// Events reach every watcher's queue in sequence order, so a cumulative
// acknowledgement never covers an event that was not delivered yet; a
// lone event is sent as is.
func TestPerfHubQueuesInSequenceOrder(t *testing.T) {
	h := newHub()
	w1, w2 := h.add(), h.add()
	defer h.remove(w1)
	defer h.remove(w2)

	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { h.publish(context.Background(), []string{fmt.Sprint(i)}) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(w1.events) < n || len(w2.events) < n {
		if time.Now().After(deadline) {
			t.Fatalf("events not queued: %d and %d of %d", len(w1.events), len(w2.events), n)
		}
		time.Sleep(time.Millisecond)
	}
	for _, w := range []*watcher{w1, w2} {
		for want := uint64(1); want <= n; want++ {
			if ev := <-w.events; ev.GetSequence() != want {
				t.Fatalf("queued event has sequence %d, want %d (queue out of order)", ev.GetSequence(), want)
			}
		}
	}
	w1.ack(n)
	w2.ack(n)
	wg.Wait()

	lone := h.add()
	defer h.remove(lone)
	go h.publish(context.Background(), []string{"aut_lone"})
	ev := <-lone.events
	if got := lone.coalesce(ev); got != ev || len(got.GetSubjectIds()) != 1 {
		t.Fatalf("a lone event was rewritten: %v", got)
	}
	lone.ack(ev.GetSequence())
}
