package ratelimit_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/backlog/controlplane/services/kit/errs"
	"github.com/backlog/controlplane/services/kit/ratelimit"
)

// clock is a settable clock for the limiters.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestKeyedAtMostNPerWindow(t *testing.T) {
	c := newClock()
	cfg := ratelimit.AtMost(3, 15*time.Minute)
	cfg.Now = c.Now
	k := ratelimit.NewKeyed(cfg)

	for i := range 3 {
		if ok, wait := k.Allow("1.2.3.4"); !ok || wait != 0 {
			t.Fatalf("attempt %d refused (wait %v)", i+1, wait)
		}
		c.Advance(time.Minute)
	}
	// Fourth within the window: refused, told to wait until the first is
	// a full window old.
	ok, wait := k.Allow("1.2.3.4")
	if ok {
		t.Fatal("fourth attempt within the window admitted")
	}
	if wait < 12*time.Minute || wait > 12*time.Minute+time.Second {
		t.Fatalf("wait = %v, want about 12m", wait)
	}
	// A refusal takes nothing: asking again gives the same answer.
	if ok, wait2 := k.Allow("1.2.3.4"); ok || wait2 != wait {
		t.Fatalf("second refusal: ok=%v wait=%v, want false %v", ok, wait2, wait)
	}
	// Other keys have their own buckets.
	if ok, _ := k.Allow("5.6.7.8"); !ok {
		t.Fatal("another key was refused")
	}
	// Just before the wait: still refused; after it: admitted once.
	c.Advance(wait - 2*time.Millisecond)
	if ok, _ := k.Allow("1.2.3.4"); ok {
		t.Fatal("admitted before the wait was over")
	}
	c.Advance(2 * time.Millisecond)
	if ok, _ := k.Allow("1.2.3.4"); !ok {
		t.Fatal("refused after waiting as told")
	}
	if ok, _ := k.Allow("1.2.3.4"); ok {
		t.Fatal("admitted twice after one refill")
	}
}

// TestKeyedNeverMoreThanNInAnyWindow drives one key with attempts at
// irregular times and checks the promise of AtMost over every window.
func TestKeyedNeverMoreThanNInAnyWindow(t *testing.T) {
	c := newClock()
	const n, window = 3, 15 * time.Minute
	cfg := ratelimit.AtMost(n, window)
	cfg.Now = c.Now
	k := ratelimit.NewKeyed(cfg)
	var admitted []time.Time
	steps := []time.Duration{0, 10 * time.Second, 4 * time.Minute, 7 * time.Minute, 59 * time.Second, 3 * time.Minute, 90 * time.Second}
	for i := range 400 {
		c.Advance(steps[i%len(steps)])
		if ok, _ := k.Allow("k"); ok {
			admitted = append(admitted, c.Now())
		}
	}
	for i := range admitted {
		in := 0
		for j := i; j < len(admitted) && admitted[j].Sub(admitted[i]) < window; j++ {
			in++
		}
		if in > n {
			t.Fatalf("%d admitted within %v of %v", in, window, admitted[i])
		}
	}
	if len(admitted) < 50 {
		t.Fatalf("only %d admitted: the limiter is stricter than promised", len(admitted))
	}
}

func TestKeyedEvictsIdleKeys(t *testing.T) {
	c := newClock()
	cfg := ratelimit.AtMost(2, time.Minute)
	cfg.Now = c.Now
	k := ratelimit.NewKeyed(cfg)
	for i := range 100 {
		k.Allow(fmt.Sprintf("10.0.0.%d", i))
	}
	if k.Len() != 100 {
		t.Fatalf("len = %d", k.Len())
	}
	// Each bucket has 1 of its 2 tokens left and refills one per minute:
	// after 30 s it is not full yet, so the key is kept; after a minute it
	// is full again, which is the same as never having been seen.
	c.Advance(30 * time.Second)
	k.Allow("busy")
	if k.Len() != 101 {
		t.Fatalf("keys with a partly spent bucket were forgotten: len = %d", k.Len())
	}
	c.Advance(31 * time.Second)
	k.Allow("busy")
	if k.Len() != 1 {
		t.Fatalf("idle keys kept: len = %d, want 1", k.Len())
	}
}

func TestKeyedBoundsMemoryUnderAFlood(t *testing.T) {
	c := newClock()
	cfg := ratelimit.AtMost(1, time.Hour)
	cfg.Now = c.Now
	cfg.MaxKeys = 50
	k := ratelimit.NewKeyed(cfg)
	// A victim spends its token, then a flood of fresh keys arrives.
	if ok, _ := k.Allow("victim"); !ok {
		t.Fatal("victim refused")
	}
	for i := range 1000 {
		k.Allow(fmt.Sprintf("flood-%d", i))
		if k.Len() > 50 {
			t.Fatalf("len %d > MaxKeys", k.Len())
		}
	}
	// The victim was least recently used and is forgotten: the bound on
	// memory is kept at the cost of that key's state.
	if ok, _ := k.Allow("victim"); !ok {
		t.Fatal("victim still remembered beyond MaxKeys")
	}
	// A recently used key survives the flood.
	k.Allow("recent")
	if ok, _ := k.Allow("recent"); ok {
		t.Fatal("a key's spent bucket was forgotten while it was recent")
	}
}

func TestKeyedConcurrentUse(t *testing.T) {
	k := ratelimit.NewKeyed(ratelimit.AtMost(5, time.Hour))
	var mu sync.Mutex
	admitted := 0
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if ok, _ := k.Allow("same"); ok {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if admitted != 5 {
		t.Fatalf("%d admitted concurrently, want 5", admitted)
	}
}

// TestKeyedRefund: a refunded token is as if the event had never been
// admitted — never more than Burst, nothing for a forgotten key — which is
// what lets a caller take a token before it knows whether an event counts
// and give it back when it does not, without ever admitting more than n in
// a window.
func TestKeyedRefund(t *testing.T) {
	c := newClock()
	cfg := ratelimit.AtMost(3, 15*time.Minute)
	cfg.Now = c.Now
	k := ratelimit.NewKeyed(cfg)

	for range 3 {
		if ok, _ := k.Allow("a"); !ok {
			t.Fatal("refused within the budget")
		}
	}
	if ok, _ := k.Allow("a"); ok {
		t.Fatal("fourth admitted")
	}
	k.Refund("a")
	if ok, _ := k.Allow("a"); !ok {
		t.Fatal("refused after a refund")
	}
	if ok, _ := k.Allow("a"); ok {
		t.Fatal("one refund admitted two")
	}
	// Refunds never fill a bucket beyond Burst.
	k.Allow("b")
	for range 5 {
		k.Refund("b")
	}
	for i := range 3 {
		if ok, _ := k.Allow("b"); !ok {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	if ok, _ := k.Allow("b"); ok {
		t.Fatal("refunds filled the bucket beyond Burst")
	}
	// Refunding a key never seen creates nothing.
	k.Refund("never")
	if k.Len() != 2 {
		t.Fatalf("len = %d, want 2", k.Len())
	}
	// A token taken and refunded later, after some refill, leaves the bucket
	// as if it had never been taken: with events admitted at 0, 0 and 2m,
	// the next one waits until the first is 15m old.
	c.Advance(time.Hour)
	k.Allow("c")
	k.Allow("c")
	c.Advance(time.Minute)
	k.Allow("c")
	c.Advance(time.Minute)
	k.Refund("c")
	k.Allow("c")
	ok, wait := k.Allow("c")
	if ok || wait < 13*time.Minute || wait > 13*time.Minute+time.Second {
		t.Fatalf("after take, refund and take: ok=%v wait=%v, want refused for about 13m", ok, wait)
	}
}

// TestKeyedRefundConcurrent: callers that take a token up front and refund
// it for events that do not count admit at most Burst counted events, however
// they interleave.
func TestKeyedRefundConcurrent(t *testing.T) {
	k := ratelimit.NewKeyed(ratelimit.AtMost(5, time.Hour))
	var mu sync.Mutex
	counted := 0
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			if ok, _ := k.Allow("same"); !ok {
				return
			}
			if i%3 != 0 {
				k.Refund("same") // did not count
				return
			}
			mu.Lock()
			counted++
			mu.Unlock()
		})
	}
	wg.Wait()
	if counted > 5 {
		t.Fatalf("%d counted events admitted, want at most 5", counted)
	}
}

func TestKeyedZeroBurstAdmitsNothing(t *testing.T) {
	k := ratelimit.NewKeyed(ratelimit.Config{Limit: 1, Burst: 0})
	if ok, wait := k.Allow("x"); ok || wait <= 0 {
		t.Fatalf("ok=%v wait=%v", ok, wait)
	}
	if k.Len() != 0 {
		t.Fatal("a refused key with no state was kept")
	}
}

func TestIPKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":                 "192.0.2.7",
		"::ffff:192.0.2.7":          "192.0.2.7",
		"2001:db8:1:2:3:4:5:6":      "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1":      "2001:db8:1:2::/64",
		"fe80::1%eth0":              "fe80::/64",
		"":                          "",
		"not-an-ip":                 "not-an-ip",
		"2001:db8:1:3:3:4:5:6":      "2001:db8:1:3::/64",
		"::1":                       "::/64",
		"2001:0db8:0001:0002::0001": "2001:db8:1:2::/64",
	} {
		if got := ratelimit.IPKey(in); got != want {
			t.Errorf("IPKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLockout(t *testing.T) {
	c := newClock()
	l := ratelimit.NewLockout(ratelimit.LockoutConfig{MaxFailures: 5, LockFor: 15 * time.Minute, Now: c.Now})
	for i := range 4 {
		if locked, _ := l.Fail("agent-1"); locked {
			t.Fatalf("locked after %d failures", i+1)
		}
		c.Advance(time.Second)
	}
	if locked, _ := l.Locked("agent-1"); locked {
		t.Fatal("locked before the fifth failure")
	}
	locked, wait := l.Fail("agent-1")
	if !locked || wait < 15*time.Minute || wait > 15*time.Minute+time.Second {
		t.Fatalf("fifth failure: locked=%v wait=%v", locked, wait)
	}
	// Other keys are unaffected.
	if locked, _ := l.Locked("agent-2"); locked {
		t.Fatal("another key is locked")
	}
	c.Advance(10 * time.Minute)
	locked, wait = l.Locked("agent-1")
	if !locked || wait < 5*time.Minute || wait > 5*time.Minute+time.Second {
		t.Fatalf("locked=%v wait=%v, want locked for about 5m", locked, wait)
	}
	// Failures while locked do not extend the lock.
	if locked, w := l.Fail("agent-1"); !locked || w > wait {
		t.Fatalf("failure while locked: locked=%v wait=%v (was %v)", locked, w, wait)
	}
	c.Advance(wait)
	if locked, _ := l.Locked("agent-1"); locked {
		t.Fatal("still locked after the lock ran out")
	}
	// The count starts over after a lock.
	for i := range 4 {
		if locked, _ := l.Fail("agent-1"); locked {
			t.Fatalf("locked again after %d failures", i+1)
		}
	}
	// A success forgets the failures.
	l.Reset("agent-1")
	for i := range 4 {
		if locked, _ := l.Fail("agent-1"); locked {
			t.Fatalf("reset did not forget: locked after %d failures", i+1)
		}
	}
}

func TestLockoutForgetsOldFailures(t *testing.T) {
	c := newClock()
	l := ratelimit.NewLockout(ratelimit.LockoutConfig{MaxFailures: 3, Window: time.Minute, LockFor: time.Hour, Now: c.Now})
	l.Fail("k")
	l.Fail("k")
	c.Advance(time.Minute)
	// The window of the first two has passed: this is failure one of a new run.
	if locked, _ := l.Fail("k"); locked {
		t.Fatal("failures older than the window counted")
	}
	l.Fail("k")
	if locked, _ := l.Fail("k"); !locked {
		t.Fatal("three failures within the window did not lock")
	}
}

func TestLockoutEvictsAndBoundsMemory(t *testing.T) {
	c := newClock()
	l := ratelimit.NewLockout(ratelimit.LockoutConfig{MaxFailures: 2, LockFor: time.Minute, MaxKeys: 20, Now: c.Now})
	for i := range 10 {
		l.Fail(fmt.Sprintf("k%d", i))
	}
	if l.Len() != 10 {
		t.Fatalf("len = %d", l.Len())
	}
	c.Advance(time.Minute)
	l.Locked("other")
	if l.Len() != 0 {
		t.Fatalf("idle keys kept: len = %d", l.Len())
	}
	for i := range 500 {
		l.Fail(fmt.Sprintf("flood-%d", i))
		if l.Len() > 20 {
			t.Fatalf("len %d > MaxKeys", l.Len())
		}
	}
}

func TestExhaustedCarriesRetryInfo(t *testing.T) {
	err := ratelimit.Exhausted("agent.backlog", "RATE_LIMITED", "slow down", 1500*time.Millisecond)
	if status.Code(err) != codes.ResourceExhausted || errs.Reason(err) != "RATE_LIMITED" {
		t.Fatalf("err = %v", err)
	}
	if d, ok := ratelimit.RetryDelay(err); !ok || d != 1500*time.Millisecond {
		t.Fatalf("delay = %v %v", d, ok)
	}
	if _, ok := ratelimit.RetryDelay(status.Error(codes.Internal, "x")); ok {
		t.Fatal("delay found on a status without one")
	}
}
