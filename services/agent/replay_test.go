package agent

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/backlog/controlplane/gen/go/backlog/agent/v1"
	"github.com/backlog/controlplane/services/kit/store"
	"github.com/backlog/controlplane/services/kit/store/boltstore"
)

func t0() context.Context { return context.Background() }

// testClock is a settable clock, shared by a test's store and caches.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// replayTestStore is a real agent store file whose expiry follows clock.
func replayTestStore(t *testing.T, clock func() time.Time) store.Backend {
	t.Helper()
	db, err := boltstore.Open(filepath.Join(t.TempDir(), "agent.db"), buckets, boltstore.Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func replayTestCache(db store.Backend, clock func() time.Time) *replayCache {
	return newReplayCache(db, 10*time.Minute, clock,
		store.Leases{Bucket: selfTurnsBucket, TTL: selfTurnTTL, Poll: 5 * time.Millisecond, Now: clock})
}

// replayTestRaw is every key and value in the replay and turn buckets.
func replayTestRaw(t *testing.T, db store.Backend) (replays, turns [][]byte) {
	t.Helper()
	err := db.View(t0(), func(tx store.ReadTx) error {
		for _, b := range []store.Bucket{selfReplaysBucket, selfTurnsBucket} {
			if _, err := tx.Scan(b, store.ScanOptions{}, func(k, v []byte) (bool, error) {
				if bytes.Equal(b, selfReplaysBucket) {
					replays = append(replays, bytes.Clone(k), bytes.Clone(v))
				} else {
					turns = append(turns, bytes.Clone(k))
				}
				return true, nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return replays, turns
}

func TestReplayCache(t *testing.T) {
	clock := &testClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	db := replayTestStore(t, clock.Now)
	c := replayTestCache(db, clock.Now)
	const idem, oldKey, oldSecret = "idem-7f3a91c2", "blg_agk_OLDKEYOLDKEY", "blg_rot_OLDSECRETOLD"
	resp := &agentv1.RotateSelfKeyResponse{Message: "m", ApiKey: "blg_agk_NEWKEYNEWKEY", RotationSecret: "blg_rot_NEWSECRETNEW", AgentId: "agt_1x2y3z", AgentName: "bot"}

	hit, slot, err := c.begin(t0(), idem, oldKey, oldSecret)
	if err != nil || hit != nil || slot == nil {
		t.Fatalf("first begin = %v %v %v", hit, slot, err)
	}
	if err := slot.complete(t0(), resp, "ws_9q8w7e"); err != nil {
		t.Fatal(err)
	}
	slot.abandon(t0()) // after complete: no effect
	// Stored sealed: neither pair, nor the Idempotency-Key, nor whose it is,
	// nor the key it is sealed under; and the request's turn has ended.
	replays, turns := replayTestRaw(t, db)
	if len(replays) != 2 || len(turns) != 0 {
		t.Fatalf("%d replay keys and values, %d turns; want one entry and no turn", len(replays), len(turns))
	}
	_, sealKey, _ := derive(idem, oldKey, oldSecret)
	for _, b := range replays {
		for _, needle := range [][]byte{[]byte("NEWKEYNEWKEY"), []byte("NEWSECRETNEW"), []byte("OLDKEYOLDKEY"), []byte("OLDSECRETOLD"),
			[]byte(idem), []byte("ws_9q8w7e"), []byte("agt_1x2y3z"), sealKey} {
			if bytes.Contains(b, needle) {
				t.Fatalf("the stored replay holds %q in the clear", needle)
			}
		}
	}
	hit, _, err = c.begin(t0(), idem, oldKey, oldSecret)
	if err != nil || hit == nil || hit.resp.GetApiKey() != resp.ApiKey || hit.agentID != "agt_1x2y3z" || hit.ws != "ws_9q8w7e" {
		t.Fatalf("replay = %v %v", hit, err)
	}
	// Another replica on the same store finds it too.
	if hit, _, err := replayTestCache(db, clock.Now).begin(t0(), idem, oldKey, oldSecret); err != nil || hit == nil || hit.resp.GetRotationSecret() != resp.RotationSecret {
		t.Fatalf("replay on another replica = %v %v", hit, err)
	}
	// Any other input is another request.
	for _, in := range [][3]string{{"idem-other", oldKey, oldSecret}, {idem, "blg_agk_OTHER", oldSecret}, {idem, oldKey, "blg_rot_OTHER"}} {
		hit, slot, err := c.begin(t0(), in[0], in[1], in[2])
		if err != nil || hit != nil {
			t.Fatalf("%v found a replay", in)
		}
		slot.abandon(t0())
	}
	if replays, turns := replayTestRaw(t, db); len(replays) != 2 || len(turns) != 0 {
		t.Fatalf("abandoned requests left %d replay keys and values, %d turns", len(replays), len(turns))
	}
	// A tampered entry does not open.
	if err := db.Update(t0(), func(tx store.WriteTx) error {
		id, _, _ := derive(idem, oldKey, oldSecret)
		v, _ := tx.Get(selfReplaysBucket, selfReplayKey(id))
		v = bytes.Clone(v)
		v[len(v)-1] ^= 1
		return tx.Put(selfReplaysBucket, []byte(id), v)
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.begin(t0(), idem, oldKey, oldSecret); err != errReplayCorrupt {
		t.Fatalf("a tampered entry: %v", err)
	}
	// Forgotten, and expiry by the service's clock.
	id, _, _ := derive(idem, oldKey, oldSecret)
	if err := c.forget(t0(), id); err != nil {
		t.Fatal(err)
	}
	if n, err := c.len(t0()); err != nil || n != 0 {
		t.Fatalf("%d entries after forget (%v)", n, err)
	}
	_, slot, _ = c.begin(t0(), idem, oldKey, oldSecret)
	if err := slot.complete(t0(), resp, "ws_9q8w7e"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(10 * time.Minute)
	hit, slot, err = c.begin(t0(), idem, oldKey, oldSecret)
	if err != nil || hit != nil {
		t.Fatal("an expired replay was served")
	}
	slot.abandon(t0())
}

// TestReplayCacheWaitsForTheFirst: a retry that arrives, on any replica,
// while the first request is in flight waits for it; an abandoned first
// lets it through as a request of its own, and so does a first whose
// replica died (its turn expires).
func TestReplayCacheWaitsForTheFirst(t *testing.T) {
	clock := &testClock{now: time.Now()}
	db := replayTestStore(t, clock.Now)
	a, b := replayTestCache(db, clock.Now), replayTestCache(db, clock.Now)
	_, slot, err := a.begin(t0(), "k", "a", "b")
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *replayHit, 1)
	go func() {
		hit, _, _ := b.begin(t0(), "k", "a", "b")
		got <- hit
	}()
	select {
	case <-got:
		t.Fatal("a retry did not wait for the request in flight")
	case <-time.After(50 * time.Millisecond):
	}
	if err := slot.complete(t0(), &agentv1.RotateSelfKeyResponse{ApiKey: "x", AgentId: "agt"}, "ws"); err != nil {
		t.Fatal(err)
	}
	if hit := <-got; hit == nil || hit.resp.GetApiKey() != "x" {
		t.Fatalf("the waiting retry got %v", hit)
	}

	// A cancelled wait gives up; an abandoned first lets the next through.
	_, slot, _ = a.begin(t0(), "k2", "a", "b")
	ctx, cancel := context.WithTimeout(t0(), 30*time.Millisecond)
	defer cancel()
	if _, _, err := b.begin(ctx, "k2", "a", "b"); err == nil {
		t.Fatal("a cancelled wait did not give up")
	}
	slot.abandon(t0())
	hit, slot2, err := b.begin(t0(), "k2", "a", "b")
	if err != nil || hit != nil || slot2 == nil {
		t.Fatalf("after an abandoned first: %v %v %v", hit, slot2, err)
	}
	slot2.abandon(t0())

	// A first whose replica died holding the turn delays the next by at
	// most selfTurnTTL.
	if _, _, err := a.begin(t0(), "k3", "a", "b"); err != nil {
		t.Fatal(err)
	}
	clock.Advance(selfTurnTTL + time.Second)
	hit, slot3, err := b.begin(t0(), "k3", "a", "b")
	if err != nil || hit != nil || slot3 == nil {
		t.Fatalf("after the first's turn expired: %v %v %v", hit, slot3, err)
	}
	slot3.abandon(t0())
}

// TestSelfLimitsInTheStore: the per-address budget and the lockout as kept
// in the store, shared by every replica that opens it.
func TestSelfLimitsInTheStore(t *testing.T) {
	clock := &testClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	db := replayTestStore(t, clock.Now)
	l := selfLimits{perIP: 3, window: 15 * time.Minute, maxFailures: 5, lockFor: 15 * time.Minute}
	take := func(ip string) (bool, time.Duration) {
		t.Helper()
		var ok bool
		var wait time.Duration
		if err := db.Update(t0(), func(tx store.WriteTx) error {
			var err error
			ok, wait, err = l.takeRate(tx, ip, clock.Now())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return ok, wait
	}
	// Many at once: exactly three get through.
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted := 0
	for range 12 {
		wg.Go(func() {
			if ok, _ := take("203.0.113.1"); ok {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if admitted != 3 {
		t.Fatalf("%d admitted, want 3", admitted)
	}
	if ok, wait := take("203.0.113.1"); ok || wait < 15*time.Minute || wait > 15*time.Minute+time.Second {
		t.Fatalf("fourth: %v, wait %v; want a refusal for 15m", ok, wait)
	}
	if ok, _ := take("203.0.113.2"); !ok {
		t.Fatal("another address was limited")
	}
	clock.Advance(5 * time.Minute)
	if ok, wait := take("203.0.113.1"); ok || wait < 10*time.Minute || wait > 10*time.Minute+time.Second {
		t.Fatalf("5 minutes on: %v, wait %v; want a refusal for 10m", ok, wait)
	}
	clock.Advance(10 * time.Minute)
	if ok, _ := take("203.0.113.1"); !ok {
		t.Fatal("not admitted once a token came back")
	}

	// The lockout: five counted failures lock; a reservation taken back
	// leaves the record as it was.
	reserve := func() (bool, []byte, []byte) {
		t.Helper()
		var locked bool
		var prev, wrote []byte
		if err := db.Update(t0(), func(tx store.WriteTx) error {
			var err error
			locked, _, prev, wrote, err = l.reserveFailure(tx, "203.0.113.1", "crd_1", clock.Now())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return locked, prev, wrote
	}
	restore := func(prev, wrote []byte) {
		t.Helper()
		if err := db.Update(t0(), func(tx store.WriteTx) error {
			return l.restoreFailure(tx, "203.0.113.1", "crd_1", prev, wrote)
		}); err != nil {
			t.Fatal(err)
		}
	}
	lockedNow := func() bool {
		t.Helper()
		var locked bool
		if err := db.View(t0(), func(tx store.ReadTx) error {
			var err error
			locked, _, err = l.lockedAt(tx, "203.0.113.1", "crd_1", clock.Now())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return locked
	}
	for i := range 4 {
		if locked, prev, wrote := reserve(); locked {
			t.Fatalf("locked after %d failures", i)
		} else if i == 3 {
			restore(prev, wrote) // not a wrong secret after all
		}
	}
	if locked, _, _ := reserve(); locked || lockedNow() {
		t.Fatal("locked after four failures (one taken back)")
	}
	if locked, _, wrote := reserve(); locked || !(&failureReservation{wrote: wrote}).locksOut() || !lockedNow() {
		t.Fatal("the fifth failure did not lock")
	}
	if locked, _, _ := reserve(); !locked {
		t.Fatal("an attempt while locked was let through")
	}
	clock.Advance(15 * time.Minute)
	if lockedNow() {
		t.Fatal("the lock did not run out")
	}
	// A reservation that another attempt overtook is not taken back.
	_, prev, wrote := reserve()
	reserve()
	restore(prev, wrote)
	var n int
	db.View(t0(), func(tx store.ReadTx) error {
		v, _ := tx.Get(selfLockoutsBucket, selfLockoutKey("203.0.113.1", "crd_1"))
		st, _ := decodeLockout(v)
		n = st.failures
		return nil
	})
	if n != 2 {
		t.Fatalf("%d failures counted, want 2", n)
	}
}
