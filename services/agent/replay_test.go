package agent

import (
	"bytes"
	"context"
	"testing"
	"time"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
)

func t0() context.Context { return context.Background() }

func TestReplayCache(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	c, err := newReplayCache(10*time.Minute, clock)
	if err != nil {
		t.Fatal(err)
	}
	resp := &agentv1.RotateSelfKeyResponse{Message: "m", ApiKey: "blg_agk_NEWKEY", RotationSecret: "blg_rot_NEWSECRET", AgentId: "agt_1", AgentName: "bot"}

	hit, slot, err := c.begin(t0(), "k1", "blg_agk_OLD", "blg_rot_OLD")
	if err != nil || hit != nil || slot == nil {
		t.Fatalf("first begin = %v %v %v", hit, slot, err)
	}
	if err := slot.complete(resp, "ws_1"); err != nil {
		t.Fatal(err)
	}
	slot.abandon() // after complete: no effect
	// Held sealed: the new pair is not in the cache's memory in the clear.
	for _, el := range c.entries {
		e := el.Value.(*replayEntry)
		if bytes.Contains(e.sealed, []byte("NEWKEY")) || bytes.Contains(e.sealed, []byte("NEWSECRET")) {
			t.Fatal("the replay entry holds the new pair in the clear")
		}
	}
	hit, _, err = c.begin(t0(), "k1", "blg_agk_OLD", "blg_rot_OLD")
	if err != nil || hit == nil || hit.resp.GetApiKey() != resp.ApiKey || hit.agentID != "agt_1" || hit.ws != "ws_1" {
		t.Fatalf("replay = %v %v", hit, err)
	}
	// Any other input is another request.
	for _, in := range [][3]string{{"k2", "blg_agk_OLD", "blg_rot_OLD"}, {"k1", "blg_agk_OTHER", "blg_rot_OLD"}, {"k1", "blg_agk_OLD", "blg_rot_OTHER"}} {
		hit, slot, err := c.begin(t0(), in[0], in[1], in[2])
		if err != nil || hit != nil {
			t.Fatalf("%v found a replay", in)
		}
		slot.abandon()
	}
	if c.len() != 1 {
		t.Fatalf("abandoned slots kept: %d entries", c.len())
	}
	// Expiry.
	now = now.Add(10 * time.Minute)
	hit, slot, err = c.begin(t0(), "k1", "blg_agk_OLD", "blg_rot_OLD")
	if err != nil || hit != nil {
		t.Fatal("an expired replay was served")
	}
	slot.abandon()
	if c.len() != 0 {
		t.Fatalf("%d entries after expiry", c.len())
	}
}

func TestReplayCacheWaitsForTheFirstAndIsBounded(t *testing.T) {
	c, err := newReplayCache(time.Minute, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	_, slot, _ := c.begin(t0(), "k", "a", "b")
	got := make(chan *replayHit, 1)
	go func() {
		hit, _, _ := c.begin(t0(), "k", "a", "b")
		got <- hit
	}()
	select {
	case <-got:
		t.Fatal("a retry did not wait for the request in flight")
	case <-time.After(20 * time.Millisecond):
	}
	slot.complete(&agentv1.RotateSelfKeyResponse{ApiKey: "x", AgentId: "agt"}, "ws")
	if hit := <-got; hit == nil || hit.resp.GetApiKey() != "x" {
		t.Fatalf("the waiting retry got %v", hit)
	}
	// A cancelled wait gives up.
	_, slot, _ = c.begin(t0(), "k2", "a", "b")
	ctx, cancel := context.WithCancel(t0())
	cancel()
	if _, _, err := c.begin(ctx, "k2", "a", "b"); err == nil {
		t.Fatal("a cancelled wait did not give up")
	}
	slot.abandon()

	for i := range maxReplays + 50 {
		_, s, err := c.begin(t0(), string(rune(i)), "a", "b")
		if err != nil {
			t.Fatal(err)
		}
		s.complete(&agentv1.RotateSelfKeyResponse{}, "ws")
	}
	if c.len() > maxReplays {
		t.Fatalf("%d entries held, bound %d", c.len(), maxReplays)
	}
}
